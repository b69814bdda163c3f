//! Shared memory mappings (`mmap(2)`), unmapped on drop: how user space
//! reads a `BPF_F_MMAPABLE` array in place.

use std::{io, os::fd::RawFd, ptr::NonNull};

/// A mapping of `len` bytes, readable and writable, unmapped on drop.
pub(crate) struct Mapping {
    base: NonNull<u8>,
    len: usize,
}

// SAFETY: the mapping is process-wide memory; the pointer is not tied to a
// thread. What is stored in it, and how it is accessed, is the owner's
// concern (the byte table uses atomics only).
unsafe impl Send for Mapping {}
// SAFETY: as above; `Mapping` itself hands out only a raw pointer.
unsafe impl Sync for Mapping {}

impl Mapping {
    /// Maps `len` bytes of the object behind `fd` (e.g. a mmapable BPF
    /// array), shared with the kernel.
    pub(crate) fn shared(fd: RawFd, len: usize) -> io::Result<Self> {
        // SAFETY: a fresh mapping chosen by the kernel; the result is
        // checked below.
        let base = unsafe {
            libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED, fd, 0)
        };
        Self::checked(base, len)
    }

    /// Maps `len` bytes of the object behind `fd` from `offset` (a multiple
    /// of the page size), read-only: a window onto a mmapable BPF array.
    pub(crate) fn shared_read_only(fd: RawFd, offset: usize, len: usize) -> io::Result<Self> {
        let offset = libc::off_t::try_from(offset).map_err(|_| io::Error::other("offset out of range"))?;
        // SAFETY: a fresh mapping chosen by the kernel; the result is
        // checked below.
        let base = unsafe { libc::mmap(std::ptr::null_mut(), len, libc::PROT_READ, libc::MAP_SHARED, fd, offset) };
        Self::checked(base, len)
    }

    /// `len` bytes of private zeroed memory (tests of code that reads a
    /// shared mapping).
    #[cfg(test)]
    pub(crate) fn anonymous(len: usize) -> io::Result<Self> {
        // SAFETY: a fresh private anonymous mapping; checked below.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        Self::checked(base, len)
    }

    fn checked(base: *mut libc::c_void, len: usize) -> io::Result<Self> {
        if base == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let base = NonNull::new(base.cast()).ok_or_else(|| io::Error::other("mmap returned null"))?;
        Ok(Mapping { base, len })
    }

    /// The first byte (page-aligned); valid for [`Mapping::len`] bytes for
    /// as long as `self` lives.
    pub(crate) fn as_ptr(&self) -> *mut u8 {
        self.base.as_ptr()
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `shared`/`anonymous` mapped.
        unsafe { libc::munmap(self.base.as_ptr().cast(), self.len) };
    }
}
