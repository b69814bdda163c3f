//! The five views of `tracer top` as rows of text: columns, the value each
//! column sorts by, what filter-as-you-type matches, and the details of a
//! selected row. Names from the kernel are untrusted: [`inert`] makes sure
//! no control or format character reaches the terminal.

use std::{collections::BTreeMap, fmt::Write as _, net::IpAddr};

use super::data::{Activity, Data};
use crate::{
    analysis::Severity,
    model::{Counters, FlowKey, Role},
    output::table::printable,
    units,
};

/// The views, in tab order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum View {
    Processes,
    Flows,
    Ports,
    Sockets,
    Findings,
}

impl View {
    pub(crate) const ALL: [View; 5] = [View::Processes, View::Flows, View::Ports, View::Sockets, View::Findings];

    pub(crate) fn title(self) -> &'static str {
        match self {
            View::Processes => "processes",
            View::Flows => "flows",
            View::Ports => "ports",
            View::Sockets => "sockets",
            View::Findings => "findings",
        }
    }

    pub(crate) fn index(self) -> usize {
        View::ALL.iter().position(|v| *v == self).unwrap_or(0)
    }

    /// Column headers and their widths (the last column of a view fills).
    pub(crate) fn columns(self) -> &'static [Column] {
        match self {
            View::Processes => &PROCESS_COLUMNS,
            View::Flows => &FLOW_COLUMNS,
            View::Ports => &PORT_COLUMNS,
            View::Sockets => &SOCKET_COLUMNS,
            View::Findings => &FINDING_COLUMNS,
        }
    }

    /// The column rows sort by at first.
    pub(crate) fn default_sort(self) -> usize {
        match self {
            View::Processes | View::Flows | View::Ports => 2,
            View::Sockets => 4,
            View::Findings => 0,
        }
    }
}

/// One column: its header, width, and whether it is text (sorted A-Z
/// first) or a number (largest first).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Column {
    pub(crate) header: &'static str,
    pub(crate) width: u16,
    pub(crate) text: bool,
}

const fn text(header: &'static str, width: u16) -> Column {
    Column { header, width, text: true }
}

const fn num(header: &'static str, width: u16) -> Column {
    Column { header, width, text: false }
}

// Widths fit 80 columns with one space between columns; text columns grow
// on wider terminals.
const PROCESS_COLUMNS: [Column; 10] = [
    num("PID", 7),
    text("COMM", 15),
    num("IN/s", 6),
    num("OUT/s", 6),
    num("IN", 6),
    num("OUT", 6),
    num("EST", 4),
    num("CLOSE_W", 7),
    num("OTHER", 5),
    num("RETR", 5),
];
const FLOW_COLUMNS: [Column; 8] = [
    text("COMM", 12),
    text("REMOTE", 22),
    num("IN/s", 6),
    num("OUT/s", 6),
    num("IN", 6),
    num("OUT", 6),
    num("RTT", 7),
    num("RECV-Q", 6),
];
const PORT_COLUMNS: [Column; 9] = [
    text("PORT", 6),
    text("SIDE", 6),
    num("IN/s", 6),
    num("OUT/s", 6),
    num("IN", 6),
    num("OUT", 6),
    num("FLOWS", 5),
    num("CONNS", 5),
    text("PROCESSES", 20),
];
const SOCKET_COLUMNS: [Column; 5] =
    [num("PID", 7), text("COMM", 15), text("LOCAL", 22), text("REMOTE", 22), num("AGE", 8)];
const FINDING_COLUMNS: [Column; 4] = [num("SEV", 4), text("KIND", 16), text("WHO", 22), text("SUMMARY", 30)];

/// What a column sorts by.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum SortValue {
    Num(f64),
    Text(String),
}

/// One row of a view.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Row {
    /// Identifies the row across ticks (the selection follows it).
    pub(crate) key: String,
    pub(crate) cells: Vec<String>,
    pub(crate) sort: Vec<SortValue>,
    /// Lower-case text filter-as-you-type matches (comm, remote, port).
    pub(crate) search: String,
    /// An exited process or a closed flow, kept until it ages out.
    pub(crate) gone: bool,
    pub(crate) severity: Option<Severity>,
    pub(crate) detail: Detail,
}

