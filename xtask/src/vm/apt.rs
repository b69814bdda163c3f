//! A private apt configuration: its own sources list, package lists and
//! package cache under a directory of ours, so that fetching guest kernels
//! (from trixie too) or qemu (from backports) never changes the host's apt
//! sources and never offers the host an upgrade.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context as _, Result};

use super::{command_output, run_in};

/// Where Debian's main archive is, used when the host's sources name none.
const DEFAULT_MIRROR: &str = "http://deb.debian.org/debian";
const DEFAULT_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";

/// One private apt configuration rooted at `dir`.
pub struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    /// Writes a sources list of `suites` (main component, amd64 only) from
    /// the host's Debian mirror and creates the state directories apt needs.
    pub fn new(dir: &Path, suites: &[&str]) -> Result<Self> {
        for sub in ["parts", "lists/partial", "cache/archives/partial"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let mirror = host_mirror();
        let signed_by =
            if Path::new(DEFAULT_KEYRING).exists() { format!(" signed-by={DEFAULT_KEYRING}") } else { String::new() };
        let sources: String =
            suites.iter().map(|suite| format!("deb [arch=amd64{signed_by}] {mirror} {suite} main\n")).collect();
        let list = dir.join("sources.list");
        fs::write(&list, sources).with_context(|| format!("writing {}", list.display()))?;
        Ok(Self { dir: dir.to_owned() })
    }

    /// `program` (apt-get, apt-cache) told to use only this configuration's
    /// sources, lists and cache. DEP-11 metadata and translations are
    /// skipped: nothing here reads them and they triple the download.
    pub fn command(&self, program: &str) -> Command {
        let mut cmd = Command::new(program);
        let dir = self.dir.display();
        for option in [
            format!("Dir::Etc::SourceList={dir}/sources.list"),
            format!("Dir::Etc::SourceParts={dir}/parts"),
            format!("Dir::State::Lists={dir}/lists"),
            format!("Dir::Cache={dir}/cache"),
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled=false".into(),
            "Acquire::Languages=none".into(),
            // Another apt run on the host (a test setup) may hold the lock.
            "DPkg::Lock::Timeout=120".into(),
            // Root downloading into a directory _apt cannot write is fine here.
            "APT::Sandbox::User=root".into(),
        ] {
            cmd.arg("-o").arg(option);
        }
        cmd.env("DEBIAN_FRONTEND", "noninteractive");
        cmd
    }

    /// Runs `apt-get ARGS` with this configuration in `cwd`, showing the
    /// command without the options that make it private.
    pub fn apt_get(&self, args: &[&str], cwd: &Path) -> Result<()> {
        eprintln!("xtask: $ apt-get {} (private apt configuration {})", args.join(" "), self.dir.display());
        run_in(self.command("apt-get").args(args), cwd)
    }

    /// Refreshes the package lists (a few seconds; done only when something
    /// has to be downloaded, so that a stale list never names a package the
    /// mirror has dropped).
    pub fn update(&self) -> Result<()> {
        self.apt_get(&["update", "-q"], &self.dir)
    }

    /// The newest package whose name matches `regex` (apt-cache search
    /// syntax), by the numbers in its name: kernel ABI names such as
    /// `linux-image-6.1.0-50-cloud-amd64` sort that way, and apt keeps
    /// several ABIs in one suite during a point release.
    pub fn newest_package(&self, regex: &str) -> Result<String> {
        let found = command_output(self.command("apt-cache").args(["search", "--names-only", regex]))?;
        found
            .lines()
            .filter_map(|line| line.split_whitespace().next())
            .max_by_key(|name| numbers_in(name))
            .map(str::to_owned)
            .with_context(|| format!("no package matches {regex} in {}", self.dir.join("sources.list").display()))
    }

    /// The version `apt-get download NAME` would fetch.
    pub fn candidate_version(&self, package: &str) -> Result<String> {
        let policy = command_output(self.command("apt-cache").args(["policy", package]))?;
        policy
            .lines()
            .find_map(|line| line.trim().strip_prefix("Candidate: "))
            .filter(|v| *v != "(none)")
            .map(str::to_owned)
            .with_context(|| format!("apt has no candidate for {package}"))
    }

    /// Downloads `package`'s .deb (from `suite`, if given) into `into` and
    /// returns its path.
    pub fn download(&self, package: &str, suite: Option<&str>, into: &Path) -> Result<PathBuf> {
        fs::create_dir_all(into).with_context(|| format!("creating {}", into.display()))?;
        let wanted = match suite {
            Some(suite) => format!("{package}/{suite}"),
            None => package.to_owned(),
        };
        self.apt_get(&["download", "-q", &wanted], into)?;
        let prefix = format!("{package}_");
        fs::read_dir(into)
            .with_context(|| format!("reading {}", into.display()))?
            .filter_map(|entry| entry.ok().map(|e| e.path()))
            .find(|path| {
                path.file_name().and_then(|n| n.to_str()).is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .with_context(|| format!("apt-get download {package} left no .deb in {}", into.display()))
    }
}

/// The numbers in a package name, in order: `6.12.107+deb13` -> [6, 12, 107, 13].
fn numbers_in(name: &str) -> Vec<u64> {
    name.split(|c: char| !c.is_ascii_digit()).filter(|s| !s.is_empty()).filter_map(|s| s.parse().ok()).collect()
}

/// The Debian archive URI the host's apt sources use (deb822 `URIs:` or
/// one-line `deb` entries), so that the harness goes through the same
/// mirror the machine is set up for.
fn host_mirror() -> String {
    let mut files = vec![PathBuf::from("/etc/apt/sources.list")];
    if let Ok(dir) = fs::read_dir("/etc/apt/sources.list.d") {
        let mut parts: Vec<PathBuf> = dir
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|ext| ext == "sources" || ext == "list"))
            .collect();
        parts.sort();
        files.extend(parts);
    }
    files
        .iter()
        .filter_map(|path| fs::read_to_string(path).ok())
        .find_map(|text| debian_archive_uri(&text))
        .unwrap_or_else(|| DEFAULT_MIRROR.to_owned())
}

