//! Recorded timelines: a JSON dump of the model's samples, per flow
//! (`tracer.samples/v1`), with labels per process, that the evaluation
//! replays through [`analyze`](crate::analysis::analyze) as it would a live
//! model.
//!
//! ```text
//! { "schema": "tracer.samples/v1",
//!   "source": "how and where it was recorded",
//!   "labels": [ { "pid": 7, "name": "paced ramp that stops early", "expect": ["traffic_growth"] } ],
//!   "close_wait": [ { "pid", "local", "remote", "age_secs", "age_is_lower_bound" } ],  // at the end
//!   "samples": [ { "t_secs": 1.0,                          // the interval's end
//!                  "flows": [ { "pid", "role", "remote", "port",   // the flow key
//!                               "tx_bytes", "rx_bytes", ... } ],   // moved in the interval (zeros left out)
//!                  "sockets": [ { "pid", "states": { "ESTABLISHED": 2 } } ],   // at its end
//!                  "health": [ { "pid", "role", "remote", "port", "rtt_us": [..],
//!                                "recv_queue", "backlogged", "sockets" } ] } ] }
//! ```
//! Each label makes one case: the whole recording is analysed, and only
//! the findings of that pid are judged (every kind in `expect` must fire,
//! no other may).
//!
//! [`from_report`] builds a recording from a real `tracer trace --format
//! json` report: its `timeline` is per process, so every labelled process
//! must have exactly one flow in the report (its timeline is that flow's
//! series). `cargo xtask eval --record REPORT --label PID=KIND,...` runs it.

use std::{
    collections::{BTreeMap, VecDeque},
    net::{IpAddr, SocketAddr},
};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::Case;
use crate::model::{state_name, CloseWait, Counters, Dist, FlowHealth, FlowKey, Role, Sample};

