//! The GPU kernels: WGSL sources from `shaders/` composed per operand dtype, compiled
//! pipelines cached per specialisation, binding windows over large buffers, and a recorder
//! that encodes dispatches (grids folded to the device's limits) into one submission.

pub mod conv;
pub mod matmul;
pub mod ops;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use wgpu::util::DeviceExt;

use super::GpuShared;
use super::tensor::GpuTensor;
use super::timing::KernelTimer;
use crate::tensor::DType;
use crate::{Error, Result};

/// How an operand is stored on the GPU and widened to f32 in a shader.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Storage {
    /// f32 words.
    F32,
    /// f16 read natively (`SHADER_F16`).
    F16Native,
    /// f16 two to a u32 word, widened with `unpack2x16float`.
    F16Packed,
    /// bf16 two to a u32 word, widened by a shift.
    BF16,
    /// f32 bound as vec4 words (16-byte tile loads); for operands whose rows and offset are
    /// multiples of four elements.
    F32Vec4,
}

impl Storage {
    /// The storage of a `dtype` operand on a device with (or without) native f16.
    pub fn of(dtype: DType, native_f16: bool) -> Storage {
        match dtype {
            DType::F32 => Storage::F32,
            DType::F16 if native_f16 => Storage::F16Native,
            DType::F16 => Storage::F16Packed,
            DType::BF16 => Storage::BF16,
        }
    }

    /// Bytes per element.
    pub fn elem_bytes(self) -> u64 {
        match self {
            Storage::F32 | Storage::F32Vec4 => 4,
            _ => 2,
        }
    }

    /// Short name used in pipeline keys.
    pub fn key(self) -> &'static str {
        match self {
            Storage::F32 => "f32",
            Storage::F16Native => "f16",
            Storage::F16Packed => "f16p",
            Storage::BF16 => "bf16",
            Storage::F32Vec4 => "f32x4",
        }
    }

    /// WGSL that declares operand `name` at `binding` and a `load_<name>(i) -> f32`.
    pub fn loader(self, name: &str, binding: u32) -> String {
        let template = match self {
            Storage::F32 => include_str!("../../../../shaders/load_f32.wgsl"),
            Storage::F16Native => include_str!("../../../../shaders/load_f16.wgsl"),
            Storage::F16Packed => include_str!("../../../../shaders/load_f16_packed.wgsl"),
            Storage::BF16 => include_str!("../../../../shaders/load_bf16.wgsl"),
            Storage::F32Vec4 => include_str!("../../../../shaders/load_f32x4.wgsl"),
        };
        template
            .replace("NAME", name)
            .replace("BINDING", &binding.to_string())
    }
}

/// Compiled pipelines, one per (shader, operand storages, override constants).
#[derive(Default)]
pub struct PipelineCache {
    pipelines: Mutex<HashMap<String, Arc<wgpu::ComputePipeline>>>,
}

impl std::fmt::Debug for PipelineCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.pipelines.lock().map(|p| p.len()).unwrap_or(0);
        write!(f, "PipelineCache({n} pipelines)")
    }
}

impl PipelineCache {
    /// The pipeline for `key`, compiling `source()` with `constants` on first use.
    pub fn get(
        &self,
        shared: &GpuShared,
        key: &str,
        source: impl FnOnce() -> String,
        constants: &[(&str, f64)],
    ) -> Result<Arc<wgpu::ComputePipeline>> {
        let full_key = format!("{key}|{constants:?}");
        if let Ok(map) = self.pipelines.lock()
            && let Some(p) = map.get(&full_key)
        {
            return Ok(Arc::clone(p));
        }
        let ctx = &shared.ctx;
        let text = source();
        let pipeline = ctx.scoped(&format!("compiling kernel {key}"), || {
            let module = ctx
                .device
                .create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some(key),
                    source: wgpu::ShaderSource::Wgsl(text.into()),
                });
            Ok(ctx
                .device
                .create_compute_pipeline(&wgpu::ComputePipelineDescriptor {
                    label: Some(key),
                    layout: None,
                    module: &module,
                    entry_point: Some("main"),
                    compilation_options: wgpu::PipelineCompilationOptions {
                        constants,
                        zero_initialize_workgroup_memory: false,
                    },
                    cache: None,
                }))
        })?;
        let pipeline = Arc::new(pipeline);
        if let Ok(mut map) = self.pipelines.lock() {
            map.insert(full_key, Arc::clone(&pipeline));
        }
        Ok(pipeline)
    }
}

