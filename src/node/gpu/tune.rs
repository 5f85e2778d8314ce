//! Choice of GEMM tiling per adapter and shape class (the autotuner lands here).

use super::GpuShared;
use super::kernels::matmul::TileConfig;
use crate::tensor::DType;

/// Picks tilings for one adapter.
#[derive(Debug)]
pub struct Tuner {
    adapter_key: String,
}

impl Tuner {
    /// A tuner for `info`'s adapter.
    pub fn for_adapter(info: &wgpu::AdapterInfo) -> Self {
        Tuner {
            adapter_key: format!(
                "{}|{}|{}|{:?}",
                info.name, info.driver, info.driver_info, info.backend
            ),
        }
    }

    /// The tiling for an `m × n × k` product of `dtype` operands.
    pub fn tile(
        &self,
        shared: &GpuShared,
        m: usize,
        n: usize,
        k: usize,
        dtype: DType,
    ) -> TileConfig {
        let _ = (m, n, k, dtype, &self.adapter_key);
        let _ = shared;
        TileConfig::DEFAULT
    }
}
