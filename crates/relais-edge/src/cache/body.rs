//! Response bodies in the cache: whole in memory, in a file, or still arriving from the origin.
//!
//! A body that is still arriving lives in a [`Growing`] buffer that any number of readers follow
//! while one writer (the fill task) appends. Small bodies stay in memory; a body that is known
//! or found to be larger than the memory-object limit spills to a file and from then on is read
//! back from that file, so a 2 GB download never sits whole in memory.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::{Bytes, BytesMut};
use futures_util::stream::{self, BoxStream, StreamExt};
use tokio::sync::watch;

/// Size of the blocks read from files.
const READ_BLOCK: u64 = 1024 * 1024;

/// Where a complete or growing body can be read from.
#[derive(Clone, Debug)]
pub enum BodySource {
    Mem(Bytes),
    File { file: Arc<File>, len: u64 },
    Growing(Arc<Growing>),
}

impl BodySource {
    /// Length if known now.
    #[allow(clippy::len_without_is_empty)]
    pub fn len(&self) -> Option<u64> {
        match self {
            BodySource::Mem(b) => Some(b.len() as u64),
            BodySource::File { len, .. } => Some(*len),
            BodySource::Growing(g) => g.total_len(),
        }
    }

    /// Streams bytes `[start, end)` (`end = None`: to the end of the body).
    pub fn stream(&self, start: u64, end: Option<u64>) -> BoxStream<'static, io::Result<Bytes>> {
        match self {
            BodySource::Mem(b) => {
                let len = b.len() as u64;
                let end = end.unwrap_or(len).min(len);
                let start = start.min(end);
                let chunk = b.slice(start as usize..end as usize);
                if chunk.is_empty() {
                    stream::empty().boxed()
                } else {
                    stream::once(async move { Ok(chunk) }).boxed()
                }
            }
            BodySource::File { file, len } => {
                let end = end.unwrap_or(*len).min(*len);
                file_stream(file.clone(), start, end)
            }
            BodySource::Growing(g) => g.clone().reader(start, end),
        }
    }
}

fn file_stream(file: Arc<File>, start: u64, end: u64) -> BoxStream<'static, io::Result<Bytes>> {
    stream::try_unfold(start, move |pos| {
        let file = file.clone();
        async move {
            if pos >= end {
                return Ok(None);
            }
            let want = (end - pos).min(READ_BLOCK);
            let buf = read_at(file, pos, want).await?;
            if buf.is_empty() {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "cached body file is shorter than recorded",
                ));
            }
            let n = buf.len() as u64;
            Ok(Some((buf, pos + n)))
        }
    })
    .boxed()
}

async fn read_at(file: Arc<File>, pos: u64, len: u64) -> io::Result<Bytes> {
    tokio::task::spawn_blocking(move || {
        let mut buf = BytesMut::zeroed(len as usize);
        let mut filled = 0usize;
        while filled < buf.len() {
            let n = file.read_at(&mut buf[filled..], pos + filled as u64)?;
            if n == 0 {
                break;
            }
            filled += n;
        }
        buf.truncate(filled);
        Ok(buf.freeze())
    })
    .await
    .map_err(io::Error::other)?
}

#[derive(Debug)]
struct GrowState {
    /// Chunks kept in memory with their offsets, while the body has not spilled.
    chunks: Vec<(u64, Bytes)>,
    file: Option<(Arc<File>, PathBuf)>,
    written: u64,
    done: Option<Result<(), String>>,
}

/// A body being filled by one writer and read by many.
#[derive(Debug)]
pub struct Growing {
    state: Mutex<GrowState>,
    progress: watch::Sender<u64>,
    expected: Option<u64>,
    max_mem: u64,
    spill_dir: PathBuf,
}

/// What a completed fill left behind.
#[derive(Debug)]
pub enum Filled {
    Mem(Bytes),
    File {
        file: Arc<File>,
        path: PathBuf,
        len: u64,
    },
}

