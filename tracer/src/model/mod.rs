//! The model: plain data about sockets, flows and processes, and their time
//! series. Fed by the collector (observations of kernel records, sockets
//! found in /proc), read by the analysis and every output. No aya, no I/O.
//!
//! Accounting is per socket: at every sample the growth of each socket's
//! counters since the last sample is attributed to the socket's flow as it is
//! then (owner, role, remote, service port). A destroyed socket's final
//! counts are attributed once and the socket is dropped, so no byte is lost
//! or counted twice, and memory follows live sockets plus active flows.

pub(crate) mod addr;
pub(crate) mod container;
mod counters;
pub(crate) mod filter;
mod flow;
mod health;
mod idmap;
mod live;
mod ordered;
mod socket;

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    sync::Arc,
};

use tracer_common::tcp_state;

use self::{
    container::Identity,
    filter::{Filter, SocketFacts},
    idmap::{FastMap, FastSet, IdMap},
    live::LiveSocket,
    ordered::ReadOrdered,
    socket::comm_text,
};
pub(crate) use self::{
    counters::Counters,
    flow::{CloseWait, Flow, FlowKey, KernelStats, Process, Role, TimelinePoint, TimelineProcess},
    health::{jiffies_ms, Dist, FailReason, FlowHealth, HealthView, LastMax, SocketHealth},
    socket::{state_name, KernelRole, ProcSocket, SocketObs, StateCounts, StateTally, Tuple},
};
/// What TCP health the kernel side provides: decided at load, kept by the
/// model for the outputs.
pub(crate) use crate::load::health::HealthSupport;

/// One interval: per-flow counter growth and per-process socket counts at
/// its end.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// End of the interval, seconds since the start.
    pub(crate) t_secs: f64,
    /// The interval's length in seconds.
    pub(crate) interval_secs: f64,
    pub(crate) flows: HashMap<FlowKey, Counters>,
    pub(crate) sockets: HashMap<u32, StateCounts>,
    /// TCP health per flow: RTT and backlogs of its live sockets at the
    /// interval's end, connects completed in it.
    pub(crate) health: HashMap<FlowKey, FlowHealth>,
}

/// Everything the tracer knows, in plain data.
pub(crate) struct Model {
    filter: Filter,
    start_ns: u64,
    live: ReadOrdered<LiveSocket>,
    /// Owners found in /proc for live sockets whose record has none.
    owners: IdMap<u32>,
    /// Sockets found at start that the kernel side has not named yet.
    preexisting: FastMap<Tuple, ProcSocket>,
    /// Sockets new in the current table read (kept only while sockets
    /// found at start wait for a record: only a new record can be one's),
    /// and whether every live socket is to be checked once (sockets were
    /// just found at start).
    fresh: Vec<u64>,
    check_all_preexisting: bool,
    listeners: HashSet<(u32, u16)>,
    /// Sockets destroyed since the last live snapshot, with when.
    recently_closed: IdMap<u64>,
    /// The current table read (see [`Model::begin_live`]).
    generation: u8,
    /// Sockets whose address was taken by a new socket while the table
    /// was read, until the ring buffer drained after it hands over their
    /// final records. (Sockets simply missing from the last read stay in
    /// `live`, with an older generation, for as long: a mass close moves
    /// nothing.)
    vanished: IdMap<LiveSocket>,
    /// Destroyed sockets whose counts are not yet attributed (with a
    /// filter, which is applied at the sample, once names are read).
    pending_closed: Vec<(SocketObs, Counters)>,
    /// Without a filter, destroyed sockets' counts are folded into their
    /// flows as they come, so a mass close holds no record per socket:
    /// the interval's counters and connects so far.
    closed_flows: FastMap<FlowKey, Counters>,
    closed_health: FastMap<FlowKey, FlowHealth>,
    comms: FastMap<u32, String>,
    /// Names kept by the last [`Model::forget_old_comms`] pass.
    names_kept: usize,
    /// Cgroup and container of each process, as current as its comm.
    identities: HashMap<u32, Arc<Identity>>,
    samples: VecDeque<Sample>,
    max_samples: usize,
    host_time_wait: u64,
    last_sample_ns: u64,
    /// The kernel's HZ, once measured (the chrono counters count jiffies).
    hz: Option<u32>,
    /// What TCP health this kernel provides.
    health_support: HealthSupport,
}

/// What of a socket's counters, when the model first sees it, belongs to
/// before the trace: the chrono counters of a connection that was not
/// opened while tracing (the kernel counts them from its start; the
/// record's other counters already start at the tracer's first sight).
fn baseline(obs: &SocketObs) -> Counters {
    if obs.counters.opened != 0 {
        return Counters::default();
    }
    Counters {
        busy_jiffies: obs.counters.busy_jiffies,
        rwnd_jiffies: obs.counters.rwnd_jiffies,
        sndbuf_jiffies: obs.counters.sndbuf_jiffies,
        ..Counters::default()
    }
}

/// States whose sockets have an RTT and backlogs worth sampling.
fn carries_data(state: u8) -> bool {
    !matches!(
        state,
        tcp_state::LISTEN | tcp_state::SYN_SENT | tcp_state::SYN_RECV | tcp_state::CLOSE | tcp_state::TIME_WAIT
    )
}

/// Seconds between two monotonic instants.
fn secs(from_ns: u64, to_ns: u64) -> f64 {
    to_ns.saturating_sub(from_ns) as f64 / 1e9
}

