//! Device-resident tensors: a pooled GPU buffer with a shape and dtype, and the explicit,
//! counted uploads and downloads that move data between host and GPU.

use std::sync::Arc;
use std::time::Instant;

use half::{bf16, f16};

use super::GpuShared;
use crate::tensor::{DType, Shape, Tensor, TensorData};
use crate::{Error, Result};

/// Bytes and seconds spent moving data between host and GPU (the DRAC's transfer model
/// reads these).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TransferStats {
    /// Host-to-GPU copies.
    pub uploads: u64,
    /// Bytes copied host-to-GPU.
    pub upload_bytes: u64,
    /// Seconds spent in host-to-GPU copies (until the data is on the GPU).
    pub upload_seconds: f64,
    /// GPU-to-host copies.
    pub downloads: u64,
    /// Bytes copied GPU-to-host.
    pub download_bytes: u64,
    /// Seconds spent in GPU-to-host copies (including waiting for pending work).
    pub download_seconds: f64,
}

/// Bytes a tensor of `numel` elements of `dtype` takes on the GPU: f32 as 4-byte words,
/// f16 and bf16 two to a 32-bit word, rounded up to whole 16-byte units.
pub fn storage_bytes(numel: usize, dtype: DType) -> Result<u64> {
    let raw = (numel as u64)
        .checked_mul(dtype.size_bytes() as u64)
        .ok_or_else(|| Error::overflow("gpu tensor", format!("{numel} elements of {dtype}")))?;
    Ok(raw.div_ceil(16).max(1) * 16)
}

/// A tensor whose data lives in GPU memory; its buffer returns to the node's pool on drop.
pub struct GpuTensor {
    shared: Arc<GpuShared>,
    buffer: Option<wgpu::Buffer>,
    shape: Shape,
    dtype: DType,
    numel: usize,
}

impl std::fmt::Debug for GpuTensor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GpuTensor")
            .field("device", &self.shared.ctx.id)
            .field("shape", &self.shape)
            .field("dtype", &self.dtype)
            .finish()
    }
}

impl Drop for GpuTensor {
    fn drop(&mut self) {
        if let Some(b) = self.buffer.take() {
            self.shared.pool.give_back(b);
        }
    }
}

impl GpuTensor {
    /// An uninitialised tensor of `shape` and `dtype` on the GPU of `shared`.
    pub(crate) fn empty(shared: &Arc<GpuShared>, shape: Shape, dtype: DType) -> Result<Self> {
        let numel = shape.numel()?;
        let bytes = storage_bytes(numel, dtype)?;
        let limits = &shared.ctx.limits;
        if bytes > limits.max_buffer {
            return Err(Error::device(
                &shared.ctx.id,
                format!(
                    "{dtype} tensor {shape} needs {bytes} bytes, more than the largest buffer \
                     the device allows ({} bytes)",
                    limits.max_buffer
                ),
            ));
        }
        let buffer = shared.ctx.scoped("allocation", || {
            Ok(shared.pool.take(&shared.ctx.device, bytes))
        })?;
        Ok(GpuTensor {
            shared: Arc::clone(shared),
            buffer: Some(buffer),
            shape,
            dtype,
            numel,
        })
    }

    /// Copies a host tensor to the GPU (counted as an upload).
    pub(crate) fn upload(shared: &Arc<GpuShared>, host: &Tensor) -> Result<Self> {
        let start = Instant::now();
        let (t, bytes) = GpuTensor::write(shared, host)?;
        if let Ok(mut s) = shared.transfers.lock() {
            s.uploads += 1;
            s.upload_bytes += bytes as u64;
            s.upload_seconds += start.elapsed().as_secs_f64();
        }
        Ok(t)
    }

    /// Copies a host tensor to the GPU without counting it: the node's own housekeeping
    /// (the autotuner's operands), which is not traffic of the user's work.
    pub(crate) fn upload_uncounted(shared: &Arc<GpuShared>, host: &Tensor) -> Result<Self> {
        Ok(GpuTensor::write(shared, host)?.0)
    }