impl Growing {
    /// `expected` is the Content-Length if the origin sent one.
    pub fn new(expected: Option<u64>, max_mem: u64, spill_dir: &Path) -> io::Result<Arc<Self>> {
        let g = Arc::new(Self {
            state: Mutex::new(GrowState {
                chunks: Vec::new(),
                file: None,
                written: 0,
                done: None,
            }),
            progress: watch::channel(0).0,
            expected,
            max_mem,
            spill_dir: spill_dir.to_owned(),
        });
        if expected.is_some_and(|n| n > max_mem) {
            let mut st = g.lock();
            st.file = Some(g.open_spill()?);
        }
        Ok(g)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, GrowState> {
        // A poisoned lock means a panic elsewhere; the data itself is still consistent.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn open_spill(&self) -> io::Result<(Arc<File>, PathBuf)> {
        let path = self
            .spill_dir
            .join(format!("fill-{}-{}.tmp", std::process::id(), unique()));
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((Arc::new(file), path))
    }

    pub fn total_len(&self) -> Option<u64> {
        let st = self.lock();
        match st.done {
            Some(Ok(())) => Some(st.written),
            _ => self.expected,
        }
    }

    pub fn expected(&self) -> Option<u64> {
        self.expected
    }

    /// Appends a chunk. Writes to the spill file synchronously: it goes to the page cache.
    pub fn push(&self, chunk: Bytes) -> io::Result<()> {
        if chunk.is_empty() {
            return Ok(());
        }
        let written = {
            let mut st = self.lock();
            if st.file.is_none() && st.written + chunk.len() as u64 > self.max_mem {
                let (file, path) = self.open_spill()?;
                for (off, c) in &st.chunks {
                    file.write_all_at(c, *off)?;
                }
                st.chunks.clear();
                st.file = Some((file, path));
            }
            let off = st.written;
            match &st.file {
                Some((file, _)) => file.write_all_at(&chunk, off)?,
                None => st.chunks.push((off, chunk.clone())),
            }
            st.written += chunk.len() as u64;
            st.written
        };
        self.progress.send_replace(written);
        Ok(())
    }

    /// Returns the complete body in its final form. Readers do not see the end yet: call
    /// [`Growing::publish`] once the object is stored, so that a client that finished
    /// reading and asks again finds it in the cache.
    pub fn finish(&self) -> io::Result<Filled> {
        let st = self.lock();
        Ok(match &st.file {
            Some((file, path)) => Filled::File {
                file: file.clone(),
                path: path.clone(),
                len: st.written,
            },
            // Always one exact-size copy: chunks from the network are slices of larger read
            // buffers, and keeping them would pin those buffers for the object's lifetime.
            None => {
                let mut buf = BytesMut::with_capacity(st.written as usize);
                for (_, c) in &st.chunks {
                    buf.extend_from_slice(c);
                }
                Filled::Mem(buf.freeze())
            }
        })
    }

    /// Marks the body complete for readers.
    pub fn publish(&self) {
        self.lock().done = Some(Ok(()));
        self.progress.send_modify(|_| {});
    }

    /// Marks the body failed: readers get an error and the client connection is cut, so a
    /// truncated body is never mistaken for a complete one.
    pub fn fail(&self, why: String) {
        let path = {
            let mut st = self.lock();
            st.done = Some(Err(why));
            st.file.as_ref().map(|(_, p)| p.clone())
        };
        if let Some(p) = path {
            let _ = std::fs::remove_file(p);
        }
        self.progress.send_modify(|_| {});
    }

    pub fn is_done(&self) -> bool {
        self.lock().done.is_some()
    }

    /// Waits until the body is complete; returns its length.
    pub async fn wait_complete(&self) -> io::Result<u64> {
        let mut rx = self.progress.subscribe();
        loop {
            {
                let st = self.lock();
                match &st.done {
                    Some(Ok(())) => return Ok(st.written),
                    Some(Err(e)) => return Err(io::Error::other(e.clone())),
                    None => {}
                }
            }
            if rx.changed().await.is_err() {
                return Err(io::Error::other("fill abandoned"));
            }
        }
    }

    /// A reader of `[start, end)` that follows the fill.
    pub fn reader(
        self: Arc<Self>,
        start: u64,
        end: Option<u64>,
    ) -> BoxStream<'static, io::Result<Bytes>> {
        let rx = self.progress.subscribe();
        stream::try_unfold((self, rx, start), move |(g, mut rx, pos)| async move {
            loop {
                if end.is_some_and(|e| pos >= e) {
                    return Ok(None);
                }
                enum Next {
                    Mem(Bytes),
                    File(Arc<File>, u64),
                    Eof,
                    Wait,
                }
                let next = {
                    let st = g.lock();
                    if pos < st.written {
                        let limit = end.unwrap_or(st.written).min(st.written);
                        match &st.file {
                            Some((f, _)) => Next::File(f.clone(), (limit - pos).min(READ_BLOCK)),
                            None => {
                                let idx = st.chunks.partition_point(|(off, _)| *off <= pos) - 1;
                                let (off, c) = &st.chunks[idx];
                                let from = (pos - off) as usize;
                                let to = ((limit - off) as usize).min(c.len());
                                Next::Mem(c.slice(from..to))
                            }
                        }
                    } else {
                        match &st.done {
                            Some(Ok(())) => Next::Eof,
                            Some(Err(e)) => return Err(io::Error::other(e.clone())),
                            None => Next::Wait,
                        }
                    }
                };
                match next {
                    Next::Mem(b) => {
                        let n = b.len() as u64;
                        return Ok(Some((b, (g, rx, pos + n))));
                    }
                    Next::File(f, want) => {
                        let b = read_at(f, pos, want).await?;
                        let n = b.len() as u64;
                        if n == 0 {
                            return Err(io::Error::new(
                                io::ErrorKind::UnexpectedEof,
                                "spill file short",
                            ));
                        }
                        return Ok(Some((b, (g, rx, pos + n))));
                    }
                    Next::Eof => return Ok(None),
                    Next::Wait => {
                        if rx.changed().await.is_err() {
                            return Err(io::Error::other("fill abandoned"));
                        }
                    }
                }
            }
        })
        .boxed()
    }
}