pub(crate) const UNKNOWN_COMM: &str = "[unknown]";

impl Model {
    /// `start_ns` is the monotonic clock at attach; `max_samples` bounds the
    /// history (window / interval).
    pub(crate) fn new(filter: Filter, start_ns: u64, max_samples: usize) -> Self {
        Model {
            filter,
            start_ns,
            live: ReadOrdered::default(),
            owners: IdMap::default(),
            preexisting: FastMap::default(),
            fresh: Vec::new(),
            check_all_preexisting: false,
            listeners: HashSet::new(),
            recently_closed: IdMap::default(),
            generation: 0,
            vanished: IdMap::default(),
            pending_closed: Vec::new(),
            closed_flows: FastMap::default(),
            closed_health: FastMap::default(),
            comms: FastMap::default(),
            identities: HashMap::new(),
            names_kept: 0,
            samples: VecDeque::new(),
            max_samples: max_samples.max(1),
            host_time_wait: 0,
            last_sample_ns: start_ns,
            hz: None,
            health_support: HealthSupport::default(),
        }
    }

    /// Sockets found in /proc at start.
    pub(crate) fn load_preexisting(&mut self, sockets: Vec<ProcSocket>) {
        for socket in sockets {
            // TIME_WAIT sockets belong to no process (host totals count them);
            // half-open requests in a listener's queue (SYN_RECV, no inode)
            // are not sockets yet and may vanish without any event.
            let request = socket.state == tcp_state::SYN_RECV && socket.inode == 0;
            if socket.state == tcp_state::TIME_WAIT || request {
                continue;
            }
            self.preexisting.insert(socket.tuple, socket);
        }
        self.check_all_preexisting = true;
        self.rebuild_listeners();
    }

    /// Listening ports (per netns) decide the role of sockets the kernel side
    /// saw no connect or accept for; rebuilt from what listens now, so the
    /// set does not grow with every port that ever listened.
    fn rebuild_listeners(&mut self) {
        self.listeners.clear();
        let generation = self.generation;
        for socket in self.live.values().filter(|s| s.generation == generation) {
            if socket.role == KernelRole::Listener || socket.state == tcp_state::LISTEN {
                self.listeners.insert((socket.netns(), socket.local_port()));
            }
        }
        for socket in self.preexisting.values() {
            if socket.state == tcp_state::LISTEN {
                self.listeners.insert((socket.tuple.netns, socket.tuple.local.port()));
            }
        }
    }

    /// The kernel's current table, in one go (see [`Model::begin_live`]).
    #[cfg(test)]
    pub(crate) fn replace_live(&mut self, snapshot: Vec<SocketObs>) {
        self.begin_live();
        for obs in &snapshot {
            self.observe_live(obs);
        }
        self.end_live();
    }

    /// Starts a read of the kernel's table: each
    /// is handed over with [`Model::observe_live`] as it is read (no copy of
    /// the whole table is ever held), then [`Model::end_live`]. Sockets
    /// destroyed since the last read (already handed over by
    /// [`Model::socket_closed`]) are ignored if they show up again.
    pub(crate) fn begin_live(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.live.begin_read();
    }

    /// One socket of the table being read.
    pub(crate) fn observe_live(&mut self, obs: &SocketObs) {
        if let Some(&destroyed_ns) = self.recently_closed.get(&obs.id) {
            if obs.first_seen_ns <= destroyed_ns {
                return;
            }
        }
        self.remember_thread_comm(obs);
        let generation = self.generation;
        match self.live.get_mut_in_read(obs.id) {
            Some(socket) if socket.first_seen_ns == obs.first_seen_ns => socket.update(obs, generation),
            // The address was reused: the old socket was destroyed while
            // the table was read, its final record is still in the ring.
            Some(socket) => {
                let old = std::mem::replace(socket, LiveSocket::new(obs, &baseline(obs), generation));
                self.vanished.insert(obs.id, old);
                self.note_fresh(obs.id);
            }
            None => {
                self.live.insert(obs.id, LiveSocket::new(obs, &baseline(obs), generation));
                self.note_fresh(obs.id);
            }
        }
    }

    fn note_fresh(&mut self, id: u64) {
        if !self.preexisting.is_empty() {
            self.fresh.push(id);
        }
    }

    /// Ends a table read.
    pub(crate) fn end_live(&mut self) {
        self.live.end_read();
        // Sockets missing from the table were destroyed while it was read:
        // their final records are in the ring buffer, which the collector
        // drains next. They stay (with the previous read's generation), so
        // what was already attributed for them is known when their records
        // come (see `forget_vanished`).
        self.recently_closed.clear();
        self.recently_closed.shrink_to(1024);
        self.owners.retain(|id, _| self.live.contains_key(id) || self.vanished.contains_key(id));
        if self.owners.capacity() > 4 * self.owners.len() + 1024 {
            self.owners.shrink_to(2 * self.owners.len());
        }
        // A kernel record now describes these; an owner found at start stays
        // the owner (the record's first event may have come from softirq).
        // Only a socket new in this read can be one found at start (the
        // others were checked when they were new), unless sockets were just
        // found.
        if !self.preexisting.is_empty() {
            let generation = self.generation;
            let mut claim = |id: u64, socket: &LiveSocket| {
                if let Some(found) = self.preexisting.remove(&socket.tuple()) {
                    if let (0, Some(pid)) = (socket.pid, found.pid) {
                        self.owners.insert(id, pid);
                    }
                }
            };
            if self.check_all_preexisting {
                for (id, socket) in self.live.iter().filter(|(_, s)| s.generation == generation) {
                    claim(*id, socket);
                }
            } else {
                for id in &self.fresh {
                    if let Some(socket) = self.live.get(id).filter(|s| s.generation == generation) {
                        claim(*id, socket);
                    }
                }
            }
        }
        self.check_all_preexisting = false;
        self.fresh.clear();
        if self.fresh.capacity() > 4096 {
            self.fresh = Vec::new();
        }
        self.rebuild_listeners();
    }

