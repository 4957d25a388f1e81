//! A persistent thread pool for the forward pass.
//!
//! A forward pass runs hundreds of short parallel sections per token, so
//! threads are started once and woken per section. Workers spin briefly before
//! sleeping, which keeps the wake-up latency of back-to-back sections low.
//!
//! [`ThreadPool::for_chunks`] hands work out in chunks that threads claim as
//! they come: the caller takes chunks too, and the section ends when every
//! chunk is done, not when every thread has checked in. So a worker that the
//! OS has descheduled (a busy machine, the server's own threads) delays only
//! the chunk it holds, not every section; the others take its share. The
//! caller spins briefly, then sleeps until the last chunk is done.
//!
//! The pool only splits *independent outputs* across threads (rows of a
//! matmul, heads of attention). A reduction is never split, so the thread
//! count cannot change any result (see the batch-invariance design rule).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

/// A job: called once per thread with the thread's index.
type Job<'a> = dyn Fn(usize) + Sync + 'a;

/// A chunked job: called with the thread's index and a range of items.
type ChunkJob<'a> = dyn Fn(usize, std::ops::Range<usize>) + Sync + 'a;

/// How a chunked job is cut: `n` items in `n_chunks` chunks of `chunk`,
/// `per` chunks to each thread's region; `tag` names the job.
#[derive(Clone, Copy)]
struct ChunkShape {
    n: usize,
    chunk: usize,
    n_chunks: usize,
    per: usize,
    tag: u32,
}

impl ChunkShape {
    /// The items of chunk `c`.
    fn items(&self, c: usize) -> std::ops::Range<usize> {
        c * self.chunk..((c + 1) * self.chunk).min(self.n)
    }

    /// The chunks of thread `t`'s region.
    fn region(&self, t: usize) -> std::ops::Range<usize> {
        (t * self.per).min(self.n_chunks)..((t + 1) * self.per).min(self.n_chunks)
    }
}

struct Shared {
    /// Bumped for every new job; workers watch it.
    epoch: AtomicU64,
    /// Workers that finished the current per-thread job.
    done: AtomicUsize,
    /// The current job, lifetime-erased. Only valid while `run` or
    /// `for_chunks` is executing.
    job: Mutex<Option<JobPtr>>,
    wake: Condvar,
    shutdown: AtomicBool,
    /// For each thread, the chunks of its region of the current chunked job
    /// that nobody has claimed: `tag << 32 | front << 16 | back`. The owner
    /// claims from the front (so that it streams its region in order); a
    /// thread that has run out steals from the back of another region. The
    /// tag is the job's epoch: a worker holding an older job can never claim
    /// a newer job's chunk.
    claims: Vec<AtomicU64>,
    /// Chunks of the current chunked job that are done.
    finished: AtomicUsize,
    /// The thread waiting in `run` or `for_chunks`, woken by the last
    /// worker or chunk.
    caller: Mutex<Option<std::thread::Thread>>,
    /// Parallel sections started, for [`ThreadPool::sections`].
    sections: AtomicU64,
}