/// What the selected row shows below the table.
#[derive(Debug, Clone, PartialEq, Default)]
pub(crate) struct Detail {
    pub(crate) lines: Vec<String>,
    /// Bytes (in, out) per interval, oldest first; empty: no history.
    pub(crate) history: Vec<(u64, u64)>,
}

/// `text` safe to draw: control characters escaped (as the table does),
/// and Unicode format characters (bidi overrides such as U+202E,
/// zero-width joiners, ...) shown as `\u{..}`.
pub(crate) fn inert(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in printable(text).chars() {
        if is_format(c) {
            let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
        } else {
            out.push(c);
        }
    }
    out
}

/// Unicode general category Cf (format), plus the other invisible
/// characters that change how the text around them is drawn.
fn is_format(c: char) -> bool {
    matches!(u32::from(c),
        0xAD | 0x600..=0x605 | 0x61C | 0x6DD | 0x70F | 0x890..=0x891 | 0x8E2 | 0x180E
        | 0x200B..=0x200F | 0x202A..=0x202E | 0x2060..=0x2064 | 0x2066..=0x206F
        | 0xFEFF | 0xFFF9..=0xFFFB | 0x110BD | 0x110CD | 0x13430..=0x1343F
        | 0x1BCA0..=0x1BCA3 | 0x1D173..=0x1D17A | 0xE0001 | 0xE0020..=0xE007F
        // Private use and unassigned noncharacters draw unpredictably.
        | 0xE000..=0xF8FF | 0xFFFE..=0xFFFF)
}

/// Bytes in at most 5 characters: `512`, `1.5K`, `230K`, `12M`.
pub(crate) fn short_bytes(n: f64) -> String {
    const UNITS: [&str; 6] = ["", "K", "M", "G", "T", "P"];
    let mut value = n.max(0.0);
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{value:.0}"),
        _ if value < 10.0 => format!("{value:.1}{}", UNITS[unit]),
        _ => format!("{value:.0}{}", UNITS[unit]),
    }
}

fn rate(bytes: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        bytes as f64 / secs
    } else {
        0.0
    }
}

fn endpoint(addr: IpAddr, port: u16) -> String {
    match addr {
        IpAddr::V6(_) => format!("[{addr}]:{port}"),
        IpAddr::V4(_) => format!("{addr}:{port}"),
    }
}

/// Who and where a flow goes: `10.0.0.1:443` for a client (the remote's
/// service port), `10.0.0.1 > :8080` for a server (our service port).
fn flow_remote(key: &FlowKey) -> String {
    match key.role {
        Role::Client => endpoint(key.remote, key.port),
        Role::Server => format!("{} > :{}", key.remote, key.port),
    }
}

/// The in/out rates and totals cells, with their sort values.
fn traffic_cells(activity: &Activity, secs: f64, cells: &mut Vec<String>, sort: &mut Vec<SortValue>) {
    let in_rate = rate(activity.last.rx_bytes, secs);
    let out_rate = rate(activity.last.tx_bytes, secs);
    for value in [in_rate, out_rate, activity.totals.rx_bytes as f64, activity.totals.tx_bytes as f64] {
        cells.push(short_bytes(value));
        sort.push(SortValue::Num(value));
    }
}

/// Two lines: exact bytes since start with the current rates, then the
/// connection counters since start.
fn totals_lines(totals: &Counters, last: &Counters, secs: f64) -> [String; 2] {
    [
        format!(
            "in {} B ({}), out {} B ({}) since start",
            totals.rx_bytes,
            units::rate(last.rx_bytes, secs),
            totals.tx_bytes,
            units::rate(last.tx_bytes, secs),
        ),
        format!(
            "retransmits {}, opened {}, closed {}, failed connects {}, resets {}",
            totals.retransmits,
            totals.opened,
            totals.closed,
            totals.failed_connects,
            totals.resets(),
        ),
    ]
}

fn history(activity: &Activity) -> Vec<(u64, u64)> {
    activity.history.iter().copied().collect()
}

/// Every row of `view`, in no particular order.
pub(crate) fn rows(data: &Data, view: View) -> Vec<Row> {
    match view {
        View::Processes => process_rows(data),
        View::Flows => flow_rows(data),
        View::Ports => port_rows(data),
        View::Sockets => socket_rows(data),
        View::Findings => finding_rows(data),
    }
}

