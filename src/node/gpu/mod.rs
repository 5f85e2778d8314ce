//! GPU nodes on wgpu: one [`GpuDevice`] per adapter, device-resident [`GpuTensor`]s with
//! counted transfers, and WGSL kernels from `shaders/`.

pub mod context;
pub mod kernels;
pub mod pool;
pub mod tensor;
pub mod timing;
pub mod tune;

use std::sync::{Arc, Mutex};
use std::time::Instant;

pub use context::{GpuContext, GpuLimits, LimitOverrides};
pub use kernels::matmul::{BiasKind, TileConfig};
pub use pool::PoolStats;
pub use tensor::{GpuTensor, TransferStats};

use self::kernels::conv::{ConvArgs, encode_conv2d};
use self::kernels::matmul::{GEMV_MAX_ROWS, MatmulArgs, encode_matmul};
use self::kernels::{PipelineCache, Recorder};
use self::pool::{BufferPool, DEFAULT_RETAIN_BYTES};
use self::timing::KernelTimer;
use self::tune::Tuner;
use super::{Device, DeviceInfo, DeviceKind};
use crate::drac::partition::weighted_ranges;
use crate::op::{Op, conv2d_dims, matmul_dims};
use crate::tensor::{DType, Shape, Tensor};
use crate::{Error, Result};

/// The state every tensor and kernel of one GPU node shares.
#[derive(Debug)]
pub struct GpuShared {
    /// The opened device.
    pub ctx: GpuContext,
    /// Reused buffers.
    pub pool: BufferPool,
    /// Transfer counters.
    pub transfers: Mutex<TransferStats>,
    /// Compiled kernels.
    pub kernels: PipelineCache,
    /// Chosen tilings.
    pub tuner: Tuner,
}

/// One adapter wgpu found, before it is opened.
#[derive(Debug, Clone)]
pub struct AdapterEntry {
    /// Position in discovery order (the `N` of `gpu:N`).
    pub index: usize,
    /// wgpu's description of it.
    pub info: wgpu::AdapterInfo,
}

/// Adapters of every backend wgpu supports here, enumerated once per process. GL adapters
/// are only tried when no other backend found one (they are usually the same device seen
/// through a second driver).
fn adapters() -> Vec<wgpu::Adapter> {
    static ADAPTERS: std::sync::OnceLock<Vec<wgpu::Adapter>> = std::sync::OnceLock::new();
    ADAPTERS.get_or_init(enumerate_adapters).clone()
}

fn enumerate_adapters() -> Vec<wgpu::Adapter> {
    let primary = instance(wgpu::Backends::PRIMARY);
    let found = pollster::block_on(primary.enumerate_adapters(wgpu::Backends::PRIMARY));
    if !found.is_empty() {
        return found;
    }
    let secondary = instance(wgpu::Backends::SECONDARY);
    pollster::block_on(secondary.enumerate_adapters(wgpu::Backends::SECONDARY))
}

fn instance(backends: wgpu::Backends) -> wgpu::Instance {
    let mut desc = wgpu::InstanceDescriptor::new_without_display_handle();
    desc.backends = wgpu::Backends::from_env().unwrap_or(backends) & backends;
    wgpu::Instance::new(desc)
}

/// Lists the adapters wgpu finds, in the order `gpu:N` numbers them.
pub fn discover() -> Vec<AdapterEntry> {
    adapters()
        .into_iter()
        .enumerate()
        .map(|(index, a)| AdapterEntry {
            index,
            info: a.get_info(),
        })
        .collect()
}

/// Timing of one op run on a GPU node.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OpTiming {
    /// Seconds the kernels ran (timestamp queries where the device has them, otherwise wall
    /// clock from submission to completion).
    pub kernel_seconds: f64,
    /// Whether `kernel_seconds` came from timestamp queries.
    pub from_timestamps: bool,
}

/// A GPU as an AI node.
pub struct GpuDevice {
    info: DeviceInfo,
    shared: Arc<GpuShared>,
}

impl std::fmt::Debug for GpuDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuDevice")
            .field("info", &self.info)
            .finish()
    }
}

impl GpuDevice {
    /// Opens adapter `index` of [`discover`] as node `gpu<id>`.
    pub fn open(index: usize, id: usize, overrides: LimitOverrides) -> Result<Self> {
        let found = adapters();
        let count = found.len();
        let adapter = found.into_iter().nth(index).ok_or_else(|| {
            Error::device(
                format!("gpu{id}"),
                format!("no GPU adapter number {index} (found {count})"),
            )
        })?;
        GpuDevice::from_adapter(&adapter, id, overrides)
    }

