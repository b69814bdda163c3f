//! `BPF_MAP_LOOKUP_BATCH` for hash maps (Linux >= 5.6), which aya 0.14 does
//! not expose: reading the socket table in batches takes a handful of
//! syscalls instead of two per socket, which is most of a collection pass
//! with tens of thousands of sockets.

use std::{io, mem::size_of, os::fd::RawFd};

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// The `batch` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct BatchAttr {
    in_batch: u64,
    out_batch: u64,
    keys: u64,
    values: u64,
    count: u32,
    map_fd: u32,
    elem_flags: u64,
    flags: u64,
}

/// Reads every entry of the hash map `map_fd` (keys `K`, values `V`, both
/// plain old data), up to `chunk` entries per syscall. `Err` if the kernel
/// lacks batch operations (the caller falls back to key-by-key iteration).
pub fn lookup_all<K: Copy + Default, V: Copy + Default>(map_fd: RawFd, chunk: usize) -> io::Result<Vec<(K, V)>> {
    let mut keys = vec![K::default(); chunk.max(1)];
    let mut values = vec![V::default(); chunk.max(1)];
    // The hash map's batch token is a bucket index (u32); give it room.
    let mut token = [0u64; 1];
    let mut next_token = [0u64; 1];
    let mut started = false;
    let mut entries = Vec::new();
    // Bounded: each successful round consumes at least one bucket, and a
    // bucket too big for the buffers doubles them (at most ~20 times).
    for _ in 0..(1 << 24) {
        let mut attr = BatchAttr {
            in_batch: if started { token.as_mut_ptr() as u64 } else { 0 },
            out_batch: next_token.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: keys.len() as u32,
            map_fd: map_fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of `count` keys and values and at
        // the tokens, all alive across the call; the kernel writes at most
        // `count` entries.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let error = (ret < 0).then(io::Error::last_os_error);
        let filled = (attr.count as usize).min(keys.len());
        entries.extend(keys[..filled].iter().copied().zip(values[..filled].iter().copied()));
        match error.as_ref().and_then(io::Error::raw_os_error) {
            None => {}
            Some(libc::ENOENT) => return Ok(entries),
            Some(libc::ENOSPC) if filled == 0 && keys.len() < (1 << 20) => {
                let bigger = keys.len() * 2;
                keys.resize(bigger, K::default());
                values.resize(bigger, V::default());
                continue;
            }
            Some(_) => return Err(error.unwrap_or_else(io::Error::last_os_error)),
        }
        token = next_token;
        started = true;
    }
    Ok(entries)
}