pub(super) const SCHEMA: &str = "tracer.samples/v1";

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct Recording {
    pub(super) schema: String,
    pub(super) source: String,
    pub(super) labels: Vec<Label>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) close_wait: Vec<RecordedCloseWait>,
    pub(super) samples: Vec<RecordedSample>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct Label {
    pub(super) pid: u32,
    pub(super) name: String,
    pub(super) expect: Vec<String>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RecordedCloseWait {
    pid: u32,
    local: SocketAddr,
    remote: SocketAddr,
    age_secs: f64,
    age_is_lower_bound: bool,
}

#[derive(Debug, Default, Serialize, Deserialize)]
pub(super) struct RecordedSample {
    pub(super) t_secs: f64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) flows: Vec<RecordedFlow>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) sockets: Vec<RecordedSockets>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(super) health: Vec<RecordedHealth>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub(super) struct RecordedKey {
    pid: u32,
    role: RecordedRole,
    remote: IpAddr,
    port: u16,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
enum RecordedRole {
    Client,
    Server,
}

fn is_zero(value: &u64) -> bool {
    *value == 0
}

/// The counters a recording keeps (the rest replay as zero).
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
pub(super) struct RecordedCounters {
    #[serde(default, skip_serializing_if = "is_zero")]
    tx_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    rx_bytes: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    retransmits: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    segments_out: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    opened: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    closed: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    failed_connects: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    resets_sent: u64,
    #[serde(default, skip_serializing_if = "is_zero")]
    resets_received: u64,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RecordedFlow {
    #[serde(flatten)]
    key: RecordedKey,
    #[serde(flatten)]
    counters: RecordedCounters,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RecordedSockets {
    pid: u32,
    states: BTreeMap<String, u64>,
}

#[derive(Debug, Serialize, Deserialize)]
pub(super) struct RecordedHealth {
    #[serde(flatten)]
    key: RecordedKey,
    #[serde(default)]
    rtt_us: Vec<u64>,
    #[serde(default)]
    recv_queue: u64,
    #[serde(default)]
    backlogged: bool,
    #[serde(default)]
    sockets: u32,
}

impl From<RecordedKey> for FlowKey {
    fn from(key: RecordedKey) -> Self {
        let role = match key.role {
            RecordedRole::Client => Role::Client,
            RecordedRole::Server => Role::Server,
        };
        FlowKey { pid: key.pid, role, remote: key.remote, port: key.port }
    }
}

impl From<FlowKey> for RecordedKey {
    fn from(key: FlowKey) -> Self {
        let role = match key.role {
            Role::Client => RecordedRole::Client,
            Role::Server => RecordedRole::Server,
        };
        RecordedKey { pid: key.pid, role, remote: key.remote, port: key.port }
    }
}

impl From<RecordedCounters> for Counters {
    fn from(c: RecordedCounters) -> Self {
        Counters {
            tx_bytes: c.tx_bytes,
            rx_bytes: c.rx_bytes,
            retransmits: c.retransmits,
            segments_out: c.segments_out,
            opened: c.opened,
            closed: c.closed,
            failed_connects: c.failed_connects,
            failed_other: c.failed_connects,
            resets_sent: c.resets_sent,
            resets_received: c.resets_received,
            ..Counters::default()
        }
    }
}

impl From<&Counters> for RecordedCounters {
    fn from(c: &Counters) -> Self {
        RecordedCounters {
            tx_bytes: c.tx_bytes,
            rx_bytes: c.rx_bytes,
            retransmits: c.retransmits,
            segments_out: c.segments_out,
            opened: c.opened,
            closed: c.closed,
            failed_connects: c.failed_connects,
            resets_sent: c.resets_sent,
            resets_received: c.resets_received,
        }
    }
}

/// The model's name of a TCP state (`None` for names it does not know).
fn state(name: &str) -> Option<&'static str> {
    (0..=u8::MAX).map(state_name).find(|s| *s == name && *s != "UNKNOWN")
}

impl Recording {
    /// The dump of a model's samples.
    pub(super) fn from_samples(source: &str, labels: Vec<Label>, samples: &VecDeque<Sample>) -> Self {
        let samples = samples
            .iter()
            .map(|s| {
                let mut flows: Vec<RecordedFlow> = s
                    .flows
                    .iter()
                    .map(|(key, counters)| RecordedFlow { key: (*key).into(), counters: counters.into() })
                    .collect();
                flows.sort_by_key(|f| (f.key.pid, f.key.port, f.key.remote));
                let mut sockets: Vec<RecordedSockets> = s
                    .sockets
                    .iter()
                    .map(|(pid, states)| RecordedSockets {
                        pid: *pid,
                        states: states.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect(),
                    })
                    .collect();
                sockets.sort_by_key(|s| s.pid);
                let mut health: Vec<RecordedHealth> = s
                    .health
                    .iter()
                    .map(|(key, h)| RecordedHealth {
                        key: (*key).into(),
                        // The distribution's mean stands for its observations.
                        rtt_us: h.rtt.mean().map(|m| vec![m.round() as u64; h.rtt.count as usize]).unwrap_or_default(),
                        recv_queue: h.recv_queue,
                        backlogged: h.backlogged,
                        sockets: h.sockets,
                    })
                    .collect();
                health.sort_by_key(|h| (h.key.pid, h.key.port, h.key.remote));
                RecordedSample { t_secs: s.t_secs, flows, sockets, health }
            })
            .collect();
        Recording { schema: SCHEMA.to_owned(), source: source.to_owned(), labels, close_wait: Vec::new(), samples }
    }

    /// The model's samples again.
    pub(super) fn samples(&self) -> VecDeque<Sample> {
        let mut previous = 0.0;
        self.samples
            .iter()
            .map(|s| Sample {
                t_secs: s.t_secs,
                interval_secs: s.t_secs - std::mem::replace(&mut previous, s.t_secs),
                flows: s.flows.iter().map(|f| (f.key.into(), f.counters.into())).collect(),
                sockets: s
                    .sockets
                    .iter()
                    .map(|p| (p.pid, p.states.iter().filter_map(|(name, n)| Some((state(name)?, *n))).collect()))
                    .collect(),
                health: s
                    .health
                    .iter()
                    .map(|h| {
                        let mut rtt = Dist::default();
                        for &value in &h.rtt_us {
                            rtt.observe(value);
                        }
                        let health = FlowHealth {
                            rtt,
                            recv_queue: h.recv_queue,
                            backlogged: h.backlogged,
                            sockets: h.sockets,
                            ..FlowHealth::default()
                        };
                        (h.key.into(), health)
                    })
                    .collect(),
            })
            .collect()
    }

    fn close_wait(&self) -> Vec<CloseWait> {
        self.close_wait
            .iter()
            .map(|c| CloseWait {
                pid: c.pid,
                comm: format!("p{}", c.pid).into(),
                local: c.local,
                remote: c.remote,
                age_secs: c.age_secs,
                age_is_lower_bound: c.age_is_lower_bound,
            })
            .collect()
    }

    /// One case per label.
    pub(super) fn cases(&self, file: &str) -> Vec<Case> {
        let samples = self.samples();
        let interval = match (samples.front(), samples.get(1)) {
            (Some(a), Some(b)) => b.t_secs - a.t_secs,
            _ => 0.0,
        };
        let last = samples.back().map_or(0.0, |s| s.t_secs);
        self.labels
            .iter()
            .map(|label| Case {
                family: "recorded",
                name: format!("{file}: {}", label.name),
                scale: format!("{interval:.0} s x {last:.0} s"),
                seed: None,
                expect: label.expect.iter().filter_map(|k| super::kind_name(k)).collect(),
                samples: samples.clone(),
                close_wait: self.close_wait(),
                hz: None,
                checks: Vec::new(),
                pid: Some(label.pid),
            })
            .collect()
    }
}

/// A recording from a real `tracer.report/v1` report, for the labelled
/// processes (each must have exactly one flow in the report).
pub(super) fn from_report(report: &Value, source: &str, labels: Vec<Label>) -> Result<Recording, String> {
    let flows = report["flows"].as_array().ok_or("the report has no flows")?;
    let mut keys = BTreeMap::new();
    for label in &labels {
        let mine: Vec<&Value> = flows.iter().filter(|f| f["pid"].as_u64() == Some(u64::from(label.pid))).collect();
        let [flow] = mine.as_slice() else {
            return Err(format!(
                "pid {} has {} flows in the report; its timeline is per process",
                label.pid,
                mine.len()
            ));
        };
        let role = match flow["role"].as_str() {
            Some("client") => RecordedRole::Client,
            Some("server") => RecordedRole::Server,
            other => return Err(format!("pid {}: role {other:?}", label.pid)),
        };
        let remote: IpAddr =
            flow["remote_addr"].as_str().and_then(|a| a.parse().ok()).ok_or(format!("pid {}: remote", label.pid))?;
        let port = match role {
            RecordedRole::Client => flow["remote_port"].as_u64(),
            RecordedRole::Server => flow["local_port"].as_u64(),
        };
        let port = port.and_then(|p| u16::try_from(p).ok()).ok_or(format!("pid {}: port", label.pid))?;
        keys.insert(label.pid, RecordedKey { pid: label.pid, role, remote, port });
    }
    let timeline = report["timeline"].as_array().ok_or("the report has no timeline")?;
    let samples = timeline
        .iter()
        .map(|point| {
            let mut sample = RecordedSample { t_secs: point["t_secs"].as_f64().unwrap_or(0.0), ..Default::default() };
            for process in point["processes"].as_array().into_iter().flatten() {
                let Some(key) = process["pid"].as_u64().and_then(|p| keys.get(&(p as u32))) else { continue };
                let counters = RecordedCounters {
                    tx_bytes: process["tx_bytes"].as_u64().unwrap_or(0),
                    rx_bytes: process["rx_bytes"].as_u64().unwrap_or(0),
                    ..RecordedCounters::default()
                };
                if counters.tx_bytes > 0 || counters.rx_bytes > 0 {
                    sample.flows.push(RecordedFlow { key: *key, counters });
                }
                let states: BTreeMap<String, u64> = process["sockets"]
                    .as_object()
                    .into_iter()
                    .flatten()
                    .filter_map(|(k, v)| Some((k.clone(), v.as_u64()?)))
                    .collect();
                sample.sockets.push(RecordedSockets { pid: key.pid, states });
            }
            sample
        })
        .collect();
    Ok(Recording { schema: SCHEMA.to_owned(), source: source.to_owned(), labels, close_wait: Vec::new(), samples })
}