    /// Opens `adapter` as node `gpu<id>`.
    pub fn from_adapter(
        adapter: &wgpu::Adapter,
        id: usize,
        overrides: LimitOverrides,
    ) -> Result<Self> {
        let id = format!("gpu{id}");
        let ctx = GpuContext::open(id.clone(), adapter, overrides)?;
        let mut dtypes = vec![DType::F32, DType::F16, DType::BF16];
        dtypes.dedup();
        let ai = &ctx.adapter_info;
        let backend = format!("{:?}", ai.backend).to_lowercase();
        let driver = if ai.driver_info.is_empty() {
            ai.driver.clone()
        } else {
            format!("{} {}", ai.driver, ai.driver_info)
        };
        let info = DeviceInfo {
            id: id.clone(),
            kind: DeviceKind::Gpu,
            name: ai.name.clone(),
            backend,
            threads: None,
            memory_bytes: ctx.limits.max_buffer,
            dtypes,
            driver: Some(driver.trim().to_string()),
        };
        let tuner = Tuner::for_adapter(ai)?;
        let shared = Arc::new(GpuShared {
            ctx,
            pool: BufferPool::new(DEFAULT_RETAIN_BYTES),
            transfers: Mutex::new(TransferStats::default()),
            kernels: PipelineCache::default(),
            tuner,
        });
        Ok(GpuDevice { info, shared })
    }

    /// Opens every adapter wgpu finds, numbering nodes from `first_id`.
    pub fn open_all(first_id: usize, overrides: LimitOverrides) -> Vec<Result<Self>> {
        adapters()
            .iter()
            .enumerate()
            .map(|(i, a)| GpuDevice::from_adapter(a, first_id + i, overrides))
            .collect()
    }

    /// The shared state (context, pool, kernels).
    pub fn shared(&self) -> &Arc<GpuShared> {
        &self.shared
    }

    /// The limits the kernels plan against.
    pub fn limits(&self) -> GpuLimits {
        self.shared.ctx.limits
    }

    /// Whether the node has been marked failed (device lost, timeout, out of memory).
    pub fn is_failed(&self) -> bool {
        self.shared.ctx.is_failed()
    }

    /// Fault injection: destroys the device as if it were lost. The node is marked failed and
    /// every later call on it or its tensors returns a typed error.
    pub fn inject_device_loss(&self) {
        self.shared.ctx.device.destroy();
        let _ = self.shared.ctx.fail("device lost (injected fault)");
    }

    /// Bytes and seconds moved between host and this GPU so far.
    pub fn transfer_stats(&self) -> TransferStats {
        self.shared.transfers.lock().map(|s| *s).unwrap_or_default()
    }

    /// The buffer pool's counters.
    pub fn pool_stats(&self) -> PoolStats {
        self.shared.pool.stats()
    }

    /// Copies a host tensor to the GPU.
    pub fn upload(&self, host: &Tensor) -> Result<GpuTensor> {
        GpuTensor::upload(&self.shared, host)
    }

    /// An uninitialised f32 tensor on the GPU.
    pub fn empty(&self, shape: impl Into<Shape>, dtype: DType) -> Result<GpuTensor> {
        GpuTensor::empty(&self.shared, shape.into(), dtype)
    }

    /// Fails unless `t` lives on this node.
    fn check_resident(&self, t: &GpuTensor) -> Result<()> {
        if !Arc::ptr_eq(t.shared(), &self.shared) {
            return Err(Error::device(
                &self.info.id,
                format!("tensor lives on {}, not on this node", t.device_id()),
            ));
        }
        Ok(())
    }

    /// Runs `op` on device-resident inputs and returns device-resident f32 outputs; the
    /// work is submitted, not awaited (a later download or wait orders after it).
    pub fn run(&self, op: &Op, inputs: &[&GpuTensor]) -> Result<Vec<GpuTensor>> {
        self.run_timed(op, inputs, None)
    }