    /// The sockets of the last table read.
    fn current(&self) -> impl Iterator<Item = (&u64, &LiveSocket)> {
        let generation = self.generation;
        self.live.iter().filter(move |(_, socket)| socket.generation == generation)
    }

    /// Sockets gone from the table whose destroy record never came (the
    /// ring buffer was full): what they moved since the last sample is lost
    /// with them. Call after draining the ring buffer that follows a
    /// table read.
    pub(crate) fn forget_vanished(&mut self) {
        let generation = self.generation;
        let owners = &mut self.owners;
        self.live.retain(|id, socket| {
            let current = socket.generation == generation;
            if !current {
                owners.remove(id);
            }
            current
        });
        for id in self.vanished.keys() {
            self.owners.remove(id);
        }
        self.vanished.clear();
        self.vanished.shrink_to(1024);
        // Memory follows the sockets: after a spike closes, give back most
        // of the table (hysteresis: only when it is mostly empty).
        self.live.shrink();
    }

    /// A socket's final record, from `tcp:tcp_destroy_sock`.
    pub(crate) fn socket_closed(&mut self, obs: SocketObs, destroyed_ns: u64) {
        self.recently_closed.insert(obs.id, destroyed_ns);
        self.preexisting.remove(&obs.tuple);
        let same = |socket: &LiveSocket| socket.first_seen_ns == obs.first_seen_ns;
        let found = if self.live.get(&obs.id).is_some_and(same) {
            self.live.remove(&obs.id)
        } else if self.vanished.get(&obs.id).is_some_and(same) {
            self.vanished.remove(&obs.id)
        } else {
            None
        };
        let (attributed, owner) = match found {
            Some(old) if old.first_seen_ns == obs.first_seen_ns => (old.attributed(), self.owners.remove(&obs.id)),
            _ => (Counters::default(), None),
        };
        let mut obs = obs;
        if obs.pid == 0 {
            obs.pid = owner.unwrap_or(0);
        }
        if !self.filter.is_empty() {
            self.pending_closed.push((obs, attributed));
            return;
        }
        self.remember_thread_comm(&obs);
        let mut flows = std::mem::take(&mut self.closed_flows);
        let mut health = std::mem::take(&mut self.closed_health);
        self.fold_closed(&obs, &attributed, &mut flows, &mut health);
        self.closed_flows = flows;
        self.closed_health = health;
    }

    /// Attributes a destroyed socket's last counts (beyond `attributed`)
    /// to its flow in `flows`, and a connect it completed since the last
    /// sample to `health` (a destroyed socket has no RTT or backlog any
    /// more).
    fn fold_closed(
        &self,
        obs: &SocketObs,
        attributed: &Counters,
        flows: &mut FastMap<FlowKey, Counters>,
        health: &mut FastMap<FlowKey, FlowHealth>,
    ) {
        let mut total = obs.counters;
        if obs.was_established && obs.role != KernelRole::Listener {
            total.closed = 1;
        }
        let pid = obs.pid;
        if !self.matches(pid, &obs.tuple) {
            return;
        }
        let Some(key) = self.flow_key(obs, pid) else { return };
        let delta = total.saturating_sub(attributed);
        if !delta.is_zero() {
            flows.entry(key).or_default().add(&delta);
            health.entry(key).or_default().netns = obs.tuple.netns;
        }
        if let (true, Some(connect)) = (delta.connects_timed > 0, obs.health.connect_us) {
            health.entry(key).or_default().connect.observe(connect);
        }
    }

    /// Live sockets whose owner is unknown (accepted, never used) and that
    /// the tracer first saw at or before `seen_by_ns`: the collector looks
    /// them up in /proc.
    pub(crate) fn unowned(&self, seen_by_ns: u64) -> Vec<Tuple> {
        self.current()
            .filter(|(id, s)| {
                s.pid == 0
                    && s.first_seen_ns <= seen_by_ns
                    && !self.owners.contains_key(id)
                    && !matches!(s.state, tcp_state::CLOSE | tcp_state::TIME_WAIT)
            })
            .map(|(_, s)| s.tuple())
            .collect()
    }

    /// Owners found in /proc by tuple.
    pub(crate) fn assign_owners(&mut self, found: &HashMap<Tuple, u32>) {
        let generation = self.generation;
        for (id, socket) in self.live.iter().filter(|(_, s)| s.generation == generation) {
            if socket.pid == 0 {
                if let Some(&pid) = found.get(&socket.tuple()) {
                    self.owners.insert(*id, pid);
                }
            }
        }
    }