/// A bindable byte range of a tensor's buffer, and the element offset of the first wanted
/// element inside it (the range starts at an aligned offset at or before that element).
#[derive(Debug, Clone, Copy)]
pub struct Window<'a> {
    /// The buffer.
    pub buffer: &'a wgpu::Buffer,
    /// Byte offset of the binding.
    pub offset: u64,
    /// Byte size of the binding.
    pub size: u64,
    /// Index of the first wanted element within the binding.
    pub elem_offset: u32,
}

impl<'a> Window<'a> {
    /// The binding resource for this window.
    pub fn resource(&self) -> wgpu::BindingResource<'a> {
        wgpu::BindingResource::Buffer(wgpu::BufferBinding {
            buffer: self.buffer,
            offset: self.offset,
            size: std::num::NonZeroU64::new(self.size),
        })
    }
}

/// Bytes a window over `count` elements starting at `first` spans, including the part before
/// `first` down to the aligned binding offset (an upper bound used for planning splits).
pub fn window_span(shared: &GpuShared, storage: Storage, count: u64) -> u64 {
    let align = shared.ctx.limits.storage_offset_alignment;
    count * storage.elem_bytes() + align + 4
}

/// The window of `t` covering elements `first .. first + count`, or an error naming the
/// binding limit when it does not fit one binding.
pub fn window<'a>(
    shared: &GpuShared,
    t: &'a GpuTensor,
    storage: Storage,
    first: u64,
    count: u64,
) -> Result<Window<'a>> {
    let limits = &shared.ctx.limits;
    let eb = storage.elem_bytes();
    let start = first * eb;
    let aligned = start / limits.storage_offset_alignment * limits.storage_offset_alignment;
    let buffer = t.buffer();
    // Whole 16-byte units, so the window can also be bound as vec4 words.
    let end = ((first + count.max(1)) * eb).div_ceil(16) * 16;
    let size = end.min(buffer.size()).saturating_sub(aligned).max(16);
    if size > limits.max_storage_binding {
        return Err(Error::device(
            &shared.ctx.id,
            format!(
                "a binding of {size} bytes exceeds the device's storage binding limit of {} bytes",
                limits.max_storage_binding
            ),
        ));
    }
    Ok(Window {
        buffer,
        offset: aligned,
        size,
        elem_offset: ((start - aligned) / eb) as u32,
    })
}

/// Folds `groups` workgroups into a grid of at most `max_per_dim` per dimension; shaders
/// linearise the workgroup id and skip the padding at the end.
pub fn fold_grid(groups: u64, max_per_dim: u32) -> Result<[u32; 3]> {
    let max = u64::from(max_per_dim.max(1));
    if groups <= max {
        return Ok([groups.max(1) as u32, 1, 1]);
    }
    let y = groups.div_ceil(max);
    if y <= max {
        let x = groups.div_ceil(y);
        return Ok([x as u32, y as u32, 1]);
    }
    let z = groups.div_ceil(max * max);
    if z > max {
        return Err(Error::overflow(
            "gpu dispatch",
            format!("{groups} workgroups exceed {max}³"),
        ));
    }
    let yz = groups.div_ceil(max);
    Ok([max as u32, yz.div_ceil(z) as u32, z as u32])
}

/// Encodes dispatches into one command buffer; each dispatch gets its own small parameter
/// buffer, and its own pass so the optional timer can bracket it.
pub struct Recorder<'a> {
    shared: &'a GpuShared,
    encoder: wgpu::CommandEncoder,
    timer: Option<&'a mut KernelTimer>,
    kept: Vec<GpuTensor>,
}

impl<'a> Recorder<'a> {
    /// A recorder for `shared`'s device, timing passes with `timer` when given.
    pub fn new(shared: &'a GpuShared, timer: Option<&'a mut KernelTimer>) -> Self {
        let encoder = shared
            .ctx
            .device
            .create_command_encoder(&wgpu::CommandEncoderDescriptor {
                label: Some("accelmesh op"),
            });
        Recorder {
            shared,
            encoder,
            timer,
            kept: Vec::new(),
        }
    }