    /// Like [`GpuDevice::run`], timing the kernels; waits for them to finish.
    pub fn run_and_time(
        &self,
        op: &Op,
        inputs: &[&GpuTensor],
    ) -> Result<(Vec<GpuTensor>, OpTiming)> {
        let mut timer = KernelTimer::new(&self.shared.ctx, KernelTimer::DEFAULT_PASSES);
        let start = Instant::now();
        let out = self.run_timed(op, inputs, timer.as_mut())?;
        let from_ts = match timer.as_mut() {
            Some(t) => t.seconds(&self.shared.ctx)?,
            None => {
                self.shared.ctx.wait(None)?;
                None
            }
        };
        let wall = start.elapsed().as_secs_f64();
        let timing = match from_ts {
            Some(s) => OpTiming {
                kernel_seconds: s,
                from_timestamps: true,
            },
            None => OpTiming {
                kernel_seconds: wall,
                from_timestamps: false,
            },
        };
        Ok((out, timing))
    }

    fn run_timed(
        &self,
        op: &Op,
        inputs: &[&GpuTensor],
        timer: Option<&mut KernelTimer>,
    ) -> Result<Vec<GpuTensor>> {
        self.shared.ctx.check_alive()?;
        for t in inputs {
            self.check_resident(t)?;
        }
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        let out_shape = op.output_shape(&shapes)?;
        check_dtypes(op, inputs)?;
        let out = GpuTensor::empty(&self.shared, out_shape, DType::F32)?;
        let dtype = inputs.first().map_or(DType::F32, |t| t.dtype());
        let tile = self.tile_for(op, &shapes, dtype)?;
        let shared = &*self.shared;
        shared.ctx.scoped(op.name(), || {
            let mut rec = Recorder::new(shared, timer);
            match op {
                Op::MatMul { trans_a, trans_b } => {
                    let dims = matmul_dims(*trans_a, *trans_b, &shapes)?;
                    let args = MatmulArgs {
                        a: inputs[0],
                        b: inputs[1],
                        c: &out,
                        m: dims.m,
                        n: dims.n,
                        k: dims.k,
                        trans_a: *trans_a,
                        trans_b: *trans_b,
                        alpha: 1.0,
                        beta: 0.0,
                        bias: None,
                        relu: false,
                    };
                    encode_matmul(shared, &mut rec, &args, tile)?;
                }
                Op::Conv2d(params) => {
                    let dims = conv2d_dims(params, &shapes)?;
                    let args = ConvArgs {
                        x: inputs[0],
                        w: inputs[1],
                        bias: inputs.get(2).copied(),
                        y: &out,
                        dims,
                        params: params.clone(),
                    };
                    encode_conv2d(shared, &mut rec, &args, tile)?;
                }
                Op::Unary(_)
                | Op::Binary(_)
                | Op::Softmax { .. }
                | Op::MaxPool(_)
                | Op::AvgPool(_)
                | Op::GlobalAvgPool
                | Op::BatchNorm { .. } => {
                    kernels::ops::encode_op(shared, &mut rec, op, inputs, &out)?;
                }
            }
            rec.submit();
            Ok(())
        })?;
        Ok(vec![out])
    }

    /// The GEMM tiling for `op` (tuned on first use of its shape class); the default for ops
    /// that do not run the tiled GEMM.
    fn tile_for(&self, op: &Op, shapes: &[&Shape], dtype: DType) -> Result<TileConfig> {
        let (m, n, k) = match op {
            Op::MatMul { trans_a, trans_b } => {
                let d = matmul_dims(*trans_a, *trans_b, shapes)?;
                if d.m <= GEMV_MAX_ROWS {
                    // Products of a few rows run as matrix-vector products, with no tiling.
                    return Ok(TileConfig::DEFAULT);
                }
                (d.m, d.n, d.k)
            }
            Op::Conv2d(params)
                if !(params.groups > 1 && conv2d_dims(params, shapes)?.weight[1] == 1) =>
            {
                let d = conv2d_dims(params, shapes)?;
                let [_, o, oh, ow] = d.output;
                let taps = d.weight[1] * d.weight[2] * d.weight[3];
                (o / params.groups.max(1), d.input[0] * oh * ow, taps)
            }
            _ => return Ok(TileConfig::DEFAULT),
        };
        Ok(self.shared.tuner.tile_on_node(&self.shared, m, n, k, dtype))
    }