impl Drop for Growing {
    fn drop(&mut self) {
        // A spill file that was never handed over (failed or abandoned fill) is removed.
        let st = self.state.get_mut().unwrap_or_else(|e| e.into_inner());
        if !matches!(st.done, Some(Ok(())))
            && let Some((_, p)) = &st.file
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

/// Writes `data` to `path` atomically (temporary file, fsync, rename).
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", unique()));
    let mut f = File::create(&tmp)?;
    f.write_all(data)?;
    f.sync_data()?;
    std::fs::rename(&tmp, path)
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn collect(s: BoxStream<'static, io::Result<Bytes>>) -> io::Result<Vec<u8>> {
        let mut out = Vec::new();
        let mut s = s;
        while let Some(c) = s.next().await {
            out.extend_from_slice(&c?);
        }
        Ok(out)
    }

    #[tokio::test]
    async fn readers_follow_a_fill_and_spill_to_disk() {
        let dir = tempfile::tempdir().expect("tmp");
        let g = Growing::new(None, 10, dir.path()).expect("growing");
        let early = tokio::spawn(collect(g.clone().reader(0, None)));
        let ranged = tokio::spawn(collect(g.clone().reader(3, Some(14))));
        g.push(Bytes::from_static(b"hello ")).expect("push");
        g.push(Bytes::from_static(b"world, "))
            .expect("push spills past 10 bytes");
        g.push(Bytes::from_static(b"and more")).expect("push");
        let filled = g.finish().expect("finish");
        g.publish();
        assert!(matches!(filled, Filled::File { len: 21, .. }));
        assert_eq!(
            early.await.expect("join").expect("read"),
            b"hello world, and more"
        );
        assert_eq!(ranged.await.expect("join").expect("read"), b"lo world, a");
        let late = collect(g.clone().reader(0, None)).await.expect("read");
        assert_eq!(late, b"hello world, and more");
    }

    #[tokio::test]
    async fn failure_reaches_readers() {
        let dir = tempfile::tempdir().expect("tmp");
        let g = Growing::new(Some(100), 1000, dir.path()).expect("growing");
        let r = tokio::spawn(collect(g.clone().reader(0, None)));
        g.push(Bytes::from_static(b"partial")).expect("push");
        g.fail("origin reset".into());
        assert!(r.await.expect("join").is_err());
    }

    #[tokio::test]
    async fn small_bodies_stay_in_memory() {
        let dir = tempfile::tempdir().expect("tmp");
        let g = Growing::new(Some(4), 1000, dir.path()).expect("growing");
        g.push(Bytes::from_static(b"ab")).expect("push");
        g.push(Bytes::from_static(b"cd")).expect("push");
        let filled = g.finish().expect("finish");
        g.publish();
        match filled {
            Filled::Mem(b) => assert_eq!(&b[..], b"abcd"),
            other => panic!("expected memory, got {other:?}"),
        }
        assert_eq!(std::fs::read_dir(dir.path()).expect("dir").count(), 0);
    }
}
