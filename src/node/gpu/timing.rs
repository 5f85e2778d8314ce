//! Kernel time from GPU timestamp queries: the span from the first timed pass's start to the
//! last one's end, read back after the submission completes.

use std::time::Duration;

use super::context::GpuContext;
use crate::Result;

/// How long work runs before anything is timed, so that an idle GPU's clocks are up (an H200
/// idles at 345 MHz and boosts to 1980; timed from idle, the first of a series of products ran
/// at a third of the speed of the same product timed later).
pub const CLOCK_RAMP: Duration = Duration::from_millis(100);

/// Most untimed runs while the clocks come up (a slow device stops after these).
pub const CLOCK_RAMP_MAX_RUNS: usize = 50;

/// How long a benchmark's resident kernels run untimed first: longer than the tuner's
/// [`CLOCK_RAMP`], whose 100 ms left the first product of a series (4096³ on an H200, behind
/// host-side warm-up runs that leave the GPU mostly idle) at a third of its later speed.
pub const BENCH_CLOCK_RAMP: Duration = Duration::from_millis(500);

/// Most untimed runs of a benchmark's clock ramp.
pub const BENCH_CLOCK_RAMP_MAX_RUNS: usize = 2000;

/// Timestamp queries for up to `capacity` passes of one submission.
pub struct KernelTimer {
    queries: wgpu::QuerySet,
    resolve: wgpu::Buffer,
    readback: wgpu::Buffer,
    capacity: u32,
    used: u32,
    period_ns: f64,
}

impl KernelTimer {
    /// Passes one timer brackets; later passes of the same submission run untimed.
    pub const DEFAULT_PASSES: u32 = 256;

    /// A timer for `ctx`, or `None` when the device has no timestamp queries.
    pub fn new(ctx: &GpuContext, capacity: u32) -> Option<Self> {
        if !ctx.has_timestamps() || capacity == 0 {
            return None;
        }
        let count = capacity * 2;
        let bytes = u64::from(count) * 8;
        let queries = ctx.device.create_query_set(&wgpu::QuerySetDescriptor {
            label: Some("accelmesh timer"),
            ty: wgpu::QueryType::Timestamp,
            count,
        });
        let resolve = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("accelmesh timer resolve"),
            size: bytes,
            usage: wgpu::BufferUsages::QUERY_RESOLVE | wgpu::BufferUsages::COPY_SRC,
            mapped_at_creation: false,
        });
        let readback = ctx.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("accelmesh timer readback"),
            size: bytes,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Some(KernelTimer {
            queries,
            resolve,
            readback,
            capacity,
            used: 0,
            period_ns: f64::from(ctx.queue.get_timestamp_period()),
        })
    }

    /// Timestamp writes for the next pass, or `None` once the capacity is used up.
    pub fn next_pass(&mut self) -> Option<wgpu::ComputePassTimestampWrites<'_>> {
        if self.used >= self.capacity {
            return None;
        }
        let i = self.used;
        self.used += 1;
        Some(wgpu::ComputePassTimestampWrites {
            query_set: &self.queries,
            beginning_of_pass_write_index: Some(2 * i),
            end_of_pass_write_index: Some(2 * i + 1),
        })
    }

    /// Encodes the copy of the written timestamps to the readback buffer.
    pub fn resolve(&mut self, encoder: &mut wgpu::CommandEncoder) {
        if self.used == 0 {
            return;
        }
        let count = self.used * 2;
        encoder.resolve_query_set(&self.queries, 0..count, &self.resolve, 0);
        encoder.copy_buffer_to_buffer(&self.resolve, 0, &self.readback, 0, u64::from(count) * 8);
    }

    /// Seconds from the first pass's start to the last pass's end; waits for the GPU.
    /// `None` when no pass was timed. Resets the timer for the next submission.
    pub fn seconds(&mut self, ctx: &GpuContext) -> Result<Option<f64>> {
        if self.used == 0 {
            return Ok(None);
        }
        let count = self.used * 2;
        self.used = 0;
        let slice = self.readback.slice(..u64::from(count) * 8);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        ctx.wait(None)?;
        match rx.try_recv() {
            Ok(Ok(())) => {}
            _ => return Err(ctx.fail("timestamp readback was not mapped after its wait")),
        }
        let stamps: Vec<u64> = {
            let view = slice
                .get_mapped_range()
                .map_err(|e| ctx.fail(format!("reading timestamps failed: {e}")))?;
            bytemuck::pod_collect_to_vec(&view)
        };
        self.readback.unmap();
        let begin = stamps.iter().step_by(2).copied().min().unwrap_or(0);
        let end = stamps.iter().skip(1).step_by(2).copied().max().unwrap_or(0);
        if end <= begin {
            return Ok(None);
        }
        Ok(Some((end - begin) as f64 * self.period_ns * 1e-9))
    }
}