    /// Runs a matmul whose operands exceed the largest buffer as `tiles` = (row blocks,
    /// column blocks) separate products on host slices, gathered on the host.
    fn execute_host_tiled(
        &self,
        op: &Op,
        inputs: &[&Tensor],
        dims: crate::op::MatMulDims,
        tiles: (usize, usize),
    ) -> Result<Vec<Tensor>> {
        let Op::MatMul { trans_a, trans_b } = op else {
            return Err(Error::shape(op.name(), "host tiling is only for matmul"));
        };
        let (a, b) = (inputs[0], inputs[1]);
        let rows = weighted_ranges(dims.m, &vec![1.0; tiles.0]);
        let cols = weighted_ranges(dims.n, &vec![1.0; tiles.1]);
        let b_parts = cols
            .iter()
            .map(|c| b.narrow(usize::from(!*trans_b), c.start, c.len()))
            .collect::<Result<Vec<_>>>()?;
        let mut row_blocks = Vec::with_capacity(rows.len());
        for r in &rows {
            let a_part = a.narrow(usize::from(*trans_a), r.start, r.len())?;
            let mut blocks = Vec::with_capacity(cols.len());
            for b_part in &b_parts {
                blocks.push(self.execute(op, &[&a_part, b_part])?.remove(0));
            }
            let refs: Vec<&Tensor> = blocks.iter().collect();
            row_blocks.push(Tensor::concat(&refs, 1)?);
        }
        let refs: Vec<&Tensor> = row_blocks.iter().collect();
        Ok(vec![Tensor::concat(&refs, 0)?])
    }

    /// Joins f32 tensors along `axis` into a new tensor (`out_dims`, checked by the caller
    /// to be the parts' dims with the axis summed) by buffer copies; submitted, not awaited.
    pub fn concat(
        &self,
        parts: &[&GpuTensor],
        axis: usize,
        out_dims: &[usize],
    ) -> Result<GpuTensor> {
        self.shared.ctx.check_alive()?;
        for t in parts {
            self.check_resident(t)?;
            if t.dtype() != DType::F32 || t.shape().rank() != out_dims.len() {
                return Err(Error::shape(
                    "gpu concat",
                    format!("part {} {} does not fit {out_dims:?}", t.dtype(), t.shape()),
                ));
            }
        }
        let out = GpuTensor::empty(&self.shared, Shape::new(out_dims.to_vec()), DType::F32)?;
        let outer = Shape::new(out_dims[..axis].to_vec()).numel()?;
        let inner = Shape::new(out_dims[axis + 1..].to_vec()).numel()?;
        let row = out_dims[axis] * inner;
        let shared = &*self.shared;
        shared.ctx.scoped("concat", || {
            let mut rec = Recorder::new(shared, None);
            let mut offset = 0;
            for t in parts {
                let block = t.dims()[axis] * inner;
                if block > 0 {
                    for o in 0..outer {
                        rec.copy(
                            t.buffer(),
                            (o * block * 4) as u64,
                            out.buffer(),
                            ((o * row + offset) * 4) as u64,
                            (block * 4) as u64,
                        );
                    }
                }
                offset += block;
            }
            rec.submit();
            Ok(())
        })?;
        Ok(out)
    }

    /// A copy of `t` on this node, viewed as `shape` (same element count); submitted, not
    /// awaited.
    pub fn copy_as(&self, t: &GpuTensor, shape: Shape) -> Result<GpuTensor> {
        self.shared.ctx.check_alive()?;
        self.check_resident(t)?;
        if shape.numel()? != t.numel() {
            return Err(Error::shape(
                "gpu copy",
                format!("cannot view {} as {shape}", t.shape()),
            ));
        }
        let out = GpuTensor::empty(&self.shared, t.shape().clone(), t.dtype())?;
        let bytes = tensor::storage_bytes(t.numel(), t.dtype())?;
        let shared = &*self.shared;
        shared.ctx.scoped("copy", || {
            let mut rec = Recorder::new(shared, None);
            rec.copy(t.buffer(), 0, out.buffer(), 0, bytes);
            rec.submit();
            Ok(())
        })?;
        out.reshape(shape)
    }

    /// Waits for all submitted work, bounded by the node's timeout.
    pub fn synchronize(&self) -> Result<()> {
        self.shared.ctx.wait(None)
    }
}