    /// Every pid the model refers to (for comm lookups).
    pub(crate) fn pids(&self) -> FastSet<u32> {
        let mut pids: FastSet<u32> = self.current().map(|(id, s)| self.owner_of_socket(*id, s)).collect();
        pids.extend(self.preexisting.values().filter_map(|p| p.pid));
        pids.extend(self.pending_closed.iter().map(|(o, _)| o.pid));
        pids.extend(self.closed_flows.keys().map(|key| key.pid));
        pids.remove(&0);
        pids
    }

    /// The process name of `pid` as /proc shows it now, or last known.
    pub(crate) fn set_comm(&mut self, pid: u32, comm: String) {
        self.comms.insert(pid, comm);
    }

    /// The cgroup and container of `pid` as /proc shows them (names added
    /// once a runtime answered), or last known.
    pub(crate) fn set_identity(&mut self, pid: u32, identity: Arc<Identity>) {
        self.identities.insert(pid, identity);
    }

    pub(crate) fn identity(&self, pid: u32) -> Option<&Arc<Identity>> {
        self.identities.get(&pid)
    }

    pub(crate) fn comm(&self, pid: u32) -> &str {
        if pid == 0 {
            return UNKNOWN_COMM;
        }
        self.comms.get(&pid).map(String::as_str).unwrap_or(UNKNOWN_COMM)
    }

    /// TIME_WAIT sockets on the host, counted by the collector.
    pub(crate) fn set_host_time_wait(&mut self, count: u64) {
        self.host_time_wait = count;
    }

    pub(crate) fn live_sockets(&self) -> u64 {
        (self.current().count() + self.preexisting.len()) as u64
    }

    fn owner_of(&self, obs: &SocketObs) -> u32 {
        if obs.pid != 0 {
            obs.pid
        } else {
            self.owners.get(&obs.id).copied().unwrap_or(0)
        }
    }

    fn owner_of_socket(&self, id: u64, socket: &LiveSocket) -> u32 {
        if socket.pid != 0 {
            socket.pid
        } else {
            self.owners.get(&id).copied().unwrap_or(0)
        }
    }

    /// Remembers the thread name of an owner the kernel saw, for processes
    /// that exit before their /proc name is read.
    fn remember_thread_comm(&mut self, obs: &SocketObs) {
        if obs.pid != 0 && obs.thread_comm[0] != 0 && !self.comms.contains_key(&obs.pid) {
            self.comms.insert(obs.pid, comm_text(&obs.thread_comm));
        }
    }

    fn role_of(&self, obs: &SocketObs) -> Option<Role> {
        match obs.role {
            KernelRole::Client => Some(Role::Client),
            KernelRole::Server => Some(Role::Server),
            KernelRole::Listener => None,
            KernelRole::Unknown if obs.state == tcp_state::LISTEN => None,
            KernelRole::Unknown => {
                if self.listeners.contains(&(obs.tuple.netns, obs.tuple.local.port())) {
                    Some(Role::Server)
                } else {
                    Some(Role::Client)
                }
            }
        }
    }

    fn flow_key(&self, obs: &SocketObs, pid: u32) -> Option<FlowKey> {
        let role = self.role_of(obs)?;
        let port = match role {
            Role::Client => obs.tuple.remote.port(),
            Role::Server => obs.tuple.local.port(),
        };
        Some(FlowKey { pid, role, remote: obs.tuple.remote.ip(), port })
    }

    fn matches(&self, pid: u32, tuple: &Tuple) -> bool {
        self.filter.is_empty()
            || self.filter.matches(&SocketFacts {
                pid,
                comm: self.comm(pid),
                local_port: tuple.local.port(),
                remote_port: tuple.remote.port(),
                remote_addr: tuple.remote.ip(),
                container: self.identities.get(&pid).and_then(|i| i.container.as_ref()),
            })
    }

    /// Ends an interval at monotonic `now_ns`: attributes counter growth to
    /// flows and records socket counts. Call after the collector has fed the
    /// live table, the destroyed sockets, owners and comms.
    pub(crate) fn sample(&mut self, now_ns: u64) {
        let mut flows = std::mem::take(&mut self.closed_flows);
        let mut health = std::mem::take(&mut self.closed_health);
        let pending = std::mem::take(&mut self.pending_closed);
        for (obs, attributed) in &pending {
            self.remember_thread_comm(obs);
            self.fold_closed(obs, attributed, &mut flows, &mut health);
        }
        // Taken out while walked: flow keys and filters read the rest.
        let mut live = std::mem::take(&mut self.live);
        for (&id, socket) in live.iter_mut().filter(|(_, s)| s.generation == self.generation) {
            let obs = socket.obs(id);
            let pid = self.owner_of(&obs);
            // An accepted socket has no owner until its process uses it or
            // is found holding it (it may still wait in the accept queue):
            // hold its counts back rather than charge them to no one; they
            // go to the owner once known, or at destruction.
            if pid == 0 || !self.matches(pid, &obs.tuple) {
                continue;
            }
            let Some(key) = self.flow_key(&obs, pid) else { continue };
            let attributed = socket.attributed();
            let delta = obs.counters.saturating_sub(&attributed);
            if !delta.is_zero() {
                flows.entry(key).or_default().add(&delta);
                health.entry(key).or_default().netns = obs.tuple.netns;
                socket.set_attributed(&attributed.max_each(&obs.counters));
            }
            if let (true, Some(connect)) = (delta.connects_timed > 0, obs.health.connect_us) {
                health.entry(key).or_default().connect.observe(connect);
            }
            if obs.health.samples > 0 && carries_data(obs.state) {
                let interval = health.entry(key).or_default();
                interval.add_socket(&obs.health, delta.tx_bytes, delta.rx_bytes);
                interval.netns = obs.tuple.netns;
            }
        }
        self.live = live;
        let sockets = self.socket_counts();
        self.samples.push_back(Sample {
            t_secs: secs(self.start_ns, now_ns),
            interval_secs: secs(self.last_sample_ns, now_ns),
            flows: flows.into_iter().collect(),
            sockets,
            health: health.into_iter().collect(),
        });
        while self.samples.len() > self.max_samples {
            self.samples.pop_front();
        }
        self.last_sample_ns = now_ns;
        self.forget_old_comms();
    }

