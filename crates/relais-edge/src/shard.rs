//! Per-thread shards for state written on every request (statistics minutes, access-log lines
//! waiting for the writer): each worker thread mostly takes its own lock, so requests on
//! different cores never wait for each other nor bounce a cache line between them. Collectors
//! visit every shard.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};

/// Aligned so that neighbouring shards never share a cache line (128 bytes covers the adjacent
/// line prefetcher).
#[repr(align(128))]
#[derive(Default)]
struct Padded<T>(T);

/// How many shards: twice the threads this process may run on (threads are numbered in the
/// order they first record, so a few non-worker threads do not make two workers share).
pub fn count() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| {
        let n = std::thread::available_parallelism().map_or(4, |n| n.get());
        (n * 2).next_power_of_two().min(64)
    })
}

/// This thread's shard, below [`count`].
pub fn index() -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    // A plain cell, not a lazily initialised value: read on every recorded request.
    thread_local! {
        static MINE: Cell<usize> = const { Cell::new(usize::MAX) };
    }
    MINE.with(|m| {
        let mut i = m.get();
        if i == usize::MAX {
            i = NEXT.fetch_add(1, Ordering::Relaxed) & (count() - 1);
            m.set(i);
        }
        i
    })
}

/// One `T` per shard, each behind its own lock.
pub struct Sharded<T> {
    shards: Box<[Padded<Mutex<T>>]>,
}

impl<T: Default> Default for Sharded<T> {
    fn default() -> Self {
        Self {
            shards: (0..count()).map(|_| Padded::default()).collect(),
        }
    }
}

impl<T> std::fmt::Debug for Sharded<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sharded")
            .field("shards", &self.shards.len())
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // The data is plain values with no invariant a panic could break half-way.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl<T> Sharded<T> {
    /// The calling thread's shard.
    pub fn mine(&self) -> MutexGuard<'_, T> {
        // The count is a power of two: a mask, not a division.
        lock(&self.shards[index() & (self.shards.len() - 1)].0)
    }

    /// Every shard in turn, each locked only while `f` runs on it.
    pub fn each(&self, mut f: impl FnMut(&mut T)) {
        for s in self.shards.iter() {
            f(&mut lock(&s.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_thread_records_into_its_own_shard_and_collectors_see_them_all() {
        let s: std::sync::Arc<Sharded<Vec<usize>>> = Default::default();
        let threads: Vec<_> = (0..count())
            .map(|_| {
                let s = s.clone();
                std::thread::spawn(move || {
                    let me = index();
                    for _ in 0..100 {
                        assert_eq!(index(), me, "a thread keeps its shard");
                        s.mine().push(me);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().expect("thread");
        }
        let (mut total, mut at) = (0, 0);
        s.each(|v| {
            total += v.len();
            // A shard holds only the records of the threads that map to it.
            assert!(v.iter().all(|&i| i == at), "shard {at}: {v:?}");
            at += 1;
        });
        assert_eq!(total, 100 * count());
        assert_eq!(at, count());
    }
}
