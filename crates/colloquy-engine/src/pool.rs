//! A persistent thread pool for the forward pass.
//!
//! A forward pass runs hundreds of short parallel sections per token, so
//! threads are started once and woken per section. Workers spin briefly before
//! sleeping, which keeps the wake-up latency of back-to-back sections low.
//!
//! The pool only splits *independent outputs* across threads (rows of a
//! matmul, heads of attention). A reduction is never split, so the thread
//! count cannot change any result (see the batch-invariance design rule).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A job: called once per thread with the thread's index.
type Job<'a> = dyn Fn(usize) + Sync + 'a;

struct Shared {
    /// Bumped for every new job; workers watch it.
    epoch: AtomicU64,
    /// Workers that finished the current job.
    done: AtomicUsize,
    /// The current job, lifetime-erased. Only valid while `run` is executing.
    job: Mutex<Option<JobPtr>>,
    wake: Condvar,
    shutdown: AtomicBool,
}

#[derive(Clone, Copy)]
struct JobPtr(*const Job<'static>);
// SAFETY: the pointee is `Sync` and outlives every use (see `ThreadPool::run`).
unsafe impl Send for JobPtr {}

/// A fixed set of worker threads that run one job at a time.
///
/// ```
/// use colloquy_engine::pool::ThreadPool;
/// use std::sync::atomic::{AtomicUsize, Ordering};
///
/// let pool = ThreadPool::new(2);
/// let calls = AtomicUsize::new(0);
/// pool.run(&|_thread| {
///     calls.fetch_add(1, Ordering::Relaxed);
/// });
/// assert_eq!(calls.load(Ordering::Relaxed), 2);
/// ```
pub struct ThreadPool {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    n_threads: usize,
    /// Serializes `run` calls from different threads.
    busy: Mutex<()>,
}

impl std::fmt::Debug for ThreadPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ThreadPool").field("n_threads", &self.n_threads).finish()
    }
}

const SPIN_ITERS: u32 = 20_000;

impl ThreadPool {
    /// Starts a pool of `n_threads` threads in all (the caller of [`run`](Self::run)
    /// counts as one, so `n_threads - 1` workers are spawned). `0` means one.
    pub fn new(n_threads: usize) -> ThreadPool {
        let n_threads = n_threads.max(1);
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            done: AtomicUsize::new(0),
            job: Mutex::new(None),
            wake: Condvar::new(),
            shutdown: AtomicBool::new(false),
        });
        let workers = (1..n_threads)
            .map(|index| {
                let shared = Arc::clone(&shared);
                std::thread::Builder::new()
                    .name(format!("colloquy-worker-{index}"))
                    .spawn(move || worker_loop(&shared, index))
                    .expect("failed to spawn a worker thread")
            })
            .collect();
        ThreadPool { shared, workers, n_threads, busy: Mutex::new(()) }
    }

    /// The number of threads, the caller included.
    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `job(i)` once for every thread index `i` in `0..n_threads`, and returns
    /// when all calls have finished. Index 0 runs on the calling thread.
    pub fn run(&self, job: &(dyn Fn(usize) + Sync)) {
        if self.n_threads == 1 {
            job(0);
            return;
        }
        let _guard = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: we erase the lifetime only for the duration of this call: we wait
        // below until every worker has finished with the job before returning, and
        // clear the slot, so no worker can touch it after `job` goes out of scope.
        let ptr: *const Job<'static> = unsafe { std::mem::transmute(job as *const Job<'_>) };
        {
            let mut slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            *slot = Some(JobPtr(ptr));
            self.shared.done.store(0, Ordering::Relaxed);
            self.shared.epoch.fetch_add(1, Ordering::Release);
        }
        self.shared.wake.notify_all();
        // A panic in our share must not return while workers still use `job`.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
        let workers = self.n_threads - 1;
        let mut spins = 0u32;
        while self.shared.done.load(Ordering::Acquire) < workers {
            if spins < SPIN_ITERS {
                spins += 1;
                std::hint::spin_loop();
            } else {
                std::thread::yield_now();
            }
        }
        *self.shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }

    /// Splits `0..n` into one contiguous range per thread and runs `f(range)` on each.
    /// Ranges are a pure function of `n` and the thread count.
    pub fn for_ranges(&self, n: usize, f: &(dyn Fn(std::ops::Range<usize>) + Sync)) {
        let t = self.n_threads;
        self.run(&|i| {
            let r = split_range(n, t, i);
            if !r.is_empty() {
                f(r)
            }
        });
    }
}

