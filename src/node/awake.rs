//! Keeping a CPU node's workers awake through a run of ops.
//!
//! Between two parallel ops a rayon worker that finds no work soon sleeps on a futex, and
//! the next op pays a wake-up (tens of microseconds on a virtual machine, per op). While
//! [`run_awake`] runs a sequence of ops, every other worker of the pool instead polls for
//! work: it runs whatever the ops split off as soon as it appears, and yields the core to
//! the operating system between polls, so another runnable thread is not starved.

use std::cell::Cell;
use std::sync::atomic::{AtomicBool, Ordering};

thread_local! {
    /// Whether a body of [`run_awake`] is running on this thread (possibly suspended below
    /// the job this thread runs now, while it waits for work it split off).
    static IN_BODY: Cell<bool> = const { Cell::new(false) };
}

/// Marks this thread as running a body until dropped (then restores the previous mark).
struct BodyMark(bool);

impl BodyMark {
    fn set() -> BodyMark {
        BodyMark(IN_BODY.replace(true))
    }
}

impl Drop for BodyMark {
    fn drop(&mut self) {
        IN_BODY.set(self.0);
    }
}

/// Sets the flag when dropped, so the pollers stop even if the body panics.
struct Finished<'a>(&'a AtomicBool);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Runs `body` on a worker of `pool` while the pool's other workers poll for its work.
pub(crate) fn run_awake(pool: &rayon::ThreadPool, body: &mut (dyn FnMut() + Send)) {
    pool.install(|| {
        let threads = rayon::current_num_threads();
        if threads < 2 {
            return body();
        }
        let done = AtomicBool::new(false);
        rayon::scope(|s| {
            let done = &done;
            for _ in 1..threads {
                s.spawn(move |_| poll_until(done));
            }
            let _finished = Finished(done);
            let _mark = BodyMark::set();
            body();
        });
    })
}

/// Runs the pool's pending jobs until `done`; returns at once on a thread where a body runs
/// (its own, or another's when two batches share the pool): a poller there would wait on
/// work that cannot go on until the poller returns — the body below it on the same stack.
fn poll_until(done: &AtomicBool) {
    if IN_BODY.get() {
        return;
    }
    while !done.load(Ordering::Acquire) {
        if rayon::yield_now() != Some(rayon::Yield::Executed) {
            std::thread::yield_now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rayon::prelude::*;
    use std::collections::HashSet;
    use std::sync::Mutex;

    fn pool(threads: usize) -> rayon::ThreadPool {
        rayon::ThreadPoolBuilder::new()
            .num_threads(threads)
            .build()
            .unwrap()
    }

    #[test]
    fn runs_the_body_once_with_its_parallel_work() {
        for threads in [1, 2, 3] {
            let pool = pool(threads);
            let mut runs = 0;
            let mut sum = 0u64;
            let seen = Mutex::new(HashSet::new());
            run_awake(&pool, &mut || {
                runs += 1;
                for round in 0..20u64 {
                    sum += (0..10_000u64)
                        .into_par_iter()
                        .map(|i| {
                            seen.lock().unwrap().insert(rayon::current_thread_index());
                            i * 7 + round
                        })
                        .sum::<u64>();
                }
            });
            assert_eq!(runs, 1);
            let expected: u64 = (0..20u64)
                .map(|r| 7 * 9_999 * 10_000 / 2 + r * 10_000)
                .sum();
            assert_eq!(sum, expected, "{threads} threads");
            let seen = seen.into_inner().unwrap();
            assert!(seen.iter().all(|t| t.is_some_and(|t| t < threads)));
        }
    }

    #[test]
    fn concurrent_batches_on_one_pool_finish() {
        // Two batches at once on one pool: each one's poller may be stolen by the thread of
        // the other's body; neither may then wait for the other.
        let pool = std::sync::Arc::new(pool(2));
        let (sender, receiver) = std::sync::mpsc::channel();
        for batch in 0..4u64 {
            let (pool, sender) = (pool.clone(), sender.clone());
            std::thread::spawn(move || {
                let mut sum = 0u64;
                run_awake(&pool, &mut || {
                    for round in 0..1000u64 {
                        sum += (0..50_000u64)
                            .into_par_iter()
                            .map(|i| i ^ (round + batch))
                            .sum::<u64>();
                    }
                });
                sender.send((batch, sum)).unwrap();
            });
        }
        for _ in 0..4 {
            let (batch, sum) = receiver
                .recv_timeout(std::time::Duration::from_secs(60))
                .expect("a batch did not finish: the batches wait for each other");
            let expected: u64 = (0..1000u64)
                .map(|round| (0..50_000u64).map(|i| i ^ (round + batch)).sum::<u64>())
                .sum();
            assert_eq!(sum, expected);
        }
    }

    #[test]
    fn a_panicking_body_stops_the_pollers() {
        let pool = pool(3);
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_awake(&pool, &mut || panic!("op failed"));
        }));
        assert!(outcome.is_err());
        // The pool is free again: a later run completes.
        let mut ran = false;
        run_awake(&pool, &mut || ran = true);
        assert!(ran);
    }
}
