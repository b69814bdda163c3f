//! `bpf(2)` commands aya 0.14 does not expose: `BPF_MAP_LOOKUP_BATCH` for
//! hash maps and ranges of arrays (Linux >= 5.6), `BPF_PROG_TEST_RUN` (the TCP health pass, run
//! on demand), and a map-element iterator's link and reads (the same pass
//! on kernels before 5.13). Reading the socket table in batches takes a
//! handful of syscalls instead of two per socket, which is most of a
//! collection pass with tens of thousands of sockets.

use std::{
    io,
    mem::{size_of, size_of_val},
    os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd},
};

/// `BPF_MAP_LOOKUP_BATCH` (`enum bpf_cmd`).
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// `BPF_OBJ_GET_INFO_BY_FD` (`enum bpf_cmd`).
const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;

/// The `info` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct InfoAttr {
    bpf_fd: u32,
    info_len: u32,
    info: u64,
}

/// The start of `struct bpf_map_info` (the kernel fills what fits).
#[repr(C)]
#[derive(Default)]
struct MapInfo {
    map_type: u32,
    id: u32,
    key_size: u32,
    value_size: u32,
    max_entries: u32,
    map_flags: u32,
}

/// The key and value sizes of the map behind `map_fd`.
fn map_sizes(map_fd: RawFd) -> io::Result<(usize, usize)> {
    let mut info = MapInfo::default();
    let mut attr = InfoAttr {
        bpf_fd: map_fd as u32,
        info_len: size_of::<MapInfo>() as u32,
        info: &mut info as *mut MapInfo as u64,
    };
    // SAFETY: `attr` points at `info`, alive across the call; the kernel
    // writes at most `info_len` bytes into it.
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_OBJ_GET_INFO_BY_FD, &mut attr as *mut InfoAttr, size_of::<InfoAttr>() as u32)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((info.key_size as usize, info.value_size as usize))
}

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

/// Reads every entry of the hash map `map_fd`, up to `chunk` entries per
/// syscall. `Err` if the kernel lacks batch operations (the caller falls
/// back to key-by-key iteration).
///
/// The kernel writes raw bytes into the key and value buffers, so `K` and
/// `V` must be plain old data ([`aya::Pod`]: any bit pattern is a valid
/// value), and they must be the map's key and value types (the kernel
/// writes `key_size`/`value_size` bytes per entry: a smaller type would be
/// overrun, which is why the sizes are checked against the map's first).
pub(crate) fn lookup_all<K: aya::Pod + Default, V: aya::Pod + Default>(
    map_fd: RawFd,
    chunk: usize,
) -> io::Result<Vec<(K, V)>> {
    let (key_size, value_size) = map_sizes(map_fd)?;
    if key_size != size_of::<K>() || value_size != size_of::<V>() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "map has {key_size}-byte keys and {value_size}-byte values, not {} and {}",
                size_of::<K>(),
                size_of::<V>()
            ),
        ));
    }
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
        // `count` entries of the map's key and value sizes, which are those
        // of `K` and `V` (checked above), and any bytes are valid `K`s and
        // `V`s (`aya::Pod`).
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

/// Reads ranges of the array map `map_fd` (value type `V`) with batch
/// lookups, one syscall per range.
pub(crate) struct ArrayRanges<V> {
    map_fd: RawFd,
    keys: Vec<u32>,
    _values: std::marker::PhantomData<V>,
}

impl<V: aya::Pod> ArrayRanges<V> {
    /// `V` must be plain old data ([`aya::Pod`]) and the map's value type
    /// (checked against the map's sizes); ranges hold at most `longest`
    /// entries.
    pub(crate) fn new(map_fd: RawFd, longest: usize) -> io::Result<Self> {
        let (key_size, value_size) = map_sizes(map_fd)?;
        if key_size != size_of::<u32>() || value_size != size_of::<V>() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "map has {key_size}-byte keys and {value_size}-byte values, not an array of {}",
                    size_of::<V>()
                ),
            ));
        }
        Ok(ArrayRanges { map_fd, keys: vec![0; longest], _values: std::marker::PhantomData })
    }

    /// Reads entries `start..start + values.len()` into `values`; returns
    /// how many were read (fewer at the end of the array).
    pub(crate) fn read(&mut self, start: u32, values: &mut [V]) -> io::Result<usize> {
        let count = values.len().min(self.keys.len());
        // An array's batch token is the last index read: start after
        // `start - 1`, or from the beginning.
        let mut token = [start.wrapping_sub(1)];
        let mut next_token = [0u32];
        let mut attr = BatchAttr {
            in_batch: if start == 0 { 0 } else { token.as_mut_ptr() as u64 },
            out_batch: next_token.as_mut_ptr() as u64,
            keys: self.keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: count as u32,
            map_fd: self.map_fd as u32,
            ..BatchAttr::default()
        };
        // SAFETY: `attr` points at buffers of at least `count` keys (u32,
        // the map's key size) and values (`V`, the map's value size, checked
        // in `new`) and at the tokens, all alive across the call; any bytes
        // are valid `V`s.
        let ret = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_MAP_LOOKUP_BATCH,
                &mut attr as *mut BatchAttr,
                size_of::<BatchAttr>() as u32,
            )
        };
        let filled = (attr.count as usize).min(count);
        // ENOENT: the end of the array was reached (what was read is valid).
        if ret < 0 {
            let error = io::Error::last_os_error();
            if error.raw_os_error() != Some(libc::ENOENT) {
                return Err(error);
            }
        }
        Ok(filled)
    }
}

