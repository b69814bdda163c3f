//! Command-line surface (DESIGN.md): `tracer trace`, `tracer agent`,
//! `tracer top`, `tracer doctor`, shared filters and analysis thresholds. Values are
//! validated here; a bad one is a usage error (exit code 2). The only
//! module that knows clap: flags become the plain types of the layers
//! below (`Filter`, `Thresholds`, `Backend`) here.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::{
    analysis::Thresholds,
    load::probes::Backend,
    model::filter::{Cidr, Filter},
};

#[derive(Debug, Parser)]
#[command(name = "tracer", version, about = "Kernel-exact TCP socket and bandwidth tracer (eBPF)")]
pub(crate) struct Cli {
    #[command(subcommand)]
    pub(crate) command: Command,
}

#[derive(Debug, Subcommand)]
pub(crate) enum Command {
    /// Trace for a while, then print a report (Ctrl-C ends early and still reports).
    Trace(TraceArgs),
    /// Run until SIGTERM/SIGINT, serving Prometheus metrics, a JSON API and a dashboard.
    Agent(AgentArgs),
    /// Show what this kernel supports and which attach backend would run.
    Doctor(DoctorArgs),
    /// A live full-screen view of processes, flows, ports, sockets and findings (until `q`).
    Top(TopArgs),
}

