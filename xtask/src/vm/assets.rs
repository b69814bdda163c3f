//! What the VM test needs from Debian, fetched once and cached: qemu (10
//! from backports, installed on the host), the guest kernels (only
//! `boot/vmlinuz-*` and `boot/config-*` of each package) and a static
//! busybox for the initramfs. A cached item is complete once its `package`
//! file exists; delete the cache directory to fetch newer ones.

use std::{
    fs,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};

use super::{apt::PrivateApt, command_output};

/// A stock Debian kernel the guest boots.
pub struct GuestKernel {
    /// What `--kernel` calls it.
    pub name: &'static str,
    /// The Debian suite that ships it.
    pub suite: &'static str,
    /// apt-cache search regex of its package; the newest ABI is taken.
    pub package_regex: &'static str,
    /// The attach backends this kernel supports (measured: fentry, fexit,
    /// kprobe, kretprobe and tp_btf all attach on both; only 6.12 has the
    /// `sock_send_length` tracepoint). `tracer doctor` must agree.
    pub backends: &'static [&'static str],
}

/// The kernels of the matrix.
pub const KERNELS: &[GuestKernel] = &[
    // Before 5.12: no BPF compare-and-swap, so the tracer loads its
    // `tracer-legacy` object (no byte table).
    GuestKernel {
        name: "bullseye-5.10",
        suite: "bullseye",
        package_regex: r"^linux-image-5\.10\.[0-9]+-[0-9]+-cloud-amd64$",
        backends: &["fentry", "kprobe"],
    },
    GuestKernel {
        name: "bookworm-6.1",
        suite: "bookworm",
        package_regex: r"^linux-image-6\.1\.[0-9]+-[0-9]+-cloud-amd64$",
        backends: &["fentry", "kprobe"],
    },
    GuestKernel {
        name: "trixie-6.12",
        suite: "trixie",
        package_regex: r"^linux-image-6\.12\.[0-9]+\+deb13-cloud-amd64$",
        backends: &["tracepoint", "fentry", "kprobe"],
    },
];

/// A kernel image ready to boot.
pub struct KernelFiles {
    pub vmlinuz: PathBuf,
    /// Its build configuration, kept to answer "was X built in?" later.
    pub config: PathBuf,
    /// `NAME VERSION` of the Debian package it came from.
    pub package: String,
}

/// The qemu to boot with.
pub struct Qemu {
    pub binary: PathBuf,
    pub version: String,
    pub major: u32,
}

/// Fetches into the cache directory, refreshing each private apt list at
/// most once per run, and counts the time spent on the network side.
pub struct Fetcher {
    cache: PathBuf,
    kernel_apt: Option<PrivateApt>,
    pub download_time: Duration,
    pub downloaded: Vec<String>,
}

impl Fetcher {
    pub fn new(cache: &Path) -> Result<Self> {
        fs::create_dir_all(cache).with_context(|| format!("creating {}", cache.display()))?;
        Ok(Self { cache: cache.to_owned(), kernel_apt: None, download_time: Duration::ZERO, downloaded: Vec::new() })
    }

    /// bullseye, bookworm and trixie lists, only for `apt-get download`
    /// (never install from this one: with trixie in it apt would upgrade
    /// the host).
    fn kernel_apt(&mut self) -> Result<&PrivateApt> {
        if self.kernel_apt.is_none() {
            let apt = PrivateApt::new(&self.cache.join("apt-download"), &["bullseye", "bookworm", "trixie"])?;
            apt.update().context("refreshing the private package lists (bullseye, bookworm, trixie)")?;
            self.kernel_apt = Some(apt);
        }
        self.kernel_apt.as_ref().context("private apt configuration missing")
    }

    fn scratch_dir(&self) -> PathBuf {
        self.cache.join(format!("scratch-{}", std::process::id()))
    }

    /// qemu-system-x86_64, installed from `<codename>-backports` when the
    /// host has none of version 10 or later (bookworm's 7.2 double-faults
    /// the 6.12 guest at boot now and then with two vCPUs). Falls back to
    /// the release's own qemu if backports cannot be had.
    pub fn qemu(&mut self) -> Result<Qemu> {
        if let Some(qemu) = installed_qemu()? {
            if qemu.major >= 10 {
                return Ok(qemu);
            }
        }
        let started = Instant::now();
        let codename = host_codename()?;
        let backports = format!("{codename}-backports");
        eprintln!("xtask: installing qemu-system-x86 from {backports} (private apt sources: {codename}, {backports})");
        let apt = PrivateApt::new(&self.cache.join("apt-qemu"), &[&codename, &backports])?;
        apt.update().with_context(|| format!("refreshing the private package lists ({codename}, {backports})"))?;
        let install = ["install", "-y", "-q", "--no-install-recommends", "qemu-system-x86"];
        if let Err(err) = apt.apt_get(&[&install[..], &["-t", &backports]].concat(), &self.cache) {
            eprintln!("xtask: qemu from {backports} failed ({err:#}); trying {codename}'s own qemu");
            apt.apt_get(&install, &self.cache).context("installing qemu-system-x86")?;
        }
        // The .debs are installed now; keeping them would only take space.
        apt.apt_get(&["clean"], &self.cache)?;
        self.download_time += started.elapsed();
        let qemu = installed_qemu()?.context("qemu-system-x86_64 is still missing after installing qemu-system-x86")?;
        self.downloaded.push(format!("qemu-system-x86 {}", qemu.version));
        Ok(qemu)
    }