    /// The kernel's HZ, measured by the collector.
    pub(crate) fn set_hz(&mut self, hz: Option<u32>) {
        self.hz = hz;
    }

    /// What TCP health the kernel side provides (set once at start).
    pub(crate) fn set_health_support(&mut self, support: HealthSupport) {
        self.health_support = support;
    }

    pub(crate) fn health_support(&self) -> HealthSupport {
        self.health_support
    }

    /// The kernel's HZ, once measured: converts the chrono counters.
    pub(crate) fn hz(&self) -> Option<u32> {
        self.hz
    }

    /// Drops names (and identities) of processes the model no longer refers
    /// to, so memory does not grow with every process that ever had a socket.
    fn forget_old_comms(&mut self) {
        // Amortized: when the names grew by half since the last pass (a
        // fixed bar let short-lived processes pile up a thousand names, and
        // their identities, before any went).
        let bar = self.names_kept + self.names_kept / 2 + 64;
        if self.comms.len() <= bar && self.identities.len() <= bar {
            return;
        }
        let mut referenced = self.pids();
        for sample in &self.samples {
            referenced.extend(sample.flows.keys().map(|key| key.pid));
            referenced.extend(sample.sockets.keys());
        }
        self.comms.retain(|pid, _| referenced.contains(pid));
        self.identities.retain(|pid, _| referenced.contains(pid));
        self.names_kept = self.comms.len().max(self.identities.len());
    }

    /// Current socket counts per process and state (TIME_WAIT excluded: it
    /// belongs to no process).
    fn socket_counts(&self) -> HashMap<u32, StateCounts> {
        let mut tallies: FastMap<u32, StateTally> = FastMap::default();
        for (&id, socket) in self.current() {
            let pid = self.owner_of_socket(id, socket);
            if socket.state == tcp_state::TIME_WAIT || !(self.filter.is_empty() || self.matches(pid, &socket.tuple())) {
                continue;
            }
            tallies.entry(pid).or_default().add(socket.state);
        }
        for socket in self.preexisting.values() {
            let pid = socket.pid.unwrap_or(0);
            if !self.matches(pid, &socket.tuple) {
                continue;
            }
            tallies.entry(pid).or_default().add(socket.state);
        }
        tallies
            .into_iter()
            .map(|(pid, tally)| {
                let mut counts = StateCounts::new();
                tally.add_to(&mut counts);
                (pid, counts)
            })
            .collect()
    }

    /// Host-wide socket counts per state, TIME_WAIT included, unfiltered.
    pub(crate) fn host_sockets(&self) -> StateCounts {
        let mut tally = StateTally::default();
        for (_, socket) in self.current() {
            if socket.state != tcp_state::TIME_WAIT {
                tally.add(socket.state);
            }
        }
        let mut counts = StateCounts::new();
        tally.add_to(&mut counts);
        for socket in self.preexisting.values() {
            *counts.entry(state_name(socket.state)).or_default() += 1;
        }
        if self.host_time_wait > 0 {
            counts.insert("TIME_WAIT", self.host_time_wait);
        }
        counts
    }

    pub(crate) fn samples(&self) -> &VecDeque<Sample> {
        &self.samples
    }

    /// Flows over the retained window, biggest first.
    pub(crate) fn flows(&self) -> Vec<Flow> {
        let mut totals: HashMap<FlowKey, (Counters, HealthView)> = HashMap::new();
        for sample in &self.samples {
            for (key, delta) in &sample.flows {
                totals.entry(*key).or_default().0.add(delta);
            }
            for (key, interval) in &sample.health {
                totals.entry(*key).or_default().1.add_interval(interval);
            }
        }
        let mut flows: Vec<Flow> = totals
            .into_iter()
            .map(|(key, (counters, health))| Flow {
                key,
                comm: self.comm(key.pid).to_owned(),
                identity: self.identity(key.pid).cloned(),
                counters,
                health,
            })
            .collect();
        // Remote addresses compare as text, as they read.
        flows.sort_by_cached_key(|f| {
            (std::cmp::Reverse(f.counters.bytes()), f.key.pid, f.key.role, f.key.remote.to_string(), f.key.port)
        });
        flows
    }

