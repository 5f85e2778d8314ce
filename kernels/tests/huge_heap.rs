//! `buffer::retain_freed_memory` grows glibc's heap once, by 512 MiB advised to use huge pages,
//! and memory allocated afterwards reads back what was written. Run without a test harness:
//! the check needs the main thread, which allocates from the heap that is grown.

use accelmesh_kernels::buffer::{huge_heap_range, retain_freed_memory, try_zeroed_f32};

/// The mappings of `/proc/self/smaps` that overlap `range`: (start, end, huge-page advice).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn mappings_over(range: &std::ops::Range<usize>) -> Vec<(usize, usize, bool)> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").unwrap_or_default();
    let mut found = Vec::new();
    let mut current = None;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (
                usize::from_str_radix(start, 16),
                usize::from_str_radix(end, 16),
            )
        {
            current = (start < range.end && end > range.start).then_some((start, end));
        } else if let Some(flags) = line.strip_prefix("VmFlags:")
            && let Some((start, end)) = current.take()
        {
            found.push((start, end, flags.split_whitespace().any(|f| f == "hg")));
        }
    }
    found
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn main() {
    const GROWTH: usize = 512 << 20;
    assert_eq!(huge_heap_range(), None, "nothing is grown before the call");
    assert!(retain_freed_memory(), "glibc takes the settings");
    let grown = huge_heap_range();
    assert!(retain_freed_memory());
    assert_eq!(huge_heap_range(), grown, "a second call grows nothing");
    // Natively, with transparent huge pages configured, the heap grows and is advised; under
    // a user-mode emulator (the aarch64 tests run under QEMU, whose emulated heap cannot grow
    // by 512 MiB) or without huge pages, a heap left as it was is accepted, as
    // `huge_heap_range` documents.
    let native = cfg!(target_arch = "x86_64");
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .is_ok_and(|mode| !mode.contains("[never]"));
    match grown {
        None if native && thp => panic!("the heap did not grow on huge pages"),
        None => println!("huge_heap: the heap cannot grow (or take the advice) here"),
        Some(range) => check_grown(&range, GROWTH, native),
    }
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
    println!("huge_heap: blocks read back");
}

/// The grown range is about `growth` bytes, and every mapping of it that the system lists
/// carries the huge-page advice (natively they must be listed; an emulator lists the host's).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn check_grown(range: &std::ops::Range<usize>, growth: usize, native: bool) {
    assert!(
        (growth - 4096..growth + (64 << 20)).contains(&range.len()),
        "grown by {} bytes, expected about {growth}",
        range.len()
    );
    let mappings = mappings_over(range);
    if mappings.is_empty() && !native {
        println!("huge_heap: the mappings of {range:x?} are not listed here; advice not checked");
        return;
    }
    let advised: usize = mappings.iter().filter(|m| m.2).map(|m| m.1 - m.0).sum();
    assert!(
        !mappings.is_empty() && mappings.iter().all(|m| m.2) && advised >= range.len(),
        "mappings over the grown heap {range:x?}: {mappings:x?}"
    );
    println!("huge_heap: {} bytes of heap grown and advised", range.len());
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn main() {
    assert!(
        !retain_freed_memory(),
        "only glibc on Linux takes the settings"
    );
    assert_eq!(huge_heap_range(), None);
}