#[derive(Clone, Copy)]
enum JobPtr {
    /// `run`: every thread once.
    PerThread(*const Job<'static>),
    /// `for_chunks`: `n_chunks` chunks of `chunk` items out of `n`.
    Chunks { f: *const ChunkJob<'static>, job: ChunkShape },
}
// SAFETY: the pointees are `Sync` and outlive every use (see `ThreadPool::run`
// and `ThreadPool::for_chunks`).
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

/// How long the caller spins for chunks that other threads hold before it
/// sleeps: long enough to catch them in a forward pass (they end within
/// microseconds of each other), short enough that a descheduled peer's wait
/// gives the core back.
const SPIN: std::time::Duration = std::time::Duration::from_micros(250);

/// How long an idle worker spins for the next section before it sleeps.
/// Shorter than [`SPIN`]: on shared cores the caller that would start that
/// section is often descheduled, and a sleeping worker lets the scheduler run
/// it there. Measured against 250 µs beside two busy loops (BENCHMARKS.md):
/// SmolLM2 decode 101 → 124 t/s, prompts within noise.
const WORKER_SPIN: std::time::Duration = std::time::Duration::from_micros(30);

/// Spins until `ready()` or until `limit` has passed; returns `ready()`.
#[inline]
fn spin_until(limit: std::time::Duration, ready: impl Fn() -> bool) -> bool {
    let start = std::time::Instant::now();
    loop {
        // Check the clock only every 64 rounds: it costs more than a round.
        for _ in 0..64 {
            if ready() {
                return true;
            }
            std::hint::spin_loop();
        }
        if start.elapsed() >= limit {
            return ready();
        }
    }
}

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
            claims: (0..n_threads).map(|_| AtomicU64::new(0)).collect(),
            finished: AtomicUsize::new(0),
            caller: Mutex::new(None),
            sections: AtomicU64::new(0),
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

    /// Parallel sections started so far: calls of [`run`](Self::run) and
    /// [`for_chunks`](Self::for_chunks) that woke the workers and waited for
    /// them (one-thread and one-chunk calls run inline and are not counted).
    /// Each is a synchronization, so this divided by tokens is the forward
    /// pass's barrier count per token.
    ///
    /// ```
    /// use colloquy_engine::pool::ThreadPool;
    ///
    /// let pool = ThreadPool::new(2);
    /// pool.for_chunks(100, 10, &|_, _| {});
    /// pool.for_chunks(5, 10, &|_, _| {}); // one chunk: runs inline
    /// assert_eq!(pool.sections(), 1);
    /// ```
    pub fn sections(&self) -> u64 {
        self.shared.sections.load(Ordering::Relaxed)
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
            *self.shared.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
            *slot = Some(JobPtr::PerThread(ptr));
            self.shared.done.store(0, Ordering::Relaxed);
            self.shared.epoch.fetch_add(1, Ordering::Release);
        }
        self.shared.sections.fetch_add(1, Ordering::Relaxed);
        self.shared.wake.notify_all();
        // A panic in our share must not return while workers still use `job`.
        let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| job(0)));
        // Spin briefly, then sleep until the last worker wakes this thread.
        let workers = self.n_threads - 1;
        let all_done = || self.shared.done.load(Ordering::Acquire) >= workers;
        if !spin_until(SPIN, all_done) {
            while !all_done() {
                std::thread::park_timeout(std::time::Duration::from_millis(1));
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

    /// Runs `f(thread, range)` over `0..n` in chunks of `chunk` items (the
    /// last may be shorter) that the threads claim as they come, the caller
    /// included; returns when every chunk is done. `thread` is the index of
    /// the thread running the chunk (for per-thread scratch). Which thread runs
    /// which chunk varies; the chunks themselves are a pure function of `n`
    /// and `chunk`.
    ///
    /// ```
    /// use colloquy_engine::pool::ThreadPool;
    /// use std::sync::atomic::{AtomicUsize, Ordering};
    ///
    /// let pool = ThreadPool::new(2);
    /// let sum = AtomicUsize::new(0);
    /// pool.for_chunks(1000, 64, &|_thread, range| {
    ///     sum.fetch_add(range.sum::<usize>(), Ordering::Relaxed);
    /// });
    /// assert_eq!(sum.load(Ordering::Relaxed), 999 * 1000 / 2);
    /// ```
    pub fn for_chunks(&self, n: usize, chunk: usize, f: &(dyn Fn(usize, std::ops::Range<usize>) + Sync)) {
        let chunk = chunk.max(1);
        let n_chunks = n.div_ceil(chunk);
        if n_chunks == 0 {
            return;
        }
        if self.n_threads == 1 || n_chunks == 1 {
            for c in 0..n_chunks {
                f(0, c * chunk..((c + 1) * chunk).min(n));
            }
            return;
        }
        let _guard = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let shared = &*self.shared;
        // SAFETY: as in `run`: the job is used only while this call runs. A
        // worker calls it only after claiming a chunk of this job (the claim
        // words carry this job's tag), and this call returns only once every
        // chunk is done.
        let ptr: *const ChunkJob<'static> = unsafe { std::mem::transmute(f as *const ChunkJob<'_>) };
        let per = n_chunks.div_ceil(self.n_threads).min(0xFFFF);
        let job = {
            let mut slot = shared.job.lock().unwrap_or_else(|e| e.into_inner());
            *shared.caller.lock().unwrap_or_else(|e| e.into_inner()) = Some(std::thread::current());
            let epoch = shared.epoch.load(Ordering::Relaxed) + 1;
            let job = ChunkShape { n, chunk, n_chunks, per, tag: epoch as u32 };
            shared.finished.store(0, Ordering::Relaxed);
            for (t, word) in shared.claims.iter().enumerate() {
                word.store(u64::from(job.tag) << 32 | job.region(t).len() as u64, Ordering::Release);
            }
            *slot = Some(JobPtr::Chunks { f: ptr, job });
            shared.epoch.store(epoch, Ordering::Release);
            job
        };
        shared.sections.fetch_add(1, Ordering::Relaxed);
        shared.wake.notify_all();
        let result =
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run_chunks(shared, ptr, 0, job)));
        // Wait for chunks other threads hold: spin briefly, then sleep (the
        // thread that finishes the last chunk wakes this one).
        let all_done = || shared.finished.load(Ordering::Acquire) >= n_chunks;
        if !spin_until(SPIN, all_done) {
            while !all_done() {
                std::thread::park_timeout(std::time::Duration::from_millis(1));
            }
        }
        *shared.job.lock().unwrap_or_else(|e| e.into_inner()) = None;
        if let Err(panic) = result {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Claims a chunk of thread `owner`'s region of the job tagged `tag`: from
/// the front for its owner, from the back for anyone else.
fn claim(shared: &Shared, owner: usize, thread: usize, job: &ChunkShape) -> Option<usize> {
    let word = &shared.claims[owner];
    let mut w = word.load(Ordering::Acquire);
    loop {
        let (tag, front, back) = ((w >> 32) as u32, (w >> 16 & 0xFFFF) as usize, (w & 0xFFFF) as usize);
        if tag != job.tag || front >= back {
            return None;
        }
        let (next, c) = if owner == thread { (w + (1 << 16), front) } else { (w - 1, back - 1) };
        match word.compare_exchange_weak(w, next, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return Some(job.region(owner).start + c),
            Err(now) => w = now,
        }
    }
}

/// Runs chunks of the job until none is left: this thread's region first,
/// front to back, then what is left of the others', from their backs.
fn run_chunks(shared: &Shared, f: *const ChunkJob<'static>, thread: usize, job: ChunkShape) {
    let n_threads = shared.claims.len();
    for k in 0..n_threads {
        let owner = (thread + k) % n_threads;
        while let Some(c) = claim(shared, owner, thread, &job) {
            // SAFETY: this thread claimed chunk `c` of the job tagged `tag`, which
            // is not done yet, so `for_chunks` has not returned and `f` is alive.
            let f = unsafe { &*f };
            // A panic must still count the chunk as done, or the caller would
            // wait forever; the caller's own panic is re-raised by `for_chunks`.
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(thread, job.items(c))));
            if shared.finished.fetch_add(1, Ordering::AcqRel) + 1 == job.n_chunks {
                if let Some(caller) = shared.caller.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                    caller.unpark();
                }
            }
            if let Err(panic) = r {
                if thread == 0 {
                    std::panic::resume_unwind(panic);
                }
            }
        }
    }
}

