//! Keeping a CPU node's workers awake through a run of ops, and a little past it.
//!
//! Between two parallel ops a rayon worker that finds no work soon sleeps on a futex, and
//! the next op pays a wake-up (tens of microseconds on a virtual machine, per op). While
//! [`run_awake`] runs a sequence of ops, every other worker of the pool instead polls for
//! work: it runs whatever the ops split off as soon as it appears, and yields the core to
//! the operating system between polls, so another runnable thread is not starved.
//!
//! The pollers are detached jobs of the pool that keep polling for [`LINGER`] after the last
//! batch ends, so that a batch that follows at once (the next request of a stream, the next
//! run of a benchmark) finds the workers awake instead of waking them during its first op:
//! measured on ResNet-50 run back to back, 31.4 → 29.8 ms by median, its first step (the 7×7
//! stem) 1.13 → 0.99 ms in the profile (0.77–0.87 alone).
//!
//! [`keep_awake`] does the same for a pool whose batch runs elsewhere: a member of a split
//! model run polls for the parts the lead hands it while the lead runs the other ops.

use std::cell::Cell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// How long the pollers keep polling after the last batch ends: at most this much of each
/// other worker's time is spent waiting for a batch that does not come.
const LINGER: Duration = Duration::from_millis(3);

thread_local! {
    /// Whether a body of [`run_awake`] is running on this thread (possibly suspended below
    /// the job this thread runs now, while it waits for work it split off).
    static IN_BODY: Cell<bool> = const { Cell::new(false) };
    /// Whether a poller is running on this thread (possibly suspended below a body it took
    /// from the pool's queue: it then polls for no one until that body returns).
    static POLLING: Cell<bool> = const { Cell::new(false) };
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

/// The batches and pollers of one pool.
#[derive(Debug)]
pub(crate) struct Awake {
    /// Batches running now.
    active: AtomicUsize,
    /// Pollers polling (or suspended below a body they took from the queue).
    pollers: AtomicUsize,
    /// When the last batch ended, in nanoseconds from `epoch`.
    ended: AtomicU64,
    epoch: Instant,
}

impl Default for Awake {
    fn default() -> Self {
        Awake {
            active: AtomicUsize::new(0),
            pollers: AtomicUsize::new(0),
            ended: AtomicU64::new(0),
            epoch: Instant::now(),
        }
    }
}

impl Awake {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether pollers should go on: a batch runs, or the last one ended less than
    /// [`LINGER`] ago.
    fn wanted(&self) -> bool {
        self.active.load(Ordering::Acquire) > 0
            || self
                .now()
                .saturating_sub(self.ended.load(Ordering::Acquire))
                < LINGER.as_nanos() as u64
    }
}

/// Ends a batch when dropped (even if the body panics): the pollers linger from then on.
struct Finished<'a>(&'a Awake);

