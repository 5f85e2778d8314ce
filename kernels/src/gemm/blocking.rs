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
    /// Depth of a packed block: an `mr × kc` A micro-panel fills about half of L1.
    pub kc: usize,
    /// Columns of a packed B block: `kc × nc` fills about half of L2.
    pub nc: usize,
}

impl Blocking {
    /// Blocking for a microkernel of `mr × nr` on caches `caches`.
    pub fn for_kernel(mr: usize, nr: usize, caches: CacheSizes) -> Blocking {
        let floats = std::mem::size_of::<f32>();
        let kc = (caches.l1d / 2 / (mr * floats)).clamp(64, 512) / 8 * 8;
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