/// A chunk size for [`ThreadPool::for_chunks`] over `n` items: about four
/// chunks per thread, so that a slow thread's share is small and others can
/// take the rest.
pub fn chunk_size(n: usize, threads: usize) -> usize {
    n.div_ceil(threads.max(1) * 4).max(1)
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
        // Spin for a short while (the next section usually starts within
        // microseconds), then sleep on the condvar.
        spin_until(WORKER_SPIN, || shared.epoch.load(Ordering::Acquire) != seen);
        let mut epoch;
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
        match job {
            JobPtr::PerThread(ptr) => {
                // SAFETY: `run` keeps the job alive until `done` reaches the worker count.
                let f = unsafe { &*ptr };
                // A panicking job must still count as done, or `run` would wait forever.
                let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(index)));
                if shared.done.fetch_add(1, Ordering::AcqRel) + 2 == shared.claims.len() {
                    // The last worker: wake `run` if it went to sleep.
                    if let Some(caller) = shared.caller.lock().unwrap_or_else(|e| e.into_inner()).as_ref() {
                        caller.unpark();
                    }
                }
            }
            // `run_chunks` touches the job only after claiming one of its chunks.
            JobPtr::Chunks { f, job } => run_chunks(shared, f, index, job),
        }
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
    fn chunks_cover_every_item_once_across_interleaved_jobs() {
        let pool = ThreadPool::new(3);
        let hits: Vec<AtomicUsize> = (0..257).map(|_| AtomicUsize::new(0)).collect();
        let per_thread = AtomicUsize::new(0);
        for round in 0..300 {
            let n = round % hits.len() + 1;
            pool.for_chunks(n, chunk_size(n, 3), &|thread, range| {
                assert!(thread < 3);
                for i in range {
                    hits[i].fetch_add(1, Ordering::Relaxed);
                }
            });
            // Per-thread jobs in between: stale chunk workers must not disturb them.
            pool.run(&|_| {
                per_thread.fetch_add(1, Ordering::Relaxed);
            });
        }
        let expected: Vec<usize> =
            (0..hits.len()).map(|i| (0..300).filter(|r| r % 257 >= i).count()).collect();
        let got: Vec<usize> = hits.iter().map(|h| h.load(Ordering::Relaxed)).collect();
        assert_eq!(got, expected);
        assert_eq!(per_thread.load(Ordering::Relaxed), 300 * 3);
    }

    /// A thread stuck in its chunk (as a descheduled one is) holds back only
    /// that chunk: the others take every other chunk, which a static split
    /// would have left to it (this test would then never finish).
    #[test]
    fn a_stuck_thread_holds_only_its_own_chunk() {
        let pool = ThreadPool::new(2);
        for _ in 0..20 {
            let done = AtomicUsize::new(0);
            let n_chunks = 16;
            pool.for_chunks(n_chunks, 1, &|thread, _| {
                if thread != 0 {
                    // Stay in this chunk until every other chunk is done.
                    while done.load(Ordering::Acquire) < n_chunks - 1 {
                        std::hint::spin_loop();
                    }
                }
                done.fetch_add(1, Ordering::AcqRel);
            });
            assert_eq!(done.load(Ordering::Relaxed), n_chunks);
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
