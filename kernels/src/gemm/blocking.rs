//! Cache blocking: how big the packed blocks are, derived from the machine's cache sizes.

use std::sync::OnceLock;

/// Data cache sizes in bytes, per core for L1 and L2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CacheSizes {
    /// Level-1 data cache.
    pub l1d: usize,
    /// Level-2 cache.
    pub l2: usize,
    /// Level-3 cache (shared), or 0 if none is reported.
    pub l3: usize,
}

impl CacheSizes {
    /// Sizes used when the platform does not report them.
    pub const DEFAULT: CacheSizes = CacheSizes {
        l1d: 32 * 1024,
        l2: 1024 * 1024,
        l3: 8 * 1024 * 1024,
    };

    /// This machine's caches, read once (Linux sysfs), or [`CacheSizes::DEFAULT`].
    pub fn detect() -> CacheSizes {
        static DETECTED: OnceLock<CacheSizes> = OnceLock::new();
        *DETECTED.get_or_init(|| read_sysfs().unwrap_or(CacheSizes::DEFAULT))
    }
}

fn read_sysfs() -> Option<CacheSizes> {
    let mut sizes = CacheSizes {
        l1d: 0,
        l2: 0,
        l3: 0,
    };
    for index in 0..8 {
        let dir = format!("/sys/devices/system/cpu/cpu0/cache/index{index}");
        let read = |name: &str| std::fs::read_to_string(format!("{dir}/{name}")).ok();
        let Some(level) = read("level") else { break };
        let kind = read("type").unwrap_or_default();
        let Some(size) = read("size").and_then(|s| parse_size(s.trim())) else {
            continue;
        };
        match (level.trim(), kind.trim()) {
            ("1", "Data") | ("1", "Unified") => sizes.l1d = size,
            ("2", _) => sizes.l2 = size,
            ("3", _) => sizes.l3 = size,
            _ => {}
        }
    }
    (sizes.l1d > 0 && sizes.l2 > 0).then_some(sizes)
}

/// Parses sysfs sizes such as `48K` or `2048K` or `1M`.
fn parse_size(text: &str) -> Option<usize> {
    let (digits, unit) = match text.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((at, _)) => text.split_at(at),
        None => (text, ""),
    };
    let value: usize = digits.parse().ok()?;
    let scale = match unit {
        "" => 1,
        "K" => 1024,
        "M" => 1024 * 1024,
        "G" => 1024 * 1024 * 1024,
        _ => return None,
    };
    value.checked_mul(scale)
}

/// Block sizes of one gemm call: depth `kc`, columns `nc` of a packed B block, rows `mc` of a task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Blocking {
    /// Depth of a packed block: an `mr × kc` A micro-panel fills about half of L1 (A packed
    /// beforehand) or up to three quarters (a plain product).
    pub kc: usize,
    /// Columns of a packed B block: `kc × nc` fills about half of L2.
    pub nc: usize,
}

impl Blocking {
    /// Blocking for a microkernel of `mr × nr` on caches `caches`, for A packed beforehand (a
    /// convolution's weights): an A micro-panel fills about half of L1.
    pub fn for_kernel(mr: usize, nr: usize, caches: CacheSizes) -> Blocking {
        Self::with_a_panel_bytes(mr, nr, caches.l1d / 2, caches)
    }

    /// Blocking for a product that packs its own A (a plain matrix product): an A micro-panel
    /// fills up to three quarters of L1, so a deep product loads and stores its C tiles in
    /// fewer passes. Where half of L1 holds a 512-deep panel (48 KiB, 12 rows) both agree; on
    /// a 32 KiB L1 (Zen 4) n = 1024 then runs in two depth blocks of 512 instead of four of
    /// 256: 2 threads 204.6 against 197.8 GFLOP/s, n = 512 196.5 / 193.5, n = 2048 211.9 /
    /// 207.6, one thread at n = 1024 102.3 / 100.1. Convolution weights keep half of L1: there
    /// the deeper blocks measured VGG-19 1.009–1.010× the time, ResNet-50 1.000×, Inception v1
    /// and DenseNet-121 0.996×.
    pub fn for_plain_product(mr: usize, nr: usize, caches: CacheSizes) -> Blocking {
        Self::with_a_panel_bytes(mr, nr, caches.l1d * 3 / 4, caches)
    }

    /// Blocking whose `mr × kc` A micro-panel takes at most `a_panel` bytes (`kc` 64 to 512, a
    /// multiple of 8) and whose `kc × nc` B block fills about half of L2.
    fn with_a_panel_bytes(mr: usize, nr: usize, a_panel: usize, caches: CacheSizes) -> Blocking {
        let floats = std::mem::size_of::<f32>();
        let kc = (a_panel / (mr * floats)).clamp(64, 512) / 8 * 8;
        let nc = (caches.l2 / 2 / (kc * floats)).clamp(nr, 4096) / nr * nr;
        Blocking { kc, nc: nc.max(nr) }
    }

    /// The same blocking with `kc` evened out over a depth of `k`: 576 becomes two blocks of
    /// 288, not 512 and a short 64 whose C traffic would cost as much as its arithmetic.
    pub fn for_depth(self, k: usize) -> Blocking {
        let blocks = k.div_ceil(self.kc).max(1);
        Blocking {
            kc: k.div_ceil(blocks).next_multiple_of(4).min(self.kc).max(1),
            ..self
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn depth_blocks_are_even() {
        let b = Blocking { kc: 512, nc: 512 };
        assert_eq!(b.for_depth(576).kc, 288);
        assert_eq!(b.for_depth(1024).kc, 512);
        assert_eq!(b.for_depth(100).kc, 100);
        assert_eq!(b.for_depth(2304).kc, 464);
        assert_eq!(b.for_depth(0).kc, 1);
    }

    #[test]
    fn plain_products_take_deeper_blocks_up_to_512() {
        let zen4 = CacheSizes {
            l1d: 32 * 1024,
            l2: 1024 * 1024,
            l3: 32 * 1024 * 1024,
        };
        assert_eq!(Blocking::for_kernel(12, 32, zen4).kc, 336);
        assert_eq!(Blocking::for_plain_product(12, 32, zen4).kc, 512);
        assert_eq!(
            Blocking::for_plain_product(12, 32, zen4).for_depth(1024).kc,
            512
        );
        let xeon = CacheSizes {
            l1d: 48 * 1024,
            ..zen4
        };
        assert_eq!(Blocking::for_kernel(12, 32, xeon).kc, 512);
        assert_eq!(Blocking::for_plain_product(12, 32, xeon).kc, 512);
    }

    #[test]
    fn parses_sysfs_sizes() {
        assert_eq!(parse_size("48K"), Some(48 * 1024));
        assert_eq!(parse_size("2M"), Some(2 * 1024 * 1024));
        assert_eq!(parse_size("512"), Some(512));
        assert_eq!(parse_size("12Q"), None);
    }

    #[test]
    fn blocking_is_sane_for_common_caches() {
        let b = Blocking::for_kernel(12, 32, CacheSizes::DEFAULT);
        assert!(b.kc >= 64 && b.kc <= 512 && b.kc.is_multiple_of(8));
        assert!(b.nc >= 32 && b.nc.is_multiple_of(32));
        let tiny = Blocking::for_kernel(
            12,
            32,
            CacheSizes {
                l1d: 1,
                l2: 1,
                l3: 0,
            },
        );
        assert_eq!((tiny.kc, tiny.nc), (64, 32));
    }
}
