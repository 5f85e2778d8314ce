//! Reuse of GPU buffers: freed storage buffers go back to a size-classed free list instead of
//! the driver, so a chain of ops or a repeated benchmark allocates once.

use std::collections::HashMap;
use std::sync::Mutex;

/// Usage every pooled storage buffer has.
pub const STORAGE_USAGE: wgpu::BufferUsages = wgpu::BufferUsages::STORAGE
    .union(wgpu::BufferUsages::COPY_SRC)
    .union(wgpu::BufferUsages::COPY_DST);

/// Most bytes the free lists keep before freed buffers are released to the driver.
pub const DEFAULT_RETAIN_BYTES: u64 = 1 << 30;

/// Counters of the pool's work.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Buffers created from the driver.
    pub created: u64,
    /// Requests served from the free lists.
    pub reused: u64,
    /// Bytes now held in the free lists.
    pub retained_bytes: u64,
}

/// Size-classed free lists of storage buffers.
#[derive(Debug)]
pub struct BufferPool {
    inner: Mutex<PoolInner>,
    retain_limit: u64,
}

#[derive(Debug, Default)]
struct PoolInner {
    free: HashMap<u64, Vec<wgpu::Buffer>>,
    stats: PoolStats,
}

/// The size class a request of `bytes` is served from: at least 256 bytes, rounded up to an
/// sixteenth of the next power of two (at most 12.5% waste above 4 KiB).
pub fn size_class(bytes: u64) -> u64 {
    let bytes = bytes.max(256);
    let pow = bytes.next_power_of_two();
    let step = (pow / 16).max(256);
    bytes.div_ceil(step).saturating_mul(step)
}

impl BufferPool {
    /// An empty pool that retains at most `retain_limit` bytes of freed buffers.
    pub fn new(retain_limit: u64) -> Self {
        BufferPool {
            inner: Mutex::new(PoolInner::default()),
            retain_limit,
        }
    }

    /// A storage buffer of at least `bytes` bytes (contents undefined), reused when possible.
    pub fn take(&self, device: &wgpu::Device, bytes: u64) -> wgpu::Buffer {
        let class = size_class(bytes);
        if let Ok(mut inner) = self.inner.lock()
            && let Some(buffer) = inner.free.get_mut(&class).and_then(Vec::pop)
        {
            inner.stats.reused += 1;
            inner.stats.retained_bytes -= class;
            return buffer;
        }
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("accelmesh tensor"),
            size: class,
            usage: STORAGE_USAGE,
            mapped_at_creation: false,
        });
        if let Ok(mut inner) = self.inner.lock() {
            inner.stats.created += 1;
        }
        buffer
    }

    /// Returns `buffer` to the free list of its size class, or frees it when the pool is full.
    pub fn give_back(&self, buffer: wgpu::Buffer) {
        let class = buffer.size();
        if let Ok(mut inner) = self.inner.lock()
            && inner.stats.retained_bytes + class <= self.retain_limit
            && class == size_class(class)
        {
            inner.stats.retained_bytes += class;
            inner.free.entry(class).or_default().push(buffer);
            return;
        }
        buffer.destroy();
    }

    /// Releases every retained buffer to the driver.
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            for (_, list) in inner.free.drain() {
                for b in list {
                    b.destroy();
                }
            }
            inner.stats.retained_bytes = 0;
        }
    }

    /// The pool's counters.
    pub fn stats(&self) -> PoolStats {
        self.inner.lock().map(|i| i.stats).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::size_class;

    #[test]
    fn size_classes_round_up_with_bounded_waste() {
        assert_eq!(size_class(0), 256);
        assert_eq!(size_class(1), 256);
        assert_eq!(size_class(257), 512);
        for bytes in [1000u64, 4097, 1 << 20, (1 << 20) + 1, 3 << 28] {
            let c = size_class(bytes);
            assert!(c >= bytes);
            assert_eq!(size_class(c), c, "{bytes}");
            if bytes > 4096 {
                assert!(c as f64 <= bytes as f64 * 1.125 + 256.0, "{bytes} -> {c}");
            }
        }
    }
}
