//! `cargo xtask dist`: a release build of `tracer` (eBPF programs embedded)
//! packaged as `tracer_<version>_<arch>.deb` with `dpkg-deb --build` from a
//! staged tree: `/usr/bin/tracer`, the systemd unit, `/etc/default/tracer`
//! (a conffile), the README, the license, the Grafana dashboard and the alert
//! rules, and maintainer scripts that create the `tracer` system user on
//! install and remove it on purge. Nothing is enabled or started on install.
//!
//! It also prepares what the deployment tests (`tests/tests/deploy.rs`) use:
//! [`prepare_tests`] packages the binary under test the same way and installs
//! the tools the tests call (a venv with `kubernetes-validate`, the npm
//! package with the prometheus-operator CRD validators).

use std::{
    ffi::OsString,
    fs,
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context as _, Result};
use clap::{Args, ValueEnum};

use crate::{run, setup, workspace_root};

/// Where the deployment tests' tools are kept between runs.
const TOOLS_DIR: &str = "tracer-deploy";
/// The PyPI package that bundles the Kubernetes API schemas (offline).
const KUBERNETES_VALIDATE: &str = "kubernetes-validate==1.37.0";
/// The npm package holding validators compiled from the published
/// prometheus-operator CRD schemas (PodMonitor, PrometheusRule).
const PROMETHEUS_OPERATOR_MODELS: &str = "@kubernetes-models/prometheus-operator@6.0.0";

#[derive(Debug, Clone, Args)]
pub struct DistArgs {
    /// Package this binary instead of making a release build.
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Directory the package is written to.
    #[arg(long, value_name = "DIR", default_value = "target/dist")]
    pub out: PathBuf,
    /// Compression of the package's data.
    #[arg(long, value_enum, default_value = "xz")]
    pub compression: Compression,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Compression {
    Xz,
    Gzip,
    None,
}

pub fn dist(args: DistArgs) -> Result<()> {
    let binary = match args.binary {
        Some(binary) => binary,
        None => {
            setup::setup()?;
            crate::build(true)?
        }
    };
    let out = if args.out.is_absolute() { args.out } else { workspace_root().join(args.out) };
    let deb = package(&binary, &out, args.compression)?;
    println!("{}", deb.display());
    Ok(())
}

/// The workspace's version (`[workspace.package] version`).
fn version() -> Result<String> {
    let manifest = workspace_root().join("Cargo.toml");
    let text = fs::read_to_string(&manifest).with_context(|| format!("reading {}", manifest.display()))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package {
            if let Some(value) = line.strip_prefix("version").map(str::trim).and_then(|v| v.strip_prefix('=')) {
                return Ok(value.trim().trim_matches('"').to_owned());
            }
        }
    }
    bail!("no version in [workspace.package] of {}", manifest.display())
}

