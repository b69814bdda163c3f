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

/// Records the thread took and the session has not yet.
#[derive(Default)]
struct Shared {
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
        let shared = Arc::new(Shared::default());
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new().name("closed-ring".into()).spawn(move || drain(ring, &theirs))?;
        Ok(ClosedRing { shared, thread: Some(thread) })
    }

    /// Waits until records are waiting.
    pub(crate) async fn ready(&self) {
        self.shared.ready.notified().await;
    }

    /// Takes every record drained so far, oldest first.
    pub(crate) fn take(&self) -> Vec<ClosedSock> {
        let mut pending = self.shared.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        std::mem::take(&mut *pending)
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
fn drain(mut ring: RingBuf<MapData>, shared: &Shared) {
    let fd = ring.as_fd().as_raw_fd();
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
        while let Some(item) = ring.next() {
            if item.len() < std::mem::size_of::<ClosedSock>() {
                continue;
            }
            // SAFETY: the kernel wrote a whole `ClosedSock` (checked size);
            // read unaligned since ring items are only 8-byte aligned.
            batch.push(unsafe { std::ptr::read_unaligned(item.as_ptr() as *const ClosedSock) });
        }
        if !batch.is_empty() {
            shared.pending.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).append(&mut batch);
            shared.ready.notify_one();
            // A burst (a mass close) does not leave its buffer behind.
            if batch.capacity() > 1024 {
                batch = Vec::new();
            }
        }
    }
}
