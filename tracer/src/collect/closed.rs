//! The destroyed-socket ring buffer (`CLOSED`), drained by a thread of its
//! own: a collection pass over a large table (hundreds of milliseconds with
//! 100,000 sockets) must not leave the ring undrained while thousands of
//! sockets close, or their final records spill into the overflow map and,
//! past it, are lost. The thread copies each record out as soon as the
//! kernel side wakes it (every quarter of the ring) or every few
//! milliseconds, and the session takes them when it is free.

use std::{
    io,
    os::fd::{AsFd, AsRawFd},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::maps::{MapData, RingBuf};
use log::debug;
use tokio::sync::Notify;
use tracer_common::ClosedSock;

/// How long the thread sleeps in `poll` when the kernel side does not wake
/// it (it wakes it only once a quarter of the ring is used).
const POLL_MS: i32 = 20;

/// The ring, records the thread took and the session has not yet.
struct Shared {
    /// Locked by the thread for a pass (its records are in `pending`
    /// before it lets go), and by the session to drain what is left: a
    /// record submitted before [`ClosedRing::take`] is always among those
    /// it returns (the tick relies on it: a socket missing from the table
    /// read has its final record taken right after, or it is forgotten).
    ring: Mutex<RingBuf<MapData>>,
    pending: Mutex<Vec<ClosedSock>>,
    stop: AtomicBool,
    /// Wakes the session when records are waiting.
    ready: Notify,
}

/// The thread draining `CLOSED`, and what it drained.
pub(crate) struct ClosedRing {
    shared: Arc<Shared>,
    thread: Option<JoinHandle<()>>,
}

impl ClosedRing {
    /// Starts the thread that owns `ring`.
    pub(crate) fn start(ring: RingBuf<MapData>) -> io::Result<Self> {
        let fd = ring.as_fd().as_raw_fd();
        let shared = Arc::new(Shared {
            ring: Mutex::new(ring),
            pending: Mutex::default(),
            stop: AtomicBool::default(),
            ready: Notify::default(),
        });
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("closed-ring".into()).spawn(move || drain(fd, &theirs))?;
        Ok(ClosedRing { shared, thread: Some(thread) })
    }

    /// Waits until records are waiting.
    pub(crate) async fn ready(&self) {
        self.shared.ready.notified().await;
    }

    /// Takes every record submitted so far, oldest first: those the thread
    /// drained, then what is still in the ring.
    pub(crate) fn take(&self) -> Vec<ClosedSock> {
        let mut ring = self.shared.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut records = {
            let mut pending = self.shared.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            std::mem::take(&mut *pending)
        };
        copy_out(&mut ring, &mut records);
        records
    }
}

impl Drop for ClosedRing {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(thread) = self.thread.take() {
            // Returns within one poll period.
            let _ = thread.join();
        }
    }
}

/// The thread: waits for the ring (or the poll period), copies out every
/// record in it, hands them over, until told to stop.
fn drain(fd: std::os::fd::RawFd, shared: &Shared) {
    let mut batch = Vec::new();
    while !shared.stop.load(Ordering::Acquire) {
        let mut poll = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
        // SAFETY: one valid pollfd, for the duration of the call; the ring
        // buffer owns `fd` and outlives the call.
        let ret = unsafe { libc::poll(&mut poll, 1, POLL_MS) };
        if ret < 0 {
            let error = io::Error::last_os_error();
            if error.kind() != io::ErrorKind::Interrupted {
                debug!("polling the destroyed-socket ring: {error}");
                std::thread::sleep(Duration::from_millis(POLL_MS as u64));
            }
        }
        let mut ring = shared.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        copy_out(&mut ring, &mut batch);
        if !batch.is_empty() {
            // Handed over before the ring is let go (see `Shared::ring`).
            shared.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).append(&mut batch);
            drop(ring);
            shared.ready.notify_one();
            // A burst (a mass close) does not leave its buffer behind.
            if batch.capacity() > 1024 {
                batch = Vec::new();
            }
        }
    }
}

/// Copies every record in the ring into `to`.
fn copy_out(ring: &mut RingBuf<MapData>, to: &mut Vec<ClosedSock>) {
    while let Some(item) = ring.next() {
        if item.len() < std::mem::size_of::<ClosedSock>() {
            continue;
        }
        // SAFETY: the kernel wrote a whole `ClosedSock` (checked size);
        // read unaligned since ring items are only 8-byte aligned.
        to.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ClosedSock) });
    }
}
