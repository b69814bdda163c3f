//! The guest's root file system: a newc cpio archive (the format the
//! kernel unpacks into its rootfs) holding a static busybox, an `/init`
//! script, and the host-built test programs with the shared libraries
//! `ldd` names for them, at the same paths, so they run unchanged.

use std::{
    collections::BTreeSet,
    fs::{self, File},
    io::{BufWriter, Write},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};

use super::command_output;

/// Printed by `/init` with the guest check's exit status; the host reads
/// the result from it (the cloud kernels have no isa-debug-exit device).
pub const RESULT_MARKER: &str = "TRACER-VM-RESULT exit=";

/// Where the programs land in the guest.
pub const GUEST_TRACER: &str = "/bin/tracer";
pub const GUEST_CHECKER: &str = "/bin/xtask";

/// PID 1: mount what tracer needs (bpffs for pinning, tracefs for classic
/// tracepoints, securityfs for the lockdown mode `doctor` reports), bring
/// up loopback for the test traffic, run the check, report, power off. The
/// kernel reboots on a panic (`panic=-1`) and qemu runs with `-no-reboot`,
/// so a crash of this script ends the VM too. `TRACER_EXPECT` comes from
/// the kernel command line (the kernel hands unknown `NAME=value`
/// parameters to init as environment), so one initramfs serves every kernel.
fn init_script() -> String {
    format!(
        r#"#!/bin/sh
export PATH=/bin HOME=/root
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t tmpfs tmpfs /tmp
mount -t bpf bpf /sys/fs/bpf
mount -t tracefs tracefs /sys/kernel/tracing
mount -t securityfs securityfs /sys/kernel/security
ip link set lo up
echo "guest: Linux $(uname -r), $(nproc) CPU(s), $(awk '/MemTotal/ {{print $2 " kB"}}' /proc/meminfo)"
{GUEST_CHECKER} guest-check --tracer {GUEST_TRACER} --expect "$TRACER_EXPECT"
echo "{RESULT_MARKER}$?"
poweroff -f
"#
    )
}

/// Writes the initramfs to `out`: busybox, `/init`, and each program of
/// `programs` (host path, guest path) with its libraries. Returns its size.
pub fn build(out: &Path, busybox: &Path, programs: &[(&Path, &str)]) -> Result<u64> {
    let file = File::create(out).with_context(|| format!("creating {}", out.display()))?;
    let mut cpio = Cpio::new(BufWriter::new(file));
    for dir in ["bin", "dev", "proc", "sys", "tmp", "root", "run"] {
        cpio.dir(dir)?;
    }
    // The kernel opens /dev/console for PID 1 before anything is mounted.
    cpio.char_device("dev/console", 0o600, 5, 1)?;
    cpio.file("bin/busybox", 0o755, &read(busybox)?)?;
    cpio.symlink("bin/sh", "busybox")?;
    cpio.file("init", 0o755, init_script().as_bytes())?;

    let mut libraries = BTreeSet::new();
    for (host_path, guest_path) in programs {
        cpio.file(guest_path.trim_start_matches('/'), 0o755, &stripped(host_path)?)?;
        libraries.extend(shared_libraries(host_path)?);
    }
    for library in &libraries {
        let guest_path = library.to_str().context("library path is not UTF-8")?.trim_start_matches('/');
        cpio.file(guest_path, 0o755, &read(library)?)?;
    }
    let size = cpio.finish()?;
    Ok(size)
}

fn read(path: &Path) -> Result<Vec<u8>> {
    fs::read(path).with_context(|| format!("reading {}", path.display()))
}

/// The program without its debug information: a debug build of tracer is
/// mostly DWARF, which the guest would only hold in RAM. Falls back to the
/// file as it is when `strip` is missing.
fn stripped(program: &Path) -> Result<Vec<u8>> {
    let Some(strip) = super::find_on_path("strip") else { return read(program) };
    let copy = std::env::temp_dir().join(format!(
        "tracer-vm-{}-{}",
        std::process::id(),
        program.file_name().and_then(|n| n.to_str()).unwrap_or("program")
    ));
    command_output(Command::new(strip).arg("--strip-debug").arg("-o").arg(&copy).arg(program))?;
    let data = read(&copy);
    let _ = fs::remove_file(&copy);
    data
}

/// The shared objects `ldd` resolves for `program`, dynamic loader
/// included; none for a static program.
fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("ldd").arg(program).output().context("starting ldd")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() {
        // ldd fails on a static program, which needs nothing more.
        if text.contains("not a dynamic executable")
            || String::from_utf8_lossy(&out.stderr).contains("not a dynamic executable")
        {
            return Ok(Vec::new());
        }
        bail!("ldd {} failed: {}", program.display(), String::from_utf8_lossy(&out.stderr).trim());
    }
    parse_ldd(&text).with_context(|| format!("ldd {}", program.display()))
}

