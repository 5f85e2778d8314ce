//! Work items that every thread of the current pool claims one at a time.
//!
//! Rayon splits a parallel loop in halves and a thread that steals a half owns all of it: if
//! that thread's core is taken away mid-loop (a busy host descheduling a vCPU) or runs slower,
//! the other thread finishes its half and waits. Here each thread takes the next unclaimed
//! item from a shared counter, so a stalled thread holds at most the item it is on and the
//! others take over everything not yet started, as onnxruntime's thread pool does.

use std::sync::atomic::{AtomicUsize, Ordering};

/// Runs `f(&mut state, i)` for every `i` in `0..items`, each exactly once, on the current
/// rayon pool's threads; each thread makes its own `state` with `init` before its first item.
pub fn for_each_claimed<S>(
    items: usize,
    init: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize) + Sync,
) {
    let next = AtomicUsize::new(0);
    let work = || {
        let mut state: Option<S> = None;
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            if i >= items {
                break;
            }
            f(state.get_or_insert_with(&init), i);
        }
    };
    let helpers = rayon::current_num_threads().min(items).saturating_sub(1);
    if helpers == 0 {
        return work();
    }
    rayon::scope(|s| {
        for _ in 0..helpers {
            s.spawn(|_| work());
        }
        work();
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn every_item_runs_once_with_one_state_per_thread() {
        for threads in [1, 2, 3] {
            let pool = rayon::ThreadPoolBuilder::new()
                .num_threads(threads)
                .build()
                .unwrap();
            for items in [0, 1, 7, 33] {
                let seen = Mutex::new(vec![0usize; items]);
                let states = AtomicUsize::new(0);
                pool.install(|| {
                    for_each_claimed(
                        items,
                        || states.fetch_add(1, Ordering::Relaxed),
                        |_, i| seen.lock().unwrap()[i] += 1,
                    );
                });
                assert!(seen.into_inner().unwrap().iter().all(|&n| n == 1));
                assert!(states.into_inner() <= threads.min(items.max(1)));
            }
        }
    }
}