impl Drop for Finished<'_> {
    fn drop(&mut self) {
        self.0.ended.store(self.0.now(), Ordering::Release);
        self.0.active.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Runs `body` on a worker of `pool` while the pool's other workers poll for its work.
pub(crate) fn run_awake(
    pool: &rayon::ThreadPool,
    awake: &Arc<Awake>,
    body: &mut (dyn FnMut() + Send),
) {
    pool.install(|| {
        let threads = rayon::current_num_threads();
        if threads < 2 {
            return body();
        }
        awake.active.fetch_add(1, Ordering::AcqRel);
        let finished = Finished(awake);
        // As many pollers as other workers. Those lingering from the last batch count, except
        // one suspended below this body (it took the body from the queue).
        let below = usize::from(POLLING.get());
        spawn_pollers(pool, awake, threads - 1 + below);
        {
            let _mark = BodyMark::set();
            body();
        }
        drop(finished);
        // This worker is free now: it lingers too, so that every worker polls until the next
        // batch (which one of them takes from the queue while the others take its work).
        spawn_pollers(pool, awake, threads);
    })
}

/// Runs `body` on the calling thread, which is not one of `pool`'s, while every worker of
/// `pool` polls for work: jobs handed to the pool meanwhile (a member's parts of a split op)
/// start at once instead of waking a sleeping worker (about 90 µs each on the 2-vCPU VM).
pub(crate) fn keep_awake(
    pool: &rayon::ThreadPool,
    awake: &Arc<Awake>,
    body: &mut (dyn FnMut() + Send),
) {
    awake.active.fetch_add(1, Ordering::AcqRel);
    let finished = Finished(awake);
    spawn_pollers(pool, awake, pool.current_num_threads());
    body();
    drop(finished);
}

/// Asks every worker of `pool` for a poller, unless `target` poll already: each lands on its
/// own worker (a broadcast), where it polls unless one polls there already or a body runs
/// below it.
fn spawn_pollers(pool: &rayon::ThreadPool, awake: &Arc<Awake>, target: usize) {
    if awake.pollers.load(Ordering::Acquire) < target {
        let awake = Arc::clone(awake);
        pool.spawn_broadcast(move |_| poll_while_wanted(&awake));
    }
}

/// Runs the pool's pending jobs while [`Awake::wanted`]; returns at once on a thread where a
/// body runs (its own, or another's when two batches share the pool): a poller there would
/// keep that body from going on until it returned — the body below it on the same stack.
/// A poller that has found no work for this long stops (the batch goes on, its next work
/// wakes the worker as without pollers): a batch whose body never returns — a split model
/// run waiting on a member that hung — must not keep the pool's cores spinning.
const IDLE_GIVE_UP: Duration = Duration::from_millis(200);

fn poll_while_wanted(awake: &Awake) {
    if IN_BODY.get() || POLLING.get() {
        return;
    }
    awake.pollers.fetch_add(1, Ordering::AcqRel);
    POLLING.set(true);
    let mut last_work = Instant::now();
    while awake.wanted() {
        if rayon::yield_now() == Some(rayon::Yield::Executed) {
            last_work = Instant::now();
        } else if last_work.elapsed() >= IDLE_GIVE_UP {
            break;
        } else {
            std::thread::yield_now();
        }
    }
    POLLING.set(false);
    awake.pollers.fetch_sub(1, Ordering::AcqRel);
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
            let awake = Arc::new(Awake::default());
            let mut runs = 0;
            let mut sum = 0u64;
            let seen = Mutex::new(HashSet::new());
            run_awake(&pool, &awake, &mut || {
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
        let awake = Arc::new(Awake::default());
        let (sender, receiver) = std::sync::mpsc::channel();
        for batch in 0..4u64 {
            let (pool, awake, sender) = (pool.clone(), awake.clone(), sender.clone());
            std::thread::spawn(move || {
                let mut sum = 0u64;
                run_awake(&pool, &awake, &mut || {
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
    fn pollers_linger_after_a_batch_and_then_stop() {
        let pool = pool(2);
        let awake = Arc::new(Awake::default());
        let mut sum = 0u64;
        run_awake(&pool, &awake, &mut || {
            sum = (0..100_000u64).into_par_iter().map(|i| i % 7).sum();
        });
        let returned = Instant::now();
        assert_eq!(sum, (0..100_000u64).map(|i| i % 7).sum::<u64>());
        // Both workers poll after the batch, until LINGER has passed...
        let mut alive = 0;
        while alive < 2 && returned.elapsed() < LINGER {
            alive = alive.max(awake.pollers.load(Ordering::Acquire));
        }
        assert!(
            alive == 2 || returned.elapsed() >= LINGER,
            "{alive} pollers lingering"
        );
        // ...and then they all stop.
        while awake.pollers.load(Ordering::Acquire) > 0 {
            assert!(
                returned.elapsed() < Duration::from_secs(10),
                "pollers still running long after the batch"
            );
            std::thread::sleep(Duration::from_millis(1));
        }
        assert!(returned.elapsed() >= LINGER.mul_f64(0.5) || alive < 2);
    }

    #[test]
    fn a_panicking_body_stops_the_pollers() {
        let pool = pool(3);
        let awake = Arc::new(Awake::default());
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            run_awake(&pool, &awake, &mut || panic!("op failed"));
        }));
        assert!(outcome.is_err());
        // The pool is free again: a later run completes.
        let mut ran = false;
        run_awake(&pool, &awake, &mut || ran = true);
        assert!(ran);
    }
}