/// Parses a duration such as `30s`, `500ms`, `10m`, `1h`; zero is refused.
pub(crate) fn parse_duration(text: &str) -> Result<Duration, String> {
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

/// `--container`: a container name, a Kubernetes `namespace/pod/container`
/// or a prefix of the id.
fn parse_container(text: &str) -> Result<String, String> {
    if text.is_empty() || text.len() > 512 || text.chars().any(|c| c.is_control() || c.is_whitespace()) {
        return Err(format!(
            "'{}' is not a container (a name, namespace/pod/container, or an id prefix)",
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

/// `--max-sockets`: 1024 up to 8M (the table gets twice as many slots, a
/// power of two).
fn parse_max_sockets(text: &str) -> Result<u32, String> {
    let n: u32 = text.parse().map_err(|_| format!("'{text}' is not a number of sockets"))?;
    if !(1024..=1 << 23).contains(&n) {
        return Err(format!("{n} is out of range (1024 to 8388608)"));
    }
    Ok(n)
}

fn parse_growth_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 1.0 => Ok(v),
        _ => Err(format!("'{text}' must be a number greater than 1 (e.g. 1.5)")),
    }
}

#[derive(Debug, Clone, Args)]
pub(crate) struct FilterArgs {
    /// Only this process (thread-group id); repeat for several.
    #[arg(long = "pid", value_name = "PID", value_parser = parse_pid)]
    pub(crate) pids: Vec<u32>,
    /// Only processes with this exact name (as /proc/PID/comm shows it); repeatable.
    #[arg(long = "comm", value_name = "NAME", value_parser = parse_comm)]
    pub(crate) comms: Vec<String>,
    /// Only sockets with this local or remote port; repeatable.
    #[arg(long = "port", value_name = "PORT", value_parser = parse_port)]
    pub(crate) ports: Vec<u16>,
    /// Only sockets whose remote address is in this network (IPv4 CIDRs also
    /// match IPv4-mapped IPv6); repeatable.
    #[arg(long = "remote", value_name = "CIDR")]
    pub(crate) remotes: Vec<Cidr>,
    /// Only processes in this container: its name, `namespace/pod/container`
    /// (Kubernetes), or a prefix of its id; repeatable.
    #[arg(long = "container", value_name = "NAME|ID-PREFIX", value_parser = parse_container)]
    pub(crate) containers: Vec<String>,
}

impl FilterArgs {
    pub(crate) fn filter(&self) -> Filter {
        Filter {
            pids: self.pids.clone(),
            comms: self.comms.clone(),
            ports: self.ports.clone(),
            remotes: self.remotes.clone(),
            containers: self.containers.clone(),
        }
    }
}

impl AnalysisArgs {
    pub(crate) fn thresholds(&self) -> Thresholds {
        Thresholds {
            growth_ratio: self.growth_ratio,
            close_wait_age_secs: self.close_wait_age.as_secs_f64(),
            retransmit_ratio: self.retransmit_ratio,
            churn_rate: self.churn_rate,
            rtt_ratio: self.rtt_ratio,
            window_secs: self.analysis_window.map(|d| d.as_secs_f64()),
        }
    }
}

/// How the send/receive path is hooked (`--backend`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum BackendArg {
    /// BTF tracepoints `sock:sock_send_length`/`sock_recv_length` (kernel >= 6.3).
    Tracepoint,
    /// fexit on `tcp_sendmsg`/`tcp_recvmsg` (BTF kernels >= 5.5).
    Fentry,
    /// kprobes on `tcp_sendmsg`/`tcp_recvmsg` (any kernel with kprobes).
    Kprobe,
}

impl From<BackendArg> for Backend {
    fn from(arg: BackendArg) -> Self {
        match arg {
            BackendArg::Tracepoint => Backend::Tracepoint,
            BackendArg::Fentry => Backend::Fentry,
            BackendArg::Kprobe => Backend::Kprobe,
        }
    }
}

/// Thresholds of the analysis (findings).
#[derive(Debug, Clone, Args)]
pub(crate) struct AnalysisArgs {
    /// Flag traffic growth when the fitted end rate / start rate exceeds this
    /// (decay: below its inverse).
    #[arg(long, value_name = "RATIO", default_value = "1.5", value_parser = parse_growth_ratio)]
    pub(crate) growth_ratio: f64,
    /// Flag sockets in CLOSE_WAIT for longer than this.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) close_wait_age: Duration,
    /// Flag a remote whose retransmitted/sent segments exceed this.
    #[arg(long, value_name = "RATIO", default_value = "0.02", value_parser = parse_positive_ratio)]
    pub(crate) retransmit_ratio: f64,
    /// Flag a remote with more new connections per second than this.
    #[arg(long, value_name = "PER_SEC", default_value = "10", value_parser = parse_positive_ratio)]
    pub(crate) churn_rate: f64,
    /// Flag a remote whose RTT rises by this factor (and by 5 ms at least)
    /// over the window.
    #[arg(long, value_name = "RATIO", default_value = "2.0", value_parser = parse_growth_ratio)]
    pub(crate) rtt_ratio: f64,
    /// Analyse only the last DURATION of history (default: all of it).
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub(crate) analysis_window: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Format {
    Table,
    Json,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct TraceArgs {
    /// How long to trace.
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = parse_duration)]
    pub(crate) duration: Duration,
    /// Sampling interval of the timeline.
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub(crate) interval: Duration,
    /// Report format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: Format,
    /// Write the report to FILE instead of stdout.
    #[arg(long, value_name = "FILE")]
    pub(crate) output: Option<PathBuf>,
    /// Attach backend (default: the cheapest one this kernel supports).
    #[arg(long, value_enum)]
    pub(crate) backend: Option<BackendArg>,
    /// Sockets the kernel side's table is sized for (1024 to 8M; twice as
    /// many slots, ~460 bytes of kernel memory per socket). Sockets it
    /// cannot place are counted in `untracked_sockets`, and the tracked
    /// ones stay exact.
    #[arg(long, value_name = "N", default_value = "65536", value_parser = parse_max_sockets)]
    pub(crate) max_sockets: u32,
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    #[command(flatten)]
    pub(crate) analysis: AnalysisArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct AgentArgs {
    /// Address to serve HTTP on (loopback unless you say otherwise).
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:9669")]
    pub(crate) listen: SocketAddr,
    /// Collection interval.
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub(crate) interval: Duration,
    /// History kept for the report and the analysis.
    #[arg(long, value_name = "DURATION", default_value = "15m", value_parser = parse_duration)]
    pub(crate) window: Duration,
    /// Add a `pid` label to flow metrics (raises cardinality).
    #[arg(long)]
    pub(crate) metrics_pid_label: bool,
    /// At most this many series per metric, the rest summed into "other"
    /// (which takes two of them for flow metrics, one per role).
    #[arg(long, value_name = "N", default_value = "50", value_parser = clap::value_parser!(u64).range(3..=100_000))]
    pub(crate) metrics_top_n: u64,
    /// Drop series of flows quiet for this long.
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = parse_duration)]
    pub(crate) metrics_expiry: Duration,
    /// Attach backend (default: the cheapest one this kernel supports).
    #[arg(long, value_enum)]
    pub(crate) backend: Option<BackendArg>,
    /// Sockets the kernel side can track at once (see `trace --help`).
    #[arg(long, value_name = "N", default_value = "65536", value_parser = parse_max_sockets)]
    pub(crate) max_sockets: u32,
    /// TLS and basic auth, in the web configuration format of Prometheus'
    /// exporter-toolkit (`tls_server_config`, `basic_auth_users` with bcrypt
    /// hashes, `http_server_config.headers`); re-read on SIGHUP.
    #[arg(long = "web.config.file", value_name = "FILE")]
    pub(crate) web_config_file: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    #[command(flatten)]
    pub(crate) analysis: AnalysisArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct TopArgs {
    /// Refresh interval (rates are per second over it).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub(crate) interval: Duration,
    /// History the analysis (findings) looks at.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_duration)]
    pub(crate) window: Duration,
    /// Attach backend (default: the cheapest one this kernel supports).
    #[arg(long, value_enum)]
    pub(crate) backend: Option<BackendArg>,
    /// Sockets the kernel side can track at once (see `trace --help`).
    #[arg(long, value_name = "N", default_value = "65536", value_parser = parse_max_sockets)]
    pub(crate) max_sockets: u32,
    #[command(flatten)]
    pub(crate) filters: FilterArgs,
    #[command(flatten)]
    pub(crate) analysis: AnalysisArgs,
}

#[derive(Debug, Clone, Args)]
pub(crate) struct DoctorArgs {
    /// Output format.
    #[arg(long, value_enum, default_value = "table")]
    pub(crate) format: Format,
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
            "--container",
            "web",
            "--container",
            "4e1b1dfc",
        ])
        .expect("parses");
        let Command::Trace(args) = cli.command else { panic!("not trace") };
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.filters.pids, vec![1, 2]);
        assert_eq!(args.format, Format::Json);
        assert_eq!(args.filters.filter().containers, ["web", "4e1b1dfc"]);
        let cli = parse(&["agent", "--listen", "127.0.0.1:0", "--metrics-top-n", "5"]).expect("parses");
        assert!(matches!(cli.command, Command::Agent(_)));
        let cli = parse(&["top", "--interval", "2s", "--port", "443", "--max-sockets", "2048"]).expect("parses");
        let Command::Top(args) = cli.command else { panic!("not top") };
        assert_eq!(
            (args.interval, args.filters.ports.clone(), args.max_sockets),
            (Duration::from_secs(2), vec![443], 2048)
        );
    }

    #[test]
    fn backend_values_are_the_backends_names() {
        for arg in BackendArg::value_variants() {
            let value = arg.to_possible_value().expect("listed");
            assert_eq!(value.get_name(), Backend::from(*arg).as_str());
        }
        let cli = parse(&["agent", "--backend", "fentry"]).expect("parses");
        let Command::Agent(args) = cli.command else { panic!("not agent") };
        assert_eq!(args.backend.map(Backend::from), Some(Backend::Fentry));
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
            &["trace", "--container", ""],
            &["agent", "--container", "a b"],
            &["trace", "--growth-ratio", "0.5"],
            &["agent", "--listen", "nowhere"],
            &["trace", "--max-sockets", "1000"],
            &["agent", "--max-sockets", "lots"],
            &["top", "--interval", "0s"],
            &["top", "--max-sockets", "10"],
        ] {
            let err = parse(bad).expect_err("must fail");
            assert_ne!(err.exit_code(), 0, "{bad:?}");
        }
    }
}
