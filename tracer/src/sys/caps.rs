//! The calling thread's capabilities: reading them (`capget(2)`) and
//! keeping only a chosen few (`capset(2)`, with `prctl(2)` for the ambient
//! and bounding sets and `no_new_privs`).
//!
//! Capabilities belong to a thread, not to the process: a new thread starts
//! with its creator's. [`restrict_to`] therefore only changes the thread that
//! calls it, and the commands call it on the main thread before any other
//! thread exists (before the async runtime is built), so every later thread
//! inherits the reduced set.

use std::io;

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// `struct __user_cap_header_struct`.
#[repr(C)]
struct Header {
    version: u32,
    pid: libc::c_int,
}

/// `struct __user_cap_data_struct`: one 32-bit half of each set.
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct Data {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// The sets of the calling thread, each a bit mask over capability numbers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Sets {
    pub(crate) effective: u64,
    pub(crate) permitted: u64,
}

fn join(low: u32, high: u32) -> u64 {
    u64::from(low) | (u64::from(high) << 32)
}

/// The calling thread's effective and permitted sets.
pub(crate) fn current() -> io::Result<Sets> {
    let mut header = Header { version: CAPABILITY_VERSION_3, pid: 0 };
    let mut data = [Data::default(); 2];
    // SAFETY: `header` and `data` (two structs, as version 3 requires) are
    // valid for the call; the kernel writes only into `data`.
    let ret = unsafe { libc::syscall(libc::SYS_capget, &mut header as *mut Header, data.as_mut_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Sets {
        effective: join(data[0].effective, data[1].effective),
        permitted: join(data[0].permitted, data[1].permitted),
    })
}

/// The highest capability number this kernel knows.
fn last_capability() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .unwrap_or(63)
        .min(63)
}

/// Keeps only the capabilities in `keep` (those of them the thread has) in
/// the calling thread's effective and permitted sets, empties its
/// inheritable and ambient sets, takes everything else out of the bounding
/// set where allowed (`CAP_SETPCAP`), and sets `no_new_privs`: nothing
/// dropped can come back, not even through `execve`. Returns the sets as
/// they are afterwards.
pub(crate) fn restrict_to(keep: u64) -> io::Result<Sets> {
    let before = current()?;
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // Best effort (needs CAP_SETPCAP, and the ambient set exists since 4.3);
    // with no_new_privs and an empty permitted set they grant nothing anyway.
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_CAP_AMBIENT, libc::PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) };
    for capability in 0..=last_capability() {
        if keep & (1 << capability) == 0 {
            // SAFETY: prctl with integer arguments only.
            unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability as libc::c_ulong, 0, 0, 0) };
        }
    }
    let kept = before.permitted & keep;
    let half = |bits: u64, upper: bool| if upper { (bits >> 32) as u32 } else { bits as u32 };
    let mut header = Header { version: CAPABILITY_VERSION_3, pid: 0 };
    let data =
        [false, true].map(|upper| Data { effective: half(kept, upper), permitted: half(kept, upper), inheritable: 0 });
    // SAFETY: `header` and the two `data` structs are valid for the call;
    // the kernel only reads them.
    let ret = unsafe { libc::syscall(libc::SYS_capset, &mut header as *mut Header, data.as_ptr()) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    current()
}