fn process_rows(data: &Data) -> Vec<Row> {
    // What a process talks to, so its row matches a remote or a port.
    let mut peers: BTreeMap<u32, String> = BTreeMap::new();
    for key in data.flows.keys() {
        let text = peers.entry(key.pid).or_default();
        let _ = write!(text, " {}", flow_remote(key));
    }
    data.processes
        .iter()
        .map(|(pid, process)| {
            let comm = inert(&process.comm);
            let established = process.sockets.get("ESTABLISHED").copied().unwrap_or(0);
            let close_wait = process.sockets.get("CLOSE_WAIT").copied().unwrap_or(0);
            let other = process.sockets.values().sum::<u64>() - established - close_wait;
            let activity = &process.activity;
            let mut cells = vec![pid.to_string(), comm.clone()];
            let mut sort = vec![SortValue::Num(f64::from(*pid)), SortValue::Text(comm.clone())];
            traffic_cells(activity, data.interval_secs, &mut cells, &mut sort);
            for value in [established, close_wait, other, activity.totals.retransmits] {
                cells.push(value.to_string());
                sort.push(SortValue::Num(value as f64));
            }
            let states: Vec<String> = process.sockets.iter().map(|(state, n)| format!("{state} {n}")).collect();
            let container =
                process.container.as_deref().map(|c| format!(", container {}", inert(c))).unwrap_or_default();
            Row {
                key: format!("p{pid}"),
                search: format!("{} {pid}{}", process.comm, peers.get(pid).map_or("", String::as_str)).to_lowercase(),
                cells,
                sort,
                gone: !activity.live,
                severity: None,
                detail: Detail {
                    lines: {
                        let [bytes, counters] = totals_lines(&activity.totals, &activity.last, data.interval_secs);
                        vec![
                            format!(
                                "pid {pid} {comm}{container}{}: sockets {}",
                                if activity.live { "" } else { " (exited or no sockets)" },
                                if states.is_empty() { "none".to_owned() } else { states.join(", ") }
                            ),
                            bytes,
                            counters,
                        ]
                    },
                    history: history(activity),
                },
            }
        })
        .collect()
}

fn flow_rows(data: &Data) -> Vec<Row> {
    data.flows
        .iter()
        .map(|(key, flow)| {
            let comm = inert(&flow.comm);
            let remote = flow_remote(key);
            let activity = &flow.activity;
            let mut cells = vec![comm.clone(), remote.clone()];
            let mut sort = vec![SortValue::Text(comm.clone()), SortValue::Text(remote.clone())];
            traffic_cells(activity, data.interval_secs, &mut cells, &mut sort);
            cells.push(flow.rtt_last_us.map_or_else(|| "-".to_owned(), units::duration_us));
            sort.push(SortValue::Num(flow.rtt_last_us.unwrap_or(-1.0)));
            cells.push(flow.recv_queue.map_or_else(|| "-".to_owned(), |q| short_bytes(q as f64)));
            sort.push(SortValue::Num(flow.recv_queue.map_or(-1.0, |q| q as f64)));
            let container = flow.container.as_deref().map(|c| format!(", container {}", inert(c))).unwrap_or_default();
            Row {
                key: format!("f{}/{}/{}/{}", key.pid, key.role.as_str(), key.remote, key.port),
                search: format!("{} {} {} {}", flow.comm, remote, key.remote, key.port).to_lowercase(),
                cells,
                sort,
                gone: !activity.live,
                severity: None,
                detail: Detail {
                    lines: {
                        let [bytes, counters] = totals_lines(&activity.totals, &activity.last, data.interval_secs);
                        vec![
                            format!(
                                "pid {} {comm} {} {remote}{container}{}",
                                key.pid,
                                key.role.as_str(),
                                if activity.live { "" } else { " (closed)" }
                            ),
                            bytes,
                            counters,
                        ]
                    },
                    history: history(activity),
                },
            }
        })
        .collect()
}

/// Sums histories that line up at their ends.
fn add_history(sum: &mut Vec<(u64, u64)>, history: &std::collections::VecDeque<(u64, u64)>) {
    if sum.len() < history.len() {
        let missing = history.len() - sum.len();
        sum.splice(0..0, std::iter::repeat_n((0, 0), missing));
    }
    let offset = sum.len() - history.len();
    for (slot, (rx, tx)) in sum[offset..].iter_mut().zip(history) {
        slot.0 += rx;
        slot.1 += tx;
    }
}