    /// Processes over the retained window, with current socket counts,
    /// biggest first.
    pub(crate) fn processes(&self) -> Vec<Process> {
        let mut totals: BTreeMap<u32, Counters> = BTreeMap::new();
        let mut queues: HashMap<u32, (LastMax, LastMax)> = HashMap::new();
        for sample in &self.samples {
            for (key, delta) in &sample.flows {
                totals.entry(key.pid).or_default().add(delta);
            }
            // Summed over the process's sampled sockets, per interval.
            let mut per_pid: HashMap<u32, (u64, u64)> = HashMap::new();
            for (key, interval) in sample.health.iter().filter(|(_, h)| h.sockets > 0) {
                let sums = per_pid.entry(key.pid).or_default();
                sums.0 += interval.recv_queue;
                sums.1 += interval.send_queue;
            }
            for (pid, (recv, send)) in per_pid {
                let entry = queues.entry(pid).or_default();
                entry.0.push(recv);
                entry.1.push(send);
            }
        }
        let mut sockets = self.samples.back().map(|s| s.sockets.clone()).unwrap_or_default();
        for pid in sockets.keys() {
            totals.entry(*pid).or_default();
        }
        let mut processes: Vec<Process> = totals
            .into_iter()
            .map(|(pid, counters)| Process {
                pid,
                comm: self.comm(pid).to_owned(),
                identity: self.identity(pid).cloned(),
                counters,
                sockets: sockets.remove(&pid).unwrap_or_default(),
                recv_queue: queues.get(&pid).map(|q| q.0),
                send_queue: queues.get(&pid).map(|q| q.1),
            })
            .collect();
        processes.sort_by(|a, b| b.counters.bytes().cmp(&a.counters.bytes()).then(a.pid.cmp(&b.pid)));
        processes
    }

    /// Sockets in CLOSE_WAIT now, oldest first, ages at `now_ns`.
    pub(crate) fn close_wait(&self, now_ns: u64) -> Vec<CloseWait> {
        let mut list = Vec::new();
        // One name per process, shared by its entries.
        let mut names: FastMap<u32, Arc<str>> = FastMap::default();
        let run_time = secs(self.start_ns, now_ns);
        for (&id, socket) in self.current() {
            if socket.state != tcp_state::CLOSE_WAIT {
                continue;
            }
            let pid = self.owner_of_socket(id, socket);
            let tuple = socket.tuple();
            if !self.matches(pid, &tuple) {
                continue;
            }
            let (age_secs, age_is_lower_bound) = match socket.state_since_ns() {
                Some(since) => (secs(since, now_ns), false),
                None => (run_time, true),
            };
            list.push(self.close_wait_entry(&mut names, pid, &tuple, age_secs, age_is_lower_bound));
        }
        for socket in self.preexisting.values() {
            let pid = socket.pid.unwrap_or(0);
            if socket.state != tcp_state::CLOSE_WAIT || !self.matches(pid, &socket.tuple) {
                continue;
            }
            list.push(self.close_wait_entry(&mut names, pid, &socket.tuple, run_time, true));
        }
        list.sort_by(|a, b| {
            b.age_secs.total_cmp(&a.age_secs).then(a.pid.cmp(&b.pid)).then(a.local.port().cmp(&b.local.port()))
        });
        // Kept for a tick (the report is rendered from it when asked for).
        list.shrink_to_fit();
        list
    }

    fn close_wait_entry(
        &self,
        names: &mut FastMap<u32, Arc<str>>,
        pid: u32,
        tuple: &Tuple,
        age_secs: f64,
        age_is_lower_bound: bool,
    ) -> CloseWait {
        CloseWait {
            pid,
            comm: Arc::clone(names.entry(pid).or_insert_with(|| self.comm(pid).into())),
            local: tuple.local,
            remote: tuple.remote,
            age_secs: (age_secs * 1000.0).round() / 1000.0,
            age_is_lower_bound,
        }
    }