/// `BPF_PROG_TEST_RUN` (`enum bpf_cmd`).
const BPF_PROG_TEST_RUN: libc::c_long = 10;

/// The `test` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct TestRunAttr {
    prog_fd: u32,
    retval: u32,
    data_size_in: u32,
    data_size_out: u32,
    data_in: u64,
    data_out: u64,
    repeat: u32,
    duration: u32,
    ctx_size_in: u32,
    ctx_size_out: u32,
    ctx_in: u64,
    ctx_out: u64,
    flags: u32,
    cpu: u32,
    batch_size: u32,
    _pad: u32,
}

/// Runs the program `prog` once with `context` as its context
/// (`BPF_PROG_TEST_RUN`): how a program with no attach point is run on
/// demand.
pub(crate) fn prog_test_run(prog: BorrowedFd<'_>, context: &[u64]) -> io::Result<()> {
    let mut attr = TestRunAttr {
        prog_fd: prog.as_raw_fd() as u32,
        ctx_size_in: size_of_val(context) as u32,
        ctx_in: context.as_ptr() as u64,
        ..TestRunAttr::default()
    };
    // SAFETY: `attr` is the `test` member of `union bpf_attr`, and the
    // context buffer it points at outlives the call; the kernel only reads
    // it (no output buffers are given).
    let ret = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_TEST_RUN, &mut attr as *mut TestRunAttr, size_of::<TestRunAttr>() as u32)
    };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `enum bpf_cmd` and `enum bpf_attach_type` values for iterators.
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_TRACE_ITER: u32 = 28;

/// The `link_create` member of `union bpf_attr`, for an iterator.
#[repr(C)]
#[derive(Default)]
struct LinkCreateAttr {
    prog_fd: u32,
    target_fd: u32,
    attach_type: u32,
    flags: u32,
    iter_info: u64,
    iter_info_len: u32,
    _pad: [u32; 9],
}

/// The `iter_create` member of `union bpf_attr`.
#[repr(C)]
#[derive(Default)]
struct IterCreateAttr {
    link_fd: u32,
    flags: u32,
}

fn fd_command<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is the `union bpf_attr` member of `cmd`, alive across
    // the call, and whatever it points at outlives the call.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr as *mut T, size_of::<T>() as u32) };
    if ret < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the command returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(ret as i32) })
}

/// Attaches the map-element iterator `prog` to `map` (aya 0.14 attaches
/// iterators without a target).
pub(crate) fn map_iter_link(prog: BorrowedFd<'_>, map: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    // `union bpf_iter_link_info`: `map.map_fd` first.
    let info: u32 = map.as_raw_fd() as u32;
    let mut attr = LinkCreateAttr {
        prog_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_TRACE_ITER,
        iter_info: &info as *const u32 as u64,
        iter_info_len: size_of::<u32>() as u32,
        ..LinkCreateAttr::default()
    };
    fd_command(BPF_LINK_CREATE, &mut attr)
}

/// Runs an iterator whose program writes nothing: reading it to the end
/// runs the program over every element.
pub(crate) fn iter_run(link: BorrowedFd<'_>) -> io::Result<()> {
    let mut attr = IterCreateAttr { link_fd: link.as_raw_fd() as u32, flags: 0 };
    let iter = std::fs::File::from(fd_command(BPF_ITER_CREATE, &mut attr)?);
    let mut buffer = [0u8; 64];
    // Bounded: a pass ends at the map's end (each read may return early).
    for _ in 0..1024 {
        if io::Read::read(&mut &iter, &mut buffer)? == 0 {
            return Ok(());
        }
    }
    Ok(())
}
