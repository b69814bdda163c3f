//! A real Prometheus server (Debian's `prometheus`) scraping the agent for
//! the soak: a temporary config and storage directory, a loopback listen
//! address, stopped by its PID (SIGTERM, then SIGKILL if it lingers) and
//! its directory removed when dropped. Read back through its HTTP API.

use std::{
    fs,
    net::{Ipv4Addr, SocketAddr, TcpListener},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context as _, Result};
use serde_json::Value;

use super::checks::Series;
use crate::bench::{tracer::http_get, wait_for_exit};

/// How long Prometheus may take to start, and to stop after SIGTERM.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

pub struct Prometheus {
    child: Child,
    pub addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Starts Prometheus scraping `target` every `interval`, and waits
    /// until it is ready.
    pub fn start(target: SocketAddr, interval: Duration) -> Result<Self> {
        let dir = std::env::temp_dir().join(format!("tracer-soak-prometheus-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let secs = interval.as_secs().max(1);
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: {secs}s\n  evaluation_interval: {secs}s\nscrape_configs:\n  \
                 - job_name: tracer\n    scrape_interval: {secs}s\n    scrape_timeout: {secs}s\n    \
                 static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .with_context(|| format!("writing {}", config.display()))?;
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()?));
        let log = fs::File::create(dir.join("prometheus.log")).context("creating the Prometheus log")?;
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address={addr}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting prometheus")?;
        let mut prometheus = Prometheus { child, addr, dir };
        let deadline = Instant::now() + READY_TIMEOUT;
        while http_get(prometheus.addr, "/-/ready").is_err() {
            if let Some(status) = prometheus.child.try_wait()? {
                bail!("prometheus exited ({status}): {}", prometheus.log_tail());
            }
            if Instant::now() >= deadline {
                bail!("prometheus was not ready within {} s: {}", READY_TIMEOUT.as_secs(), prometheus.log_tail());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(prometheus)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn log_tail(&self) -> String {
        let log = fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(5)..].join("\n")
    }

    /// An instant query at `time` (Unix seconds); the `data.result` array.
    pub fn query(&self, expr: &str, time: f64) -> Result<Vec<Value>> {
        let body = http_get(self.addr, &format!("/api/v1/query?query={}&time={time:.3}", percent_encode(expr)))
            .with_context(|| format!("querying {expr}"))?;
        let json: Value = serde_json::from_str(&body).with_context(|| format!("Prometheus answered {body}"))?;
        if json["status"] != "success" {
            bail!("query {expr}: {body}");
        }
        Ok(json["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The raw samples of every series `selector` matches over the `secs`
    /// before `time` (a range selector, so no step interpolation).
    pub fn raw_series(&self, selector: &str, time: f64, secs: u64) -> Result<Vec<Series>> {
        let result = self.query(&format!("{selector}[{secs}s]"), time)?;
        Ok(result.iter().map(series_of).collect())
    }

    /// Completed scrapes of the agent so far (`up` samples over the run).
    pub fn scrapes(&self, time: f64, secs: u64) -> Result<(usize, usize)> {
        let series = self.raw_series("up", time, secs)?;
        let points: Vec<f64> = series.iter().flat_map(|s| s.points.iter().map(|p| p.1)).collect();
        Ok((points.len(), points.iter().filter(|v| **v == 1.0).count()))
    }

    /// SIGTERM to its PID, SIGKILL if it does not stop in time.
    pub fn stop(&mut self) -> Result<()> {
        if self.child.try_wait()?.is_some() {
            return Ok(());
        }
        let pid = libc::pid_t::try_from(self.child.id()).context("pid out of range")?;
        // SAFETY: kill(2) has no pointer arguments; the PID is our child's,
        // not yet reaped (try_wait above), so it is not reused.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        if wait_for_exit(&mut self.child, STOP_TIMEOUT)?.is_none() {
            self.child.kill().context("killing prometheus")?;
            self.child.wait()?;
            bail!("prometheus did not stop within {} s of SIGTERM; killed", STOP_TIMEOUT.as_secs());
        }
        Ok(())
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        if let Err(error) = self.stop() {
            eprintln!("xtask: soak: {error:#}");
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A matrix entry of the query API as labels and points.
fn series_of(entry: &Value) -> Series {
    let labels = entry["metric"]
        .as_object()
        .map(|m| {
            let mut pairs: Vec<String> =
                m.iter().map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default())).collect();
            pairs.sort();
            pairs.join(",")
        })
        .unwrap_or_default();
    let points = entry["values"]
        .as_array()
        .map(|values| {
            values
                .iter()
                .filter_map(|pair| {
                    let time = pair.get(0)?.as_f64()?;
                    let value = pair.get(1)?.as_str()?.parse::<f64>().ok()?;
                    Some((time, value))
                })
                .collect()
        })
        .unwrap_or_default();
    Series { labels, points }
}

fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).context("finding a free port")?;
    Ok(listener.local_addr()?.port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matrix_entries_become_series() {
        let entry = serde_json::json!({
            "metric": { "__name__": "tracer_events_total", "job": "tracer" },
            "values": [[1700000000.5, "3"], [1700000005.5, "7"]],
        });
        let series = series_of(&entry);
        assert_eq!(series.labels, "__name__=tracer_events_total,job=tracer");
        assert_eq!(series.points, vec![(1700000000.5, 3.0), (1700000005.5, 7.0)]);
    }

    #[test]
    fn queries_are_percent_encoded() {
        assert_eq!(percent_encode("{__name__=~\"a.+\"}[60s]"), "%7B__name__%3D~%22a.%2B%22%7D%5B60s%5D");
    }
}