fn port_rows(data: &Data) -> Vec<Row> {
    struct Port {
        activity: Activity,
        flows: u64,
        history: Vec<(u64, u64)>,
        comms: Vec<String>,
        live: bool,
    }
    let mut ports: BTreeMap<(Role, u16), Port> = BTreeMap::new();
    for (key, flow) in &data.flows {
        let port = ports.entry((key.role, key.port)).or_insert_with(|| Port {
            activity: Activity::default(),
            flows: 0,
            history: Vec::new(),
            comms: Vec::new(),
            live: false,
        });
        port.activity.totals.add(&flow.activity.totals);
        port.activity.last.add(&flow.activity.last);
        add_history(&mut port.history, &flow.activity.history);
        port.flows += 1;
        port.live |= flow.activity.live;
        if !port.comms.contains(&flow.comm) {
            port.comms.push(flow.comm.clone());
        }
    }
    ports
        .into_iter()
        .map(|((role, number), port)| {
            let side = match role {
                Role::Server => "local",
                Role::Client => "remote",
            };
            let comms: Vec<String> = port.comms.iter().map(|c| inert(c)).collect();
            let mut cells = vec![format!(":{number}"), side.to_owned()];
            let mut sort = vec![SortValue::Num(f64::from(number)), SortValue::Text(side.to_owned())];
            traffic_cells(&port.activity, data.interval_secs, &mut cells, &mut sort);
            for value in [port.flows, port.activity.totals.opened] {
                cells.push(value.to_string());
                sort.push(SortValue::Num(value as f64));
            }
            cells.push(comms.join(","));
            sort.push(SortValue::Text(comms.join(",")));
            Row {
                key: format!("port{}/{number}", role.as_str()),
                search: format!(":{number} {number} {}", port.comms.join(" ")).to_lowercase(),
                cells,
                sort,
                gone: !port.live,
                severity: None,
                detail: Detail {
                    lines: {
                        let [bytes, counters] =
                            totals_lines(&port.activity.totals, &port.activity.last, data.interval_secs);
                        vec![
                            format!(
                                "port {number} ({}), {} flow(s): {}",
                                match role {
                                    Role::Server => "served here",
                                    Role::Client => "remote service",
                                },
                                port.flows,
                                comms.join(", ")
                            ),
                            bytes,
                            counters,
                        ]
                    },
                    history: port.history,
                },
            }
        })
        .collect()
}

fn socket_rows(data: &Data) -> Vec<Row> {
    data.close_wait
        .iter()
        .map(|socket| {
            let comm = inert(&socket.comm);
            let age = if socket.age_is_lower_bound {
                format!(">{:.0}s", socket.age_secs)
            } else {
                format!("{:.0}s", socket.age_secs)
            };
            Row {
                key: format!("s{}/{}/{}", socket.pid, socket.local, socket.remote),
                search: format!("{} {} {}", socket.comm, socket.local, socket.remote).to_lowercase(),
                cells: vec![
                    socket.pid.to_string(),
                    comm.clone(),
                    socket.local.to_string(),
                    socket.remote.to_string(),
                    age.clone(),
                ],
                sort: vec![
                    SortValue::Num(f64::from(socket.pid)),
                    SortValue::Text(comm.clone()),
                    SortValue::Text(socket.local.to_string()),
                    SortValue::Text(socket.remote.to_string()),
                    SortValue::Num(socket.age_secs),
                ],
                gone: false,
                severity: None,
                detail: Detail {
                    lines: vec![
                        format!("CLOSE_WAIT: pid {} {comm} {} <- {}", socket.pid, socket.local, socket.remote),
                        format!(
                            "in CLOSE_WAIT for {age}{}: the peer closed; the owner has not",
                            if socket.age_is_lower_bound { " (since before the tracer started)" } else { "" }
                        ),
                    ],
                    history: Vec::new(),
                },
            }
        })
        .collect()
}