fn parse_ldd(text: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        if line.contains("not found") {
            bail!("missing library: {line}");
        }
        // "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" or
        // "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file.
        let path = match line.split_once("=>") {
            Some((_, resolved)) => resolved.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(path) = path.filter(|p| p.starts_with('/')) {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// A writer of the "newc" cpio format (see the kernel's
/// Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte
/// ASCII header per entry, the NUL-terminated name and the data, each
/// padded to 4 bytes, closed by a `TRAILER!!!` entry.
struct Cpio<W: Write> {
    out: W,
    written: u64,
    next_inode: u32,
    dirs: BTreeSet<String>,
}

const S_IFDIR: u32 = 0o040_000;
const S_IFREG: u32 = 0o100_000;
const S_IFLNK: u32 = 0o120_000;
const S_IFCHR: u32 = 0o020_000;

impl<W: Write> Cpio<W> {
    fn new(out: W) -> Self {
        Self { out, written: 0, next_inode: 1, dirs: BTreeSet::new() }
    }

    /// `path` and its missing parents.
    fn dir(&mut self, path: &str) -> Result<()> {
        if path.is_empty() || self.dirs.contains(path) {
            return Ok(());
        }
        if let Some((parent, _)) = path.rsplit_once('/') {
            self.dir(parent)?;
        }
        self.dirs.insert(path.to_owned());
        self.entry(path, S_IFDIR | 0o755, 2, (0, 0), &[])
    }

    fn parent_of(&mut self, path: &str) -> Result<()> {
        match path.rsplit_once('/') {
            Some((parent, _)) => self.dir(parent),
            None => Ok(()),
        }
    }

    fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> Result<()> {
        self.parent_of(path)?;
        self.entry(path, S_IFREG | mode, 1, (0, 0), data)
    }

    fn symlink(&mut self, path: &str, target: &str) -> Result<()> {
        self.parent_of(path)?;
        self.entry(path, S_IFLNK | 0o777, 1, (0, 0), target.as_bytes())
    }

    fn char_device(&mut self, path: &str, mode: u32, major: u32, minor: u32) -> Result<()> {
        self.parent_of(path)?;
        self.entry(path, S_IFCHR | mode, 1, (major, minor), &[])
    }

    fn entry(&mut self, name: &str, mode: u32, links: u32, rdev: (u32, u32), data: &[u8]) -> Result<()> {
        let inode = if name == "TRAILER!!!" { 0 } else { self.next_inode };
        self.next_inode += 1;
        let size = u32::try_from(data.len()).with_context(|| format!("{name} is too big for cpio"))?;
        let name_size = name.len() + 1;
        // ino mode uid gid nlink mtime filesize devmajor devminor rdevmajor rdevminor namesize check
        let header = format!(
            "070701{inode:08x}{mode:08x}{:08x}{:08x}{links:08x}{:08x}{size:08x}{:08x}{:08x}{:08x}{:08x}{name_size:08x}{:08x}",
            0, 0, 0, 0, 0, rdev.0, rdev.1, 0
        );
        self.put(header.as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad()?;
        self.put(data)?;
        self.pad()
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).context("writing the initramfs")?;
        self.written += bytes.len() as u64;
        Ok(())
    }

    fn pad(&mut self) -> Result<()> {
        let padding = (4 - self.written % 4) % 4;
        self.put(&[0; 3][..padding as usize])
    }

    fn finish(mut self) -> Result<u64> {
        self.entry("TRAILER!!!", 0, 1, (0, 0), &[])?;
        self.out.flush().context("writing the initramfs")?;
        Ok(self.written)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newc_entries_are_aligned_and_parents_come_first() {
        let mut cpio = Cpio::new(Vec::new());
        cpio.file("lib/x86_64-linux-gnu/libc.so.6", 0o755, b"hello").expect("writes");
        let size = cpio.written;
        let out = cpio.out;
        assert_eq!(size as usize, out.len());
        assert_eq!(out.len() % 4, 0);
        let text = String::from_utf8_lossy(&out);
        let lib = text.find("lib\0").expect("lib dir");
        let multiarch = text.find("lib/x86_64-linux-gnu\0").expect("multiarch dir");
        let libc = text.find("lib/x86_64-linux-gnu/libc.so.6\0").expect("file");
        assert!(lib < multiarch && multiarch < libc);
        // Every entry starts with the newc magic on a 4-byte boundary.
        assert_eq!(out.windows(6).filter(|w| w == b"070701").count(), 3);
        assert!(text.contains("hello"));
    }

    #[test]
    fn ldd_output_gives_libraries_and_the_loader() {
        let text = "\tlinux-vdso.so.1 (0x00007ffc)\n\
                    \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f1)\n\
                    \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2)\n\
                    \t/lib64/ld-linux-x86-64.so.2 (0x00007f3)\n";
        let libs = parse_ldd(text).expect("parses");
        assert_eq!(
            libs,
            ["/lib/x86_64-linux-gnu/libgcc_s.so.1", "/lib/x86_64-linux-gnu/libc.so.6", "/lib64/ld-linux-x86-64.so.2"]
                .map(PathBuf::from)
        );
        assert!(parse_ldd("\tlibfoo.so => not found\n").is_err());
        assert!(parse_ldd("\tstatically linked\n").expect("parses").is_empty());
    }
}
