//! Command-line surface (DESIGN.md): `tracer trace`, `tracer agent`,
//! `tracer doctor`, shared filters and analysis thresholds. Values are
//! validated here; a bad one is a usage error (exit code 2).

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    filter::{Cidr, Filter},
    probes::Backend,
};

#[derive(Debug, Parser)]
#[command(name = "tracer", version, about = "Kernel-exact TCP socket and bandwidth tracer (eBPF)")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace for a while, then print a report (Ctrl-C ends early and still reports).
    Trace(TraceArgs),
    /// Run until SIGTERM/SIGINT, serving Prometheus metrics, a JSON API and a dashboard.
    Agent(AgentArgs),
    /// Show what this kernel supports and which attach backend would run.
    Doctor(DoctorArgs),
}

/// Parses a duration such as `30s`, `500ms`, `10m`, `1h`; zero is refused.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text)
        .map_err(|e| format!("'{text}' is not a duration ({e}); use e.g. 30s, 500ms, 10m"))?;
    if duration.is_zero() {
        return Err(format!("'{text}' must be longer than zero"));
    }
    Ok(duration)
}

fn parse_port(text: &str) -> Result<u16, String> {
    match text.parse::<u32>() {
        Ok(port @ 1..=65535) => Ok(port as u16),
        _ => Err(format!("'{text}' is not a TCP port (1-65535)")),
    }
}

fn parse_pid(text: &str) -> Result<u32, String> {
    match text.parse::<u32>() {
        Ok(pid) if pid > 0 => Ok(pid),
        _ => Err(format!("'{text}' is not a process id")),
    }
}

fn parse_comm(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 15 {
        return Err(format!(
            "'{}' is not a process name (1-15 bytes, as /proc/PID/comm shows it)",
            text.escape_debug()
        ));
    }
    Ok(text.to_owned())
}

fn parse_positive_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 => Ok(v),
        _ => Err(format!("'{text}' is not a positive number")),
    }
}

fn parse_growth_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 1.0 => Ok(v),
        _ => Err(format!("'{text}' must be a number greater than 1 (e.g. 1.5)")),
    }
}

#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only this process (thread-group id); repeat for several.
    #[arg(long = "pid", value_name = "PID", value_parser = parse_pid)]
    pub pids: Vec<u32>,
    /// Only processes with this exact name (as /proc/PID/comm shows it); repeatable.
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub comms: Vec<String>,
    /// Only sockets with this local or remote port; repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub ports: Vec<u16>,
    /// Only sockets whose remote address is in this network (IPv4 CIDRs also
    /// match IPv4-mapped IPv6); repeatable.
    #[arg(long = "remote", value_name = "CIDR")]
    pub remotes: Vec<Cidr>,
}

impl FilterArgs {
    pub fn filter(&self) -> Filter {
        Filter {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            ports: self.ports.clone(),
            remotes: self.remotes.clone(),
        }
    }
}

/// Thresholds of the analysis (findings).
#[derive(Debug, Clone, Args)]
pub struct AnalysisArgs {
    /// Flag traffic growth when the fitted end rate / start rate exceeds this
    /// (decay: below its inverse).
    #[arg(long, value_name = "RATIO", default_value = "1.5", value_parser = parse_growth_ratio)]
    pub growth_ratio: f64,
    /// Flag sockets in CLOSE_WAIT for longer than this.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub close_wait_age: Duration,
    /// Flag a remote whose retransmitted/sent segments exceed this.
    #[arg(long, value_name = "RATIO", default_value = "0.02", value_parser = parse_positive_ratio)]
    pub retransmit_ratio: f64,
    /// Flag a remote with more new connections per second than this.
    #[arg(long, value_name = "PER_SEC", default_value = "10", value_parser = parse_positive_ratio)]
    pub churn_rate: f64,
    /// Analyse only the last DURATION of history (default: all of it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub analysis_window: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    /// How long to trace.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Sampling interval of the timeline.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub interval: Duration,
    /// Report format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Attach backend (default: the cheapest one this kernel supports).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
}

#[derive(Debug, Clone, Args)]
pub struct AgentArgs {
    /// Address to serve HTTP on (loopback unless you say otherwise).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9669")]
    pub listen: SocketAddr,
    /// Collection interval.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub interval: Duration,
    /// History kept for the report and the analysis.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub window: Duration,
    /// Add a `pid` label to flow metrics (raises cardinality).
    #[arg(long)]
    pub metrics_pid_label: bool,
    /// At most this many series per metric, the rest summed into "other"
    /// (which takes two of them for flow metrics, one per role).
    #[arg(long, value_name = "N", default_value = "50", value_parser = clap::value_parser!(u64).range(3..=100_000))]
    pub metrics_top_n: u64,
    /// Drop series of flows quiet for this long.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub metrics_expiry: Duration,
    /// Attach backend (default: the cheapest one this kernel supports).
    #[arg(long, value_enum)]
    pub backend: Option<Backend>,
    #[command(flatten)]
    pub filters: FilterArgs,
    #[command(flatten)]
    pub analysis: AnalysisArgs,
}

#[derive(Debug, Clone, Args)]
pub struct DoctorArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub format: Format,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("tracer").chain(args.iter().copied()))
    }

    #[test]
    fn accepts_the_documented_flags() {
        let cli = parse(&[
            "trace",
            "--duration",
            "10s",
            "--interval",
            "500ms",
            "--format",
            "json",
            "--pid",
            "1",
            "--pid",
            "2",
            "--port",
            "443",
            "--remote",
            "10.0.0.0/8",
            "--comm",
            "curl",
        ])
        .expect("parses");
        let Command::Trace(args) = cli.command else { panic!("not trace") };
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.filters.pids, vec![1, 2]);
        assert_eq!(args.format, Format::Json);
        let cli = parse(&["agent", "--listen", "127.0.0.1:0", "--metrics-top-n", "5"]).expect("parses");
        assert!(matches!(cli.command, Command::Agent(_)));
    }

    #[test]
    fn refuses_bad_values() {
        for bad in [
            &["trace", "--port", "70000"][..],
            &["trace", "--port", "0"],
            &["trace", "--duration", "soon"],
            &["trace", "--duration", "0s"],
            &["trace", "--remote", "10.0.0.0/33"],
            &["trace", "--pid", "-3"],
            &["trace", "--bogus"],
            &["trace", "--comm", "a-name-longer-than-15"],
            &["trace", "--growth-ratio", "0.5"],
            &["agent", "--listen", "nowhere"],
        ] {
            let err = parse(bad).expect_err("must fail");
            assert_ne!(err.exit_code(), 0, "{bad:?}");
        }
    }
}