/// The `i`-th of `parts` near-equal contiguous pieces of `0..n`.
pub fn split_range(n: usize, parts: usize, i: usize) -> std::ops::Range<usize> {
    let base = n / parts;
    let extra = n % parts;
    let start = i * base + i.min(extra);
    let len = base + usize::from(i < extra);
    start..start + len
}

fn worker_loop(shared: &Shared, index: usize) {
    let mut seen = 0u64;
    loop {
        // Spin for a short while: the next section usually starts within microseconds.
        let mut spins = 0u32;
        let mut epoch = shared.epoch.load(Ordering::Acquire);
        while epoch == seen && spins < SPIN_ITERS {
            std::hint::spin_loop();
            spins += 1;
            epoch = shared.epoch.load(Ordering::Acquire);
        }
        let job = {
            let mut slot = shared.job.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if shared.shutdown.load(Ordering::Acquire) {
                    return;
                }
                epoch = shared.epoch.load(Ordering::Acquire);
                if epoch != seen {
                    if let Some(job) = *slot {
                        break job;
                    }
                }
                slot = shared.wake.wait(slot).unwrap_or_else(|e| e.into_inner());
            }
        };
        seen = epoch;
        // SAFETY: `run` keeps the job alive until `done` reaches the worker count.
        let f = unsafe { &*job.0 };
        // A panicking job must still count as done, or `run` would wait forever.
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index)));
        shared.done.fetch_add(1, Ordering::Release);
    }
}

impl Drop for ThreadPool {
    fn drop(&mut self) {
        {
            let _slot = self.shared.job.lock().unwrap_or_else(|e| e.into_inner());
            self.shared.shutdown.store(true, Ordering::Release);
        }
        self.shared.wake.notify_all();
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}

/// A shared view of a mutable slice whose parts are written by different threads.
///
/// Each thread must write a disjoint set of indices; the pool's ranges guarantee
/// that for the kernels that use this.
pub struct DisjointSlice<'a, T = f32> {
    ptr: *mut T,
    len: usize,
    _life: std::marker::PhantomData<&'a mut [T]>,
}

impl<T> Clone for DisjointSlice<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}
impl<T> Copy for DisjointSlice<'_, T> {}

// SAFETY: callers only write disjoint index ranges from different threads,
// and the element types used (f32, u8) are plain data.
unsafe impl<T: Send> Send for DisjointSlice<'_, T> {}
unsafe impl<T: Send> Sync for DisjointSlice<'_, T> {}

impl<'a, T> DisjointSlice<'a, T> {
    /// Wraps a slice for disjoint parallel writes.
    pub fn new(s: &'a mut [T]) -> Self {
        DisjointSlice { ptr: s.as_mut_ptr(), len: s.len(), _life: std::marker::PhantomData }
    }

    /// A mutable sub-slice.
    ///
    /// # Safety
    /// No other thread may access `start..start + len` while the returned slice lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "DisjointSlice range out of bounds");
        std::slice::from_raw_parts_mut(self.ptr.add(start), len)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_cover_everything_once() {
        for n in 0..50 {
            for parts in 1..5 {
                let mut covered = vec![0; n];
                for i in 0..parts {
                    for j in split_range(n, parts, i) {
                        covered[j] += 1;
                    }
                }
                assert!(covered.iter().all(|&c| c == 1), "n={n} parts={parts}");
            }
        }
    }

    #[test]
    fn many_runs_each_call_every_thread() {
        let pool = ThreadPool::new(3);
        let total = AtomicUsize::new(0);
        for _ in 0..1000 {
            pool.run(&|i| {
                total.fetch_add(i + 1, Ordering::Relaxed);
            });
        }
        assert_eq!(total.load(Ordering::Relaxed), 1000 * 6);
    }
}