/// Row and column blocks that keep A, B and C of a matmul within `max_buffer` bytes each
/// ((1, 1) when they fit); an error when even one row of A or column of B is too large.
fn host_tiles(
    max_buffer: u64,
    dims: crate::op::MatMulDims,
    dtype: DType,
    id: &str,
) -> Result<(usize, usize)> {
    let es = dtype.size_bytes() as u64;
    let (m, n, k) = (dims.m as u64, dims.n as u64, dims.k as u64);
    let fits = |bytes: u64| bytes.div_ceil(16) * 16 <= max_buffer;
    if !fits(k * es) {
        return Err(Error::device(
            id,
            format!(
                "one row of a matmul with K = {k} needs {} bytes, more than the largest buffer \
                 ({max_buffer} bytes)",
                k * es
            ),
        ));
    }
    let (mut pm, mut pn) = (1u64, 1u64);
    loop {
        let (bm, bn) = (m.div_ceil(pm), n.div_ceil(pn));
        if !fits(bn * k * es) && bn > 1 {
            pn *= 2;
        } else if !fits(bm * k * es) && bm > 1 {
            pm *= 2;
        } else if !fits(bm * bn * 4) {
            if bm >= bn && bm > 1 {
                pm *= 2;
            } else {
                pn *= 2;
            }
        } else {
            return Ok((pm.min(m.max(1)) as usize, pn.min(n.max(1)) as usize));
        }
    }
}

/// Checks the input dtypes an op accepts on the GPU: matmul and conv take f32, f16 or bf16
/// operands of one dtype; a conv bias is f32. The elementwise, pooling and normalisation ops
/// widen each input from its own dtype.
fn check_dtypes(op: &Op, inputs: &[&GpuTensor]) -> Result<()> {
    if !matches!(op, Op::MatMul { .. } | Op::Conv2d(_)) {
        return Ok(());
    }
    let Some(first) = inputs.first() else {
        return Ok(());
    };
    let dtype = first.dtype();
    for (i, t) in inputs.iter().enumerate().take(2) {
        if t.dtype() != dtype {
            return Err(Error::dtype(
                op.name(),
                format!("input {i} is {}, input 0 is {dtype}", t.dtype()),
            ));
        }
    }
    if let Some(bias) = inputs.get(2)
        && bias.dtype() != DType::F32
    {
        return Err(Error::dtype(
            op.name(),
            format!("the bias is {}, the GPU takes an f32 bias", bias.dtype()),
        ));
    }
    Ok(())
}

impl Device for GpuDevice {
    fn info(&self) -> &DeviceInfo {
        &self.info
    }

    fn execute(&self, op: &Op, inputs: &[&Tensor]) -> Result<Vec<Tensor>> {
        let shapes: Vec<&Shape> = inputs.iter().map(|t| t.shape()).collect();
        op.output_shape(&shapes)?;
        if let Op::MatMul { trans_a, trans_b } = op {
            let dims = matmul_dims(*trans_a, *trans_b, &shapes)?;
            let tiles = host_tiles(
                self.limits().max_buffer,
                dims,
                inputs[0].dtype(),
                &self.info.id,
            )?;
            if tiles != (1, 1) {
                return self.execute_host_tiled(op, inputs, dims, tiles);
            }
        }
        let resident = inputs
            .iter()
            .map(|t| self.upload(t))
            .collect::<Result<Vec<_>>>()?;
        let refs: Vec<&GpuTensor> = resident.iter().collect();
        let outs = self.run(op, &refs)?;
        outs.iter().map(GpuTensor::download).collect()
    }

    fn inject_device_loss(&self) {
        GpuDevice::inject_device_loss(self);
    }

    fn gpu(&self) -> Option<&GpuDevice> {
        Some(self)
    }

    fn time_resident(&self, op: &Op, inputs: &[&Tensor], reps: usize) -> Option<Result<Vec<f64>>> {
        let run = || -> Result<Vec<f64>> {
            let resident = inputs
                .iter()
                .map(|t| self.upload(t))
                .collect::<Result<Vec<_>>>()?;
            let refs: Vec<&GpuTensor> = resident.iter().collect();
            // Untimed runs until the clocks are up (at least one: pipelines, tiling).
            let ramp = std::time::Instant::now();
            for _ in 0..timing::BENCH_CLOCK_RAMP_MAX_RUNS {
                self.run_and_time(op, &refs)?;
                if ramp.elapsed() >= timing::BENCH_CLOCK_RAMP {
                    break;
                }
            }
            (0..reps)
                .map(|_| Ok(self.run_and_time(op, &refs)?.1.kernel_seconds))
                .collect()
        };
        Some(run())
    }
}