fn finding_rows(data: &Data) -> Vec<Row> {
    let count = data.findings.len();
    data.findings
        .iter()
        .enumerate()
        .map(|(i, finding)| {
            let comm = inert(&finding.comm);
            let place = match (&finding.remote_addr, finding.port) {
                (Some(remote), Some(port)) => format!(" {}:{port}", inert(remote)),
                (Some(remote), None) => format!(" {}", inert(remote)),
                (None, Some(port)) => format!(" :{port}"),
                (None, None) => String::new(),
            };
            let who = format!("{comm}({}){place}", finding.pid);
            let severity = match finding.severity {
                Severity::Critical => "CRIT",
                Severity::Warning => "WARN",
            };
            let summary = inert(&finding.summary);
            Row {
                key: format!("x{}/{}/{who}", finding.kind, finding.pid),
                search: format!("{} {} {place} {}", finding.comm, finding.kind, finding.summary).to_lowercase(),
                cells: vec![severity.to_owned(), finding.kind.to_owned(), who.clone(), summary.clone()],
                // The analysis' order (most severe first) is the default.
                sort: vec![
                    SortValue::Num((count - i) as f64),
                    SortValue::Text(finding.kind.to_owned()),
                    SortValue::Text(who.clone()),
                    SortValue::Text(summary.clone()),
                ],
                gone: false,
                severity: Some(finding.severity),
                detail: Detail {
                    lines: vec![
                        format!("{} {}: {who}", finding.severity.as_str(), finding.kind),
                        summary,
                        inert(&finding.evidence.to_string()),
                    ],
                    history: Vec::new(),
                },
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cmd::top::data::tests::{key, tick};

    #[test]
    fn hostile_names_are_inert() {
        let shown = inert("a\"b<c\x1b[2J\u{202e}d\u{200b}\n");
        assert!(!shown.chars().any(|c| c.is_control() || is_format(c)), "{shown:?}");
        assert_eq!(shown, "a\"b<c\\u{1b}[2J\\u{202e}d\\u{200b}\\n");
    }

    #[test]
    fn short_bytes_fit_five_characters() {
        assert_eq!(short_bytes(0.0), "0");
        assert_eq!(short_bytes(999.0), "999");
        assert_eq!(short_bytes(1536.0), "1.5K");
        assert_eq!(short_bytes(230.0 * 1024.0), "230K");
        assert_eq!(short_bytes(1023.0 * 1024.0), "1.0M");
        assert_eq!(short_bytes(12.0 * 1024.0 * 1024.0), "12M");
        for n in [999.4, 999.6 * 1024.0, 1e18] {
            assert!(short_bytes(n).len() <= 5, "{n}: {}", short_bytes(n));
        }
    }

    #[test]
    fn views_show_rates_totals_and_where_to() {
        let mut data = Data::default();
        let a = key(10, "10.0.0.1", 443);
        let b = key(11, "10.0.0.2", 443);
        data.apply(&tick(1.0, &[(a, "curl", 2048, 100), (b, "wget", 10, 0)], true));
        let flows = rows(&data, View::Flows);
        let row = flows.iter().find(|r| r.key.starts_with("f10/")).expect("flow row");
        assert_eq!(row.cells[..6], ["curl", "10.0.0.1:443", "2.0K", "100", "2.0K", "100"]);
        assert_eq!(row.cells[6], "1.5 ms");
        assert!(row.detail.lines[1].starts_with("in 2048 B (2.0 KiB/s), out 100 B"), "{}", row.detail.lines[1]);
        let ports = rows(&data, View::Ports);
        assert_eq!(ports.len(), 1);
        assert_eq!(ports[0].cells[..7], [":443", "remote", "2.0K", "100", "2.0K", "100", "2"]);
        assert_eq!(ports[0].detail.history, [(2058, 100)]);
        let processes = rows(&data, View::Processes);
        let curl = processes.iter().find(|r| r.key == "p10").expect("process row");
        assert_eq!(curl.cells[6], "1", "one ESTABLISHED socket");
        assert!(curl.search.contains("10.0.0.1:443"), "{}", curl.search);
    }

    #[test]
    fn port_history_lines_up_at_the_end() {
        let mut sum = Vec::new();
        add_history(&mut sum, &[(1, 1), (2, 2)].into_iter().collect());
        add_history(&mut sum, &[(5, 0)].into_iter().collect());
        add_history(&mut sum, &[(1, 0), (1, 0), (1, 0)].into_iter().collect());
        assert_eq!(sum, [(1, 0), (2, 1), (8, 2)]);
    }
}
