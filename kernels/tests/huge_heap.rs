//! `buffer::retain_freed_memory` grows glibc's heap once, by 512 MiB advised to use huge pages,
//! and memory allocated afterwards reads back what was written. Run without a test harness:
//! the check needs the main thread, which allocates from the heap that is grown.

use accelmesh_kernels::buffer::{retain_freed_memory, try_zeroed_f32};

/// Bytes of heap mappings that carry the huge-page advice (`hg` among their VmFlags).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn advised_heap() -> usize {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("/proc/self/smaps");
    let mut total = 0;
    let mut heap_bytes = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            heap_bytes = line.ends_with("[heap]").then_some(end - start);
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && flags.split_whitespace().any(|f| f == "hg")
        {
            total += heap_bytes.unwrap_or(0);
        }
    }
    total
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    const GROWTH: usize = 512 << 20;
    assert_eq!(advised_heap(), 0, "no heap is advised before the call");
    assert!(retain_freed_memory(), "glibc takes the settings");
    let once = advised_heap();
    assert!(
        (GROWTH..GROWTH + (64 << 20)).contains(&once),
        "{once} bytes of heap advised, expected about {GROWTH}"
    );
    assert!(retain_freed_memory());
    let twice = advised_heap();
    assert!(
        twice < once + GROWTH / 2,
        "a second call grew it again: {once} then {twice}"
    );
    // Blocks from the advised heap hold what is written to them.
    let mut blocks: Vec<Vec<f32>> = Vec::new();
    for (i, len) in [3usize << 20, 1 << 20, 7 << 18].into_iter().enumerate() {
        let mut v = try_zeroed_f32(len).expect("allocation");
        assert!(
            v.iter().step_by(1021).all(|&x| x == 0.0),
            "block {i} zeroed"
        );
        for (j, x) in v.iter_mut().enumerate() {
            *x = (j % 4099) as f32 + i as f32;
        }
        blocks.push(v);
    }
    for (i, v) in blocks.iter().enumerate() {
        assert!(
            v.iter()
                .enumerate()
                .all(|(j, &x)| x == (j % 4099) as f32 + i as f32),
            "block {i} reads back"
        );
    }
    println!("huge_heap: {once} bytes of heap advised; blocks read back");
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    assert!(
        !retain_freed_memory(),
        "only glibc on Linux takes the settings"
    );
}