    /// Encodes one dispatch of `pipeline` over `groups` workgroups, with `params` at binding 0
    /// and `bindings` (binding index, resource) after it.
    pub fn dispatch(
        &mut self,
        pipeline: &wgpu::ComputePipeline,
        params: &[u32],
        bindings: &[(u32, wgpu::BindingResource<'_>)],
        groups: u64,
    ) -> Result<()> {
        if groups == 0 {
            return Ok(());
        }
        let ctx = &self.shared.ctx;
        let grid = fold_grid(groups, ctx.limits.max_workgroups_per_dim)?;
        let mut words = params.to_vec();
        words.resize(words.len().max(4).div_ceil(4) * 4, 0);
        let param_buf = ctx
            .device
            .create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: Some("accelmesh params"),
                contents: bytemuck::cast_slice(&words),
                usage: wgpu::BufferUsages::STORAGE,
            });
        let mut entries = vec![wgpu::BindGroupEntry {
            binding: 0,
            resource: param_buf.as_entire_binding(),
        }];
        for (binding, resource) in bindings {
            entries.push(wgpu::BindGroupEntry {
                binding: *binding,
                resource: resource.clone(),
            });
        }
        let bind_group = ctx.device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: None,
            layout: &pipeline.get_bind_group_layout(0),
            entries: &entries,
        });
        let timestamp_writes = self.timer.as_mut().and_then(|t| t.next_pass());
        let mut pass = self
            .encoder
            .begin_compute_pass(&wgpu::ComputePassDescriptor {
                label: None,
                timestamp_writes,
            });
        pass.set_pipeline(pipeline);
        pass.set_bind_group(0, &bind_group, &[]);
        pass.dispatch_workgroups(grid[0], grid[1], grid[2]);
        Ok(())
    }

    /// Copies `size` bytes between buffers inside the same submission.
    pub fn copy(
        &mut self,
        src: &wgpu::Buffer,
        src_off: u64,
        dst: &wgpu::Buffer,
        dst_off: u64,
        size: u64,
    ) {
        self.encoder
            .copy_buffer_to_buffer(src, src_off, dst, dst_off, size);
    }

    /// Keeps a temporary tensor alive until the submission is recorded; its buffer then
    /// returns to the pool, and the queue orders any reuse after this work.
    pub fn keep_alive(&mut self, t: GpuTensor) {
        self.kept.push(t);
    }

    /// Finishes the command buffer and submits it (no wait).
    pub fn submit(mut self) -> wgpu::SubmissionIndex {
        if let Some(t) = self.timer.as_mut() {
            t.resolve(&mut self.encoder);
        }
        let index = self.shared.ctx.queue.submit([self.encoder.finish()]);
        self.kept.clear();
        index
    }
}

/// A buffer to bind where a kernel's optional input (bias) is absent.
pub fn dummy_f32(shared: &GpuShared) -> wgpu::Buffer {
    shared
        .ctx
        .device
        .create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("accelmesh dummy"),
            contents: &[0u8; 16],
            usage: wgpu::BufferUsages::STORAGE,
        })
}

/// The bit pattern of an f32 parameter.
pub fn f32_bits(v: f32) -> u32 {
    v.to_bits()
}

/// A dimension as a u32 shader parameter, or an error naming it.
pub fn dim_u32(what: &str, v: u64) -> Result<u32> {
    u32::try_from(v).map_err(|_| {
        Error::overflow(
            "gpu kernel",
            format!("{what} = {v} exceeds the 32-bit range shaders index with"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::fold_grid;

    #[test]
    fn grids_fold_within_the_limit() {
        for (groups, max) in [
            (1u64, 65535u32),
            (65535, 65535),
            (65536, 65535),
            (10, 3),
            (27, 3),
            (1 << 33, 65535),
        ] {
            let g = fold_grid(groups, max).unwrap();
            assert!(
                g.iter().all(|&d| d >= 1 && d <= max),
                "{groups} {max} {g:?}"
            );
            let cap = g.iter().map(|&d| u64::from(d)).product::<u64>();
            assert!(cap >= groups, "{groups} {max} {g:?}");
        }
        assert!(fold_grid(28, 3).is_err());
    }
}