fn output(cmd: &mut Command) -> Result<String> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().with_context(|| format!("starting {shown}"))?;
    if !out.status.success() {
        bail!("{shown} failed: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

/// The newest `GLIBC_2.N` symbol version the binary needs: the package's
/// `libc6 (>= 2.N)` dependency (the binary links glibc dynamically).
fn glibc_needed(binary: &Path) -> Result<String> {
    let text = output(Command::new("readelf").arg("--version-info").arg("--wide").arg(binary))?;
    let mut best: Option<(u32, u32)> = None;
    for word in text.split_whitespace() {
        let Some(rest) = word.strip_prefix("GLIBC_") else { continue };
        let mut parts = rest.split('.').map(|p| p.parse::<u32>());
        if let (Some(Ok(major)), Some(Ok(minor))) = (parts.next(), parts.next()) {
            best = best.max(Some((major, minor)));
        }
    }
    let (major, minor) = best.with_context(|| format!("{} needs no GLIBC symbol version", binary.display()))?;
    Ok(format!("{major}.{minor}"))
}

fn copy(from: &Path, to: &Path, mode: u32) -> Result<u64> {
    if let Some(dir) = to.parent() {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let size = fs::copy(from, to).with_context(|| format!("copying {} to {}", from.display(), to.display()))?;
    fs::set_permissions(to, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", to.display()))?;
    Ok(size)
}

/// The Debian changelog of a native package, gzipped (`gzip -9n`).
fn changelog(path: &Path, version: &str) -> Result<u64> {
    // The last commit's date keeps the package reproducible.
    let date = output(Command::new("git").args(["log", "-1", "--format=%aD"]).current_dir(workspace_root()))
        .or_else(|_| output(Command::new("date").arg("-R")))?;
    let text = format!(
        "tracer ({version}) unstable; urgency=medium\n\n  * Release {version}: see README.md.\n\n -- tracer developers <tracer@example.invalid>  {date}\n"
    );
    let plain = path.with_extension("");
    fs::write(&plain, text).with_context(|| format!("writing {}", plain.display()))?;
    run(Command::new("gzip").args(["-9n", "--force"]).arg(&plain))?;
    fs::set_permissions(path, fs::Permissions::from_mode(0o644))
        .with_context(|| format!("setting the mode of {}", path.display()))?;
    Ok(fs::metadata(path).map(|m| m.len()).unwrap_or(0))
}

/// Stages the package tree and builds `tracer_<version>_<arch>.deb` in `out`.
pub fn package(binary: &Path, out: &Path, compression: Compression) -> Result<PathBuf> {
    let root = workspace_root();
    let deploy = root.join("deploy");
    let version = version()?;
    let arch = output(Command::new("dpkg").arg("--print-architecture"))?;
    let glibc = glibc_needed(binary)?;
    let stage = out.join(format!("tracer_{version}_{arch}"));
    if stage.exists() {
        fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    }
    // (source, path in the package, mode)
    let files: [(PathBuf, &str, u32); 9] = [
        (binary.to_path_buf(), "usr/bin/tracer", 0o755),
        (deploy.join("systemd/tracer.service"), "usr/lib/systemd/system/tracer.service", 0o644),
        (deploy.join("debian/default"), "etc/default/tracer", 0o644),
        (root.join("README.md"), "usr/share/doc/tracer/README.md", 0o644),
        (deploy.join("debian/copyright"), "usr/share/doc/tracer/copyright", 0o644),
        (
            deploy.join("systemd/tracer.service.d/pre-5.8-kernel.conf"),
            "usr/share/doc/tracer/examples/tracer.service.d/pre-5.8-kernel.conf",
            0o644,
        ),
        (deploy.join("grafana/tracer.json"), "usr/share/tracer/grafana/tracer.json", 0o644),
        (deploy.join("prometheus/rules.yml"), "usr/share/tracer/prometheus/rules.yml", 0o644),
        (deploy.join("prometheus/rules_test.yml"), "usr/share/tracer/prometheus/rules_test.yml", 0o644),
    ];
    let mut installed_bytes = 0;
    for (from, to, mode) in &files {
        installed_bytes += copy(from, &stage.join(to), *mode)?;
    }
    // As dh_strip does: no symbols or debug sections in the installed binary
    // (the eBPF objects it embeds are data, untouched).
    let staged_binary = stage.join("usr/bin/tracer");
    run(Command::new("strip")
        .args(["--remove-section=.comment", "--remove-section=.note", "--strip-unneeded"])
        .arg(&staged_binary))?;
    installed_bytes -= fs::metadata(binary).map(|m| m.len()).unwrap_or(0);
    installed_bytes += fs::metadata(&staged_binary).map(|m| m.len()).unwrap_or(0);
    installed_bytes += changelog(&stage.join("usr/share/doc/tracer/changelog.gz"), &version)?;
    let control_dir = stage.join("DEBIAN");
    for script in ["postinst", "prerm", "postrm"] {
        copy(&deploy.join("debian").join(script), &control_dir.join(script), 0o755)?;
    }
    fs::write(control_dir.join("conffiles"), "/etc/default/tracer\n").context("writing DEBIAN/conffiles")?;
    let control = format!(
        "Package: tracer\n\
         Version: {version}\n\
         Architecture: {arch}\n\
         Maintainer: tracer developers <tracer@example.invalid>\n\
         Installed-Size: {size}\n\
         Depends: libc6 (>= {glibc}), adduser\n\
         Section: net\n\
         Priority: optional\n\
         Description: kernel-exact TCP socket and bandwidth tracer (eBPF)\n \
         Per process and per remote endpoint: bytes sent and received, connections\n \
         by TCP state, CLOSE_WAIT sockets with their owner and age, retransmits,\n \
         resets and failed connects, with findings when something goes wrong.\n \
         .\n \
         `tracer trace` reports from the command line; `tracer agent` (the\n \
         tracer.service unit, not enabled on install) serves Prometheus metrics.\n",
        size = installed_bytes.div_ceil(1024),
    );
    fs::write(control_dir.join("control"), control).context("writing DEBIAN/control")?;
    let deb = out.join(format!("tracer_{version}_{arch}.deb"));
    let mut cmd = Command::new("dpkg-deb");
    cmd.arg("--root-owner-group");
    match compression {
        Compression::Xz => cmd.arg("-Zxz"),
        Compression::Gzip => cmd.args(["-Zgzip", "-z1"]),
        Compression::None => cmd.arg("-Znone"),
    };
    run(cmd.arg("--build").arg(&stage).arg(&deb))?;
    fs::remove_dir_all(&stage).with_context(|| format!("removing {}", stage.display()))?;
    Ok(deb)
}

fn cache_dir() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/root/.cache"))
        .join(TOOLS_DIR)
}

/// Runs `check`; when it fails, installs the Debian `package` and retries.
fn ensure_debian(package: &str, check: &mut Command) -> Result<()> {
    if check.output().is_ok_and(|o| o.status.success()) {
        return Ok(());
    }
    eprintln!("xtask: installing the Debian package {package} for the deployment tests");
    run(Command::new("apt-get").args(["update", "-q"]).env("DEBIAN_FRONTEND", "noninteractive"))?;
    run(Command::new("apt-get")
        .args(["install", "-y", "-q", "--no-install-recommends", package])
        .env("DEBIAN_FRONTEND", "noninteractive"))
}

/// `kubernetes-validate` in a venv of Debian's python3 (pinned; kept).
fn ensure_kubernetes_validate(tools: &Path) -> Result<PathBuf> {
    let venv = tools.join("venv");
    let marker = venv.join("installed");
    let bin = venv.join("bin");
    if fs::read_to_string(&marker).ok().as_deref() == Some(KUBERNETES_VALIDATE) {
        return Ok(bin);
    }
    ensure_debian("python3-venv", Command::new("/usr/bin/python3").args(["-c", "import venv, ensurepip"]))?;
    if venv.exists() {
        fs::remove_dir_all(&venv).with_context(|| format!("removing {}", venv.display()))?;
    }
    run(Command::new("/usr/bin/python3").args(["-m", "venv"]).arg(&venv))?;
    run(Command::new(bin.join("pip")).args(["install", "-q", "--disable-pip-version-check", KUBERNETES_VALIDATE]))?;
    fs::write(&marker, KUBERNETES_VALIDATE).with_context(|| format!("writing {}", marker.display()))?;
    Ok(bin)
}

/// The prometheus-operator models (validators of the CRD schemas) from npm.
fn ensure_crd_validators(tools: &Path) -> Result<PathBuf> {
    let dir = tools.join("npm");
    let marker = dir.join("installed");
    if fs::read_to_string(&marker).ok().as_deref() == Some(PROMETHEUS_OPERATOR_MODELS) {
        return Ok(dir);
    }
    setup::install_packages(&[("nodejs", "node"), ("npm", "npm")], "the deployment tests")?;
    fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    fs::write(dir.join("package.json"), "{\"name\": \"tracer-deploy-tests\", \"private\": true}\n")
        .context("writing package.json")?;
    run(Command::new("npm")
        .args(["install", "--no-audit", "--no-fund", "--silent", "--prefix"])
        .arg(&dir)
        .arg(PROMETHEUS_OPERATOR_MODELS))?;
    fs::write(&marker, PROMETHEUS_OPERATOR_MODELS).with_context(|| format!("writing {}", marker.display()))?;
    Ok(dir)
}

/// Before the integration tests: installs the deployment tests' tools and
/// packages `tracer` (the binary under test) as a .deb. Returns the
/// environment the tests read (`TRACER_DEB`, `TRACER_DEPLOY_VENV`,
/// `TRACER_DEPLOY_NPM`).
pub fn prepare_tests(tracer: &Path) -> Result<Vec<(&'static str, OsString)>> {
    setup::install_packages(
        &[
            ("dpkg", "dpkg-deb"),
            ("binutils", "readelf"),
            ("adduser", "adduser"),
            ("systemd", "systemd-analyze"),
            ("util-linux", "setpriv"),
            ("strace", "strace"),
            ("prometheus", "promtool"),
            ("nftables", "nft"),
            ("iproute2", "ip"),
        ],
        "the deployment tests",
    )?;
    let tools = cache_dir();
    fs::create_dir_all(&tools).with_context(|| format!("creating {}", tools.display()))?;
    let venv = ensure_kubernetes_validate(&tools)?;
    let npm = ensure_crd_validators(&tools)?;
    let out = workspace_root().join("target").join("deploy-test");
    let deb = package(tracer, &out, Compression::Gzip)?;
    Ok(vec![
        ("TRACER_DEB", deb.into_os_string()),
        ("TRACER_DEPLOY_VENV", venv.into_os_string()),
        ("TRACER_DEPLOY_NPM", npm.into_os_string()),
    ])
}
