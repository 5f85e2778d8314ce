//! Which CPUs a CPU node's workers are pinned to.
//!
//! Unpinned, the workers of a pool that has been idle for a while are woken one by the other,
//! and the operating system may place the woken one on the CPU of the one that woke it, where
//! the two share a core until the load balancer moves one: measured on the 2-vCPU VM, after
//! a 0.2 s pause two rayon workers ran parallel work at one worker's speed for 30–60 ms
//! (981–1053 µs per op against 553–589), and pinned to a CPU each they were back at full speed
//! from the first op. Nodes take consecutive ranges of the CPUs this process may use; a node
//! whose range does not fit (more threads than CPUs) stays unpinned rather than stacking its
//! workers, and so does a one-thread node alone, which has no one to share a core with. One-
//! thread nodes of a mesh of several CPU nodes are pinned, each to its CPU: a convolution
//! split across them hands each member its part every millisecond or so, and a woken member
//! placed on the CPU of the lead that woke it ran its half at half speed (ResNet-50 split over
//! two one-thread nodes: 52 ms, no faster than one node alone).

use std::ops::Range;

/// The environment variable that turns pinning off when set to `0`.
pub(crate) const PIN_ENV: &str = "ACCELMESH_PIN";

/// The CPUs for the `threads` workers of a CPU node whose workers come after `first` workers
/// of the nodes before it, one of `nodes` CPU nodes: worker `i` on the `first + i`-th, or
/// `None` where they stay unpinned (see the module documentation).
pub(crate) fn cores_for(
    first: usize,
    threads: usize,
    nodes: usize,
) -> Option<Vec<core_affinity::CoreId>> {
    if std::env::var(PIN_ENV).is_ok_and(|v| v.trim() == "0") {
        return None;
    }
    let allowed = core_affinity::get_core_ids()?;
    let range = node_range(allowed.len(), first, threads, nodes)?;
    Some(allowed[range].to_vec())
}

/// The positions among `allowed` CPUs of the `threads` workers that follow `first`, if the
/// node has two or more or shares the CPUs with other nodes, and they fit.
fn node_range(allowed: usize, first: usize, threads: usize, nodes: usize) -> Option<Range<usize>> {
    let end = first.checked_add(threads)?;
    ((threads >= 2 || nodes >= 2) && end <= allowed).then_some(first..end)
}

/// Pins the calling thread to `cores[i]`, if there is one (a pool's start handler).
pub(crate) fn pin_worker(cores: Option<&[core_affinity::CoreId]>, i: usize) {
    if let Some(&core) = cores.and_then(|c| c.get(i)) {
        // A refused pin (a CPU taken away since) leaves the worker where the system put it.
        let _ = core_affinity::set_for_current(core);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_take_consecutive_ranges_that_fit() {
        assert_eq!(node_range(8, 0, 8, 1), Some(0..8));
        assert_eq!(node_range(8, 4, 4, 2), Some(4..8));
        assert_eq!(node_range(8, 8, 4, 3), None, "past the CPUs");
        assert_eq!(node_range(2, 0, 3, 1), None, "more threads than CPUs");
        assert_eq!(node_range(8, 0, 1, 1), None, "one thread alone: unpinned");
        assert_eq!(node_range(8, 3, 1, 8), Some(3..4), "one of several: pinned");
        // `cpu:1x2,cpu:2x1` on 4 CPUs: the one-thread nodes follow the two-thread node.
        assert_eq!(node_range(4, 2, 1, 3), Some(2..3));
        assert_eq!(node_range(4, 3, 1, 3), Some(3..4));
        assert_eq!(node_range(2, 2, 1, 3), None, "past the CPUs");
        assert_eq!(node_range(8, usize::MAX, 2, 2), None, "overflow");
    }

    #[test]
    fn a_pinned_pool_runs_its_workers_on_their_cpus() {
        let Some(cores) = cores_for(0, 2, 1) else {
            return; // one CPU, or pinning off: nothing to check
        };
        assert_eq!(cores.len(), 2);
        assert_ne!(cores[0].id, cores[1].id);
        let pinned = cores.clone();
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(2)
            .start_handler(move |i| pin_worker(Some(&pinned), i))
            .build()
            .unwrap();
        let allowed = pool.broadcast(|_| core_affinity::get_core_ids().unwrap_or_default());
        for (i, set) in allowed.iter().enumerate() {
            assert_eq!(set.len(), 1, "worker {i} runs on {set:?}");
            assert_eq!(set[0].id, cores[i].id);
        }
    }
}