/// The first URI in a sources file that is a Debian main archive (its path
/// ends in `/debian`; `debian-security` and third-party archives do not).
fn debian_archive_uri(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.starts_with('#'))
        .flat_map(|line| {
            let uris: Vec<&str> = if let Some(rest) = line.strip_prefix("URIs:") {
                rest.split_whitespace().collect()
            } else if line.starts_with("deb ") {
                // `deb [options] URI suite components`: the first word with a scheme.
                line.split_whitespace().filter(|w| w.contains("://")).take(1).collect()
            } else {
                Vec::new()
            };
            uris
        })
        .map(|uri| uri.trim_end_matches('/').to_owned())
        .find(|uri| uri.ends_with("/debian"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_abis_sort_by_their_numbers() {
        let names = ["linux-image-6.12.94+deb13-cloud-amd64", "linux-image-6.12.107+deb13-cloud-amd64"];
        assert_eq!(names.iter().max_by_key(|n| numbers_in(n)), Some(&names[1]));
        let names = ["linux-image-6.1.0-50-cloud-amd64", "linux-image-6.1.0-47-cloud-amd64"];
        assert_eq!(names.iter().max_by_key(|n| numbers_in(n)), Some(&names[0]));
    }

    #[test]
    fn finds_the_debian_archive_in_either_sources_format() {
        let deb822 =
            "Types: deb\n# http://snapshot.debian.org/x\nURIs: http://mirror.example/debian/\nSuites: bookworm\n\n\
                      Types: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\n";
        assert_eq!(debian_archive_uri(deb822).as_deref(), Some("http://mirror.example/debian"));
        let one_line = "deb https://packages.cloud.example/apt cloud main\n\
                        deb [arch=amd64] http://ftp.example/debian bookworm main\n";
        assert_eq!(debian_archive_uri(one_line).as_deref(), Some("http://ftp.example/debian"));
        assert_eq!(debian_archive_uri("deb http://security.example/debian-security bookworm-security main"), None);
    }
}