    /// The per-process timeline over the retained window.
    pub(crate) fn timeline(&self) -> Vec<TimelinePoint> {
        self.samples
            .iter()
            .map(|sample| {
                let mut per_pid: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
                for (key, delta) in &sample.flows {
                    let entry = per_pid.entry(key.pid).or_default();
                    entry.0 = entry.0.saturating_add(delta.tx_bytes);
                    entry.1 = entry.1.saturating_add(delta.rx_bytes);
                }
                for pid in sample.sockets.keys() {
                    per_pid.entry(*pid).or_default();
                }
                TimelinePoint {
                    t_secs: (sample.t_secs * 1000.0).round() / 1000.0,
                    interval_secs: sample.interval_secs,
                    processes: per_pid
                        .into_iter()
                        .map(|(pid, (tx, rx))| TimelineProcess {
                            pid,
                            comm: self.comm(pid).to_owned(),
                            tx_bytes: tx,
                            rx_bytes: rx,
                            sockets: sample.sockets.get(&pid).cloned().unwrap_or_default(),
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Seconds from the start to the last sample (the window's end).
    pub(crate) fn last_sample_secs(&self) -> f64 {
        secs(self.start_ns, self.last_sample_ns)
    }

    /// Seconds covered by the retained window at the last sample.
    pub(crate) fn window_secs(&self) -> f64 {
        let end = secs(self.start_ns, self.last_sample_ns);
        match self.samples.len() {
            0 => 0.0,
            n if n < self.max_samples => end,
            _ => {
                let first = self.samples.front().map(|s| s.t_secs).unwrap_or(0.0);
                let second = self.samples.get(1).map(|s| s.t_secs).unwrap_or(first);
                end - (first - (second - first)).max(0.0)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use super::*;

    fn tuple(lport: u16, remote: &str, rport: u16) -> Tuple {
        Tuple {
            netns: 1,
            local: SocketAddr::new("127.0.0.1".parse().expect("ip"), lport),
            remote: SocketAddr::new(remote.parse().expect("ip"), rport),
        }
    }

    fn obs(id: u64, pid: u32, role: KernelRole, t: Tuple, tx: u64, rx: u64) -> SocketObs {
        SocketObs {
            id,
            pid,
            thread_comm: *b"p\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            tuple: t,
            role,
            state: tcp_state::ESTABLISHED,
            state_since_ns: Some(0),
            first_seen_ns: 1,
            counters: Counters { tx_bytes: tx, rx_bytes: rx, ..Counters::default() },
            was_established: true,
            health: SocketHealth::default(),
        }
    }

    #[test]
    fn server_sockets_fold_into_one_flow_per_remote() {
        let mut model = Model::new(Filter::default(), 0, 100);
        model.replace_live(vec![
            obs(1, 10, KernelRole::Server, tuple(80, "10.0.0.1", 40000), 5, 7),
            obs(2, 10, KernelRole::Server, tuple(80, "10.0.0.1", 40001), 5, 7),
            obs(3, 10, KernelRole::Server, tuple(80, "10.0.0.2", 40002), 1, 1),
        ]);
        model.sample(1_000_000_000);
        let flows = model.flows();
        assert_eq!(flows.len(), 2);
        assert_eq!(
            (flows[0].counters.tx_bytes, flows[0].counters.rx_bytes, flows[0].key.role, flows[0].key.port),
            (10, 14, Role::Server, 80)
        );
        assert_eq!(flows[0].key.remote.to_string(), "10.0.0.1");
    }

    #[test]
    fn closed_socket_counts_once_and_exactly() {
        let mut model = Model::new(Filter::default(), 0, 100);
        let t = tuple(5000, "127.0.0.1", 80);
        model.replace_live(vec![obs(1, 10, KernelRole::Client, t, 100, 0)]);
        model.sample(1_000_000_000);
        // Destroyed with more bytes; the stale map entry shows up once more.
        let mut last = obs(1, 10, KernelRole::Client, t, 150, 20);
        last.counters.opened = 1;
        model.socket_closed(last, 2);
        model.replace_live(vec![obs(1, 10, KernelRole::Client, t, 150, 20)]);
        model.sample(2_000_000_000);
        model.sample(3_000_000_000);
        let flows = model.flows();
        assert_eq!(flows.len(), 1);
        assert_eq!((flows[0].counters.tx_bytes, flows[0].counters.rx_bytes, flows[0].counters.closed), (150, 20, 1));
        assert_eq!(model.live_sockets(), 0);
        let timeline = model.timeline();
        assert_eq!(timeline.len(), 3);
        assert_eq!(timeline[0].processes[0].tx_bytes, 100);
        assert_eq!(timeline[1].processes[0].tx_bytes, 50);
    }

    #[test]
    fn socket_destroyed_while_the_table_is_read_counts_once() {
        let mut model = Model::new(Filter::default(), 0, 100);
        let t = tuple(5000, "127.0.0.1", 80);
        model.replace_live(vec![obs(1, 10, KernelRole::Client, t, 100, 0)]);
        model.sample(1_000_000_000);
        // Gone from the table read, its final record drained right after.
        model.replace_live(Vec::new());
        let mut last = obs(1, 10, KernelRole::Client, t, 150, 0);
        last.counters.opened = 1;
        model.socket_closed(last, 2);
        model.forget_vanished();
        model.sample(2_000_000_000);
        let flows = model.flows();
        assert_eq!((flows[0].counters.tx_bytes, flows[0].counters.opened, flows[0].counters.closed), (150, 1, 1));
    }

    #[test]
    fn reused_socket_address_keeps_the_two_sockets_apart() {
        let mut model = Model::new(Filter::default(), 0, 100);
        let old_tuple = tuple(5000, "127.0.0.1", 80);
        let new_tuple = tuple(5001, "127.0.0.1", 81);
        model.replace_live(vec![obs(1, 10, KernelRole::Client, old_tuple, 100, 0)]);
        model.sample(1_000_000_000);
        // The old socket died during the read and a new one took its address.
        let mut reused = obs(1, 10, KernelRole::Client, new_tuple, 10, 0);
        reused.first_seen_ns = 5;
        model.replace_live(vec![reused]);
        model.socket_closed(obs(1, 10, KernelRole::Client, old_tuple, 150, 0), 4);
        model.forget_vanished();
        model.sample(2_000_000_000);
        let flows = model.flows();
        let tx = |port: u16| flows.iter().find(|f| f.key.port == port).map(|f| f.counters.tx_bytes);
        assert_eq!((tx(80), tx(81)), (Some(150), Some(10)));
        assert_eq!(model.live_sockets(), 1);
    }

    #[test]
    fn same_process_client_and_server_keep_two_flows() {
        let mut model = Model::new(Filter::default(), 0, 100);
        model.replace_live(vec![
            obs(1, 10, KernelRole::Client, tuple(40000, "127.0.0.1", 80), 3, 4),
            obs(2, 10, KernelRole::Server, tuple(80, "127.0.0.1", 40000), 4, 3),
        ]);
        model.sample(1);
        let flows = model.flows();
        assert_eq!(flows.len(), 2);
        assert_eq!(model.processes()[0].counters.tx_bytes, 7);
    }

    #[test]
    fn unknown_role_is_inferred_from_listeners_and_owner_from_proc() {
        let mut model = Model::new(Filter::default(), 0, 100);
        let listener = ProcSocket { tuple: tuple(80, "0.0.0.0", 0), state: tcp_state::LISTEN, inode: 9, pid: Some(10) };
        model.load_preexisting(vec![listener]);
        let mut cw = obs(1, 0, KernelRole::Unknown, tuple(80, "10.0.0.9", 5555), 0, 0);
        cw.state = tcp_state::CLOSE_WAIT;
        cw.state_since_ns = None;
        model.replace_live(vec![cw]);
        assert_eq!(model.unowned(u64::MAX).len(), 1);
        assert!(model.unowned(0).is_empty());
        model.assign_owners(&HashMap::from([(tuple(80, "10.0.0.9", 5555), 10)]));
        assert!(model.unowned(u64::MAX).is_empty());
        model.sample(5_000_000_000);
        let list = model.close_wait(5_000_000_000);
        assert_eq!(list.len(), 1);
        assert_eq!((list[0].pid, list[0].age_is_lower_bound, list[0].age_secs), (10, true, 5.0));
        assert_eq!(model.processes()[0].sockets.get("CLOSE_WAIT"), Some(&1));
        assert_eq!(model.processes()[0].sockets.get("LISTEN"), Some(&1));
    }

    #[test]
    fn counts_of_an_unowned_socket_wait_for_its_owner() {
        let mut model = Model::new(Filter::default(), 0, 100);
        let t = tuple(80, "10.0.0.1", 40000);
        let mut accepted = obs(1, 0, KernelRole::Server, t, 0, 0);
        accepted.counters.opened = 1;
        model.replace_live(vec![accepted]);
        model.sample(1);
        assert!(model.flows().is_empty());
        accepted.pid = 10;
        accepted.counters.rx_bytes = 5;
        model.replace_live(vec![accepted]);
        model.sample(2);
        let flows = model.flows();
        assert_eq!(flows.len(), 1);
        assert_eq!((flows[0].key.pid, flows[0].counters.opened, flows[0].counters.rx_bytes), (10, 1, 5));
    }

    #[test]
    fn window_drops_old_samples() {
        let mut model = Model::new(Filter::default(), 0, 2);
        let t = tuple(5000, "127.0.0.1", 80);
        for (i, tx) in [10u64, 20, 30].iter().enumerate() {
            model.replace_live(vec![obs(1, 10, KernelRole::Client, t, *tx, 0)]);
            model.sample((i as u64 + 1) * 1_000_000_000);
        }
        assert_eq!(model.flows()[0].counters.tx_bytes, 20);
        assert_eq!(model.samples().back().and_then(|s| s.flows.values().next()).map(|c| c.tx_bytes), Some(10));
        assert!((model.window_secs() - 2.0).abs() < 1e-9);
    }

    #[test]
    fn filters_apply_per_socket() {
        let filter = Filter { ports: vec![80], ..Filter::default() };
        let mut model = Model::new(filter, 0, 10);
        model.replace_live(vec![
            obs(1, 10, KernelRole::Client, tuple(40000, "127.0.0.1", 80), 3, 4),
            obs(2, 10, KernelRole::Client, tuple(40001, "127.0.0.1", 81), 100, 100),
        ]);
        model.sample(1);
        let flows = model.flows();
        assert_eq!(flows.len(), 1);
        assert_eq!(flows[0].counters.tx_bytes, 3);
    }

    #[test]
    fn processes_and_flows_carry_their_container_and_the_filter_selects_it() {
        use self::container::{Container, Runtime};
        let web = Arc::new(Identity {
            cgroup: "/libpod_parent/libpod-x".into(),
            unit: None,
            container: Some(Container {
                id: "ab".repeat(32),
                runtime: Runtime::Podman,
                name: Some("web".into()),
                pod: None,
            }),
        });
        let host = Arc::new(Identity {
            cgroup: "/system.slice/nginx.service".into(),
            unit: Some("nginx.service".into()),
            container: None,
        });
        let filter = Filter { containers: vec!["abab".into()], ..Filter::default() };
        for (filter, expected) in [(Filter::default(), vec![10, 11]), (filter, vec![10])] {
            let mut model = Model::new(filter, 0, 10);
            model.set_identity(10, web.clone());
            model.set_identity(11, host.clone());
            model.replace_live(vec![
                obs(1, 10, KernelRole::Client, tuple(40000, "127.0.0.1", 80), 3, 4),
                obs(2, 11, KernelRole::Client, tuple(40001, "127.0.0.1", 81), 100, 100),
                obs(3, 12, KernelRole::Client, tuple(40002, "127.0.0.1", 82), 1, 1),
            ]);
            model.sample(1);
            let mut pids: Vec<u32> = model.flows().iter().map(|f| f.key.pid).collect();
            pids.sort_unstable();
            let expected_all = if expected.len() == 2 { vec![10, 11, 12] } else { expected.clone() };
            assert_eq!(pids, expected_all);
            let flow = model.flows().into_iter().find(|f| f.key.pid == 10).expect("flow");
            assert_eq!(flow.identity.as_ref(), Some(&web));
            let processes = model.processes();
            let process = |pid: u32| processes.iter().find(|p| p.pid == pid);
            assert_eq!(process(10).and_then(|p| p.identity.as_ref()), Some(&web));
            if expected.len() == 2 {
                assert_eq!(process(11).and_then(|p| p.identity.as_ref()), Some(&host));
                assert_eq!(process(12).map(|p| p.identity.is_none()), Some(true), "never read");
            }
        }
    }
}