    /// The kernel `kernel`, from the cache or downloaded.
    pub fn kernel(&mut self, kernel: &GuestKernel) -> Result<KernelFiles> {
        let dir = self.cache.join("kernels").join(kernel.name);
        let files = KernelFiles {
            vmlinuz: dir.join("vmlinuz"),
            config: dir.join("config"),
            package: fs::read_to_string(dir.join("package")).unwrap_or_default().trim().to_owned(),
        };
        if !files.package.is_empty() && files.vmlinuz.is_file() && files.config.is_file() {
            return Ok(files);
        }
        let started = Instant::now();
        let scratch = self.scratch_dir();
        let apt = self.kernel_apt()?;
        let package = apt.newest_package(kernel.package_regex)?;
        let version = apt.candidate_version(&package)?;
        eprintln!("xtask: downloading {package} {version} ({}) for {}", kernel.suite, kernel.name);
        let deb = apt.download(&package, Some(kernel.suite), &scratch)?;
        let unpacked = scratch.join("unpacked");
        extract_deb(&deb, &unpacked, &["./boot/vmlinuz-*", "./boot/config-*"])?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        move_single(&unpacked.join("boot"), "vmlinuz-", &files.vmlinuz)?;
        move_single(&unpacked.join("boot"), "config-", &files.config)?;
        let package = format!("{package} {version}");
        fs::write(dir.join("package"), format!("{package}\n")).context("recording the kernel package")?;
        remove_scratch(&scratch);
        self.download_time += started.elapsed();
        self.downloaded.push(package.clone());
        Ok(KernelFiles { package, ..files })
    }

    /// A static busybox: the guest's shell, mount, ip and poweroff.
    pub fn busybox(&mut self) -> Result<(PathBuf, String)> {
        let dir = self.cache.join("busybox");
        let binary = dir.join("busybox");
        let package = fs::read_to_string(dir.join("package")).unwrap_or_default().trim().to_owned();
        if !package.is_empty() && binary.is_file() {
            return Ok((binary, package));
        }
        let started = Instant::now();
        let scratch = self.scratch_dir();
        let apt = self.kernel_apt()?;
        let version = apt.candidate_version("busybox-static")?;
        eprintln!("xtask: downloading busybox-static {version}");
        let deb = apt.download("busybox-static", None, &scratch)?;
        let unpacked = scratch.join("unpacked");
        extract_deb(&deb, &unpacked, &[])?;
        // bookworm ships /bin/busybox, later releases /usr/bin/busybox.
        let found = ["bin/busybox", "usr/bin/busybox"]
            .iter()
            .map(|p| unpacked.join(p))
            .find(|p| p.is_file())
            .context("busybox-static has no bin/busybox")?;
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::rename(&found, &binary).with_context(|| format!("moving {} to {}", found.display(), binary.display()))?;
        let package = format!("busybox-static {version}");
        fs::write(dir.join("package"), format!("{package}\n")).context("recording the busybox package")?;
        remove_scratch(&scratch);
        self.download_time += started.elapsed();
        self.downloaded.push(package.clone());
        Ok((binary, package))
    }
}

fn installed_qemu() -> Result<Option<Qemu>> {
    let Some(binary) = super::find_on_path("qemu-system-x86_64") else { return Ok(None) };
    let text = command_output(Command::new(&binary).arg("--version"))?;
    // "QEMU emulator version 10.0.2 (Debian 1:10.0.2+ds-2+deb13u1~bpo12+1)"
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("QEMU emulator version "))
        .and_then(|rest| rest.split_whitespace().next())
        .with_context(|| format!("cannot read the version of {}: {text}", binary.display()))?
        .to_owned();
    let major = version.split('.').next().and_then(|m| m.parse().ok()).unwrap_or(0);
    Ok(Some(Qemu { binary, version, major }))
}

/// The host's Debian release codename (`bookworm`), from /etc/os-release.
fn host_codename() -> Result<String> {
    let text = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    text.lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|v| v.trim_matches('"').to_owned())
        .filter(|v| !v.is_empty())
        .context("/etc/os-release names no VERSION_CODENAME (is this Debian?)")
}

/// Unpacks the data of `deb` into `into`: only the members matching
/// `patterns` (tar wildcards), or everything when there are none. A pattern
/// that matches nothing fails the extraction.
fn extract_deb(deb: &Path, into: &Path, patterns: &[&str]) -> Result<()> {
    fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
    let mut dpkg = Command::new("dpkg-deb")
        .arg("--fsys-tarfile")
        .arg(deb)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting dpkg-deb")?;
    let data = dpkg.stdout.take().context("dpkg-deb has no stdout")?;
    let mut tar = Command::new("tar");
    tar.args(["-x", "-f", "-", "-C"]).arg(into);
    if !patterns.is_empty() {
        tar.arg("--wildcards").args(patterns);
    }
    let tar_status = tar.stdin(data).status().context("starting tar")?;
    let dpkg_status = dpkg.wait().context("waiting for dpkg-deb")?;
    if !tar_status.success() {
        bail!("tar could not extract {patterns:?} from {} ({tar_status})", deb.display());
    }
    if !dpkg_status.success() {
        bail!("dpkg-deb --fsys-tarfile {} failed ({dpkg_status})", deb.display());
    }
    Ok(())
}

/// Moves the one file in `dir` whose name starts with `prefix` to `to`.
fn move_single(dir: &Path, prefix: &str, to: &Path) -> Result<()> {
    let found: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("reading {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(prefix)))
        .collect();
    let [single] = found.as_slice() else {
        bail!("expected one {prefix}* in {}, found {}", dir.display(), found.len());
    };
    fs::rename(single, to).with_context(|| format!("moving {} to {}", single.display(), to.display()))
}

fn remove_scratch(scratch: &Path) {
    if let Err(err) = fs::remove_dir_all(scratch) {
        eprintln!("xtask: warning: cannot remove {}: {err}", scratch.display());
    }
}