    /// Copies a host tensor to a new GPU tensor; returns it with the bytes written.
    fn write(shared: &Arc<GpuShared>, host: &Tensor) -> Result<(Self, usize)> {
        let t = GpuTensor::empty(shared, host.shape().clone(), host.dtype())?;
        let bytes = host_bytes(host);
        shared.ctx.scoped("upload", || {
            shared.ctx.queue.write_buffer(t.buffer(), 0, &bytes);
            Ok(())
        })?;
        let submission = shared.ctx.queue.submit([]);
        shared.ctx.wait(Some(submission))?;
        Ok((t, bytes.len()))
    }

    /// Copies the tensor back to host memory (counted as a download); waits for pending work
    /// on it, bounded by the node's timeout.
    pub fn download(&self) -> Result<Tensor> {
        let ctx = &self.shared.ctx;
        let start = Instant::now();
        let size = storage_bytes(self.numel, self.dtype)?;
        let staging = ctx.scoped("download", || {
            let staging = ctx.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("accelmesh download"),
                size,
                usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            let mut enc = ctx
                .device
                .create_command_encoder(&wgpu::CommandEncoderDescriptor::default());
            enc.copy_buffer_to_buffer(self.buffer(), 0, &staging, 0, size);
            ctx.queue.submit([enc.finish()]);
            Ok(staging)
        })?;
        let (tx, rx) = std::sync::mpsc::channel();
        staging.slice(..).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait(None)?;
        match rx.try_recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(ctx.fail(format!("mapping a download failed: {e}"))),
            Err(_) => return Err(ctx.fail("a download was not mapped after its wait")),
        }
        let data = {
            let view = staging
                .slice(..)
                .get_mapped_range()
                .map_err(|e| ctx.fail(format!("reading a download failed: {e}")))?;
            decode(&view, self.numel, self.dtype)
        };
        staging.unmap();
        staging.destroy();
        if let Ok(mut s) = self.shared.transfers.lock() {
            s.downloads += 1;
            s.download_bytes += size;
            s.download_seconds += start.elapsed().as_secs_f64();
        }
        Tensor::from_data(self.shape.clone(), data)
    }

    /// The tensor's shape.
    pub fn shape(&self) -> &Shape {
        &self.shape
    }

    /// The dimensions of the tensor's shape.
    pub fn dims(&self) -> &[usize] {
        self.shape.dims()
    }

    /// The tensor's element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.numel
    }

    /// The id of the node the data lives on.
    pub fn device_id(&self) -> &str {
        &self.shared.ctx.id
    }

    /// Reinterprets the tensor with another shape of the same element count (no copy).
    pub fn reshape(mut self, shape: impl Into<Shape>) -> Result<Self> {
        let shape = shape.into();
        if shape.numel()? != self.numel {
            return Err(Error::shape(
                "gpu reshape",
                format!("cannot view {} as {}", self.shape, shape),
            ));
        }
        self.shape = shape;
        Ok(self)
    }

    /// The underlying buffer.
    pub(crate) fn buffer(&self) -> &wgpu::Buffer {
        self.buffer
            .as_ref()
            .expect("a live GpuTensor always holds its buffer")
    }

    /// The shared node state the tensor belongs to.
    pub(crate) fn shared(&self) -> &Arc<GpuShared> {
        &self.shared
    }
}

/// The host tensor's bytes as the GPU stores them, zero-padded to 16 bytes.
fn host_bytes(host: &Tensor) -> Vec<u8> {
    let mut bytes: Vec<u8> = match host.data() {
        TensorData::F32(v) => bytemuck::cast_slice(v).to_vec(),
        TensorData::F16(v) => bytemuck::cast_slice(v).to_vec(),
        TensorData::BF16(v) => bytemuck::cast_slice(v).to_vec(),
    };
    let padded = bytes.len().div_ceil(16).max(1) * 16;
    bytes.resize(padded, 0);
    bytes
}

/// Decodes `numel` elements of `dtype` from GPU storage bytes.
fn decode(bytes: &[u8], numel: usize, dtype: DType) -> TensorData {
    match dtype {
        DType::F32 => TensorData::F32(bytemuck::pod_collect_to_vec(&bytes[..numel * 4])),
        DType::F16 => TensorData::F16(
            bytes[..numel * 2]
                .chunks_exact(2)
                .map(|c| f16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
        DType::BF16 => TensorData::BF16(
            bytes[..numel * 2]
                .chunks_exact(2)
                .map(|c| bf16::from_le_bytes([c[0], c[1]]))
                .collect(),
        ),
    }
}
