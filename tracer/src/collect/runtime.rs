//! Container names from the runtimes that can be asked: the Docker Engine
//! API on `/var/run/docker.sock` and Podman's Docker-compatible API on
//! `/run/podman/podman.sock` (`DOCKER_HOST` / `CONTAINER_HOST` with a
//! `unix://` address move them), `GET /containers/<id>/json` over a small
//! HTTP/1.1 client.
//!
//! Lookups never run on the tick: [`Runtimes::names`] answers from a cache
//! at once and queues what it does not know for a worker thread, which asks
//! with a 1 s deadline per request. An absent or slow runtime costs the tick
//! nothing (the id alone is shown); failures are retried after a minute.
//! The cache is bounded ([`CACHE_ENTRIES`], oldest first out).

use std::{
    collections::{HashMap, VecDeque},
    io::{self, Read, Write},
    os::unix::net::UnixStream,
    path::{Path, PathBuf},
    sync::{
        mpsc::{sync_channel, Receiver, SyncSender, TrySendError},
        Arc, Mutex, PoisonError,
    },
    thread,
    time::{Duration, Instant},
};

use log::debug;

use crate::model::container::{Container, Runtime};

/// How long one request to a runtime may take, connect to last byte.
pub(crate) const TIMEOUT: Duration = Duration::from_secs(1);
/// Containers whose answer (or failure) is kept.
const CACHE_ENTRIES: usize = 4096;
/// After a failed lookup, ask again no sooner than this.
const RETRY_AFTER: Duration = Duration::from_secs(60);
/// Lookups waiting for the worker; more are asked for at a later tick.
const QUEUE: usize = 256;
/// An inspect answer is a few KiB; refuse anything far larger.
const MAX_RESPONSE: usize = 4 << 20;

/// What a runtime said about a container.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Names {
    /// The runtime that answered.
    pub(crate) runtime: Option<Runtime>,
    /// The container's name (`io.kubernetes.container.name` when set).
    pub(crate) name: Option<String>,
    pub(crate) pod_name: Option<String>,
    pub(crate) pod_namespace: Option<String>,
}

impl Names {
    /// The container with these names (and the answering runtime where
    /// its path did not tell).
    pub(crate) fn apply(&self, container: &Container) -> Container {
        let mut named = container.clone();
        if let (Runtime::Unknown, Some(runtime)) = (named.runtime, self.runtime) {
            named.runtime = runtime;
        }
        named.name = self.name.clone().or(named.name);
        if let Some(pod) = &mut named.pod {
            pod.name = self.pod_name.clone().or(pod.name.take());
            pod.namespace = self.pod_namespace.clone().or(pod.namespace.take());
        }
        named
    }
}

/// A runtime's API socket.
#[derive(Debug, Clone)]
struct Endpoint {
    runtime: Runtime,
    socket: PathBuf,
}

/// `unix:///path` from an environment variable, else the default path.
fn socket_path(variable: &str, default: &str) -> PathBuf {
    match std::env::var(variable) {
        Ok(value) if value.starts_with("unix://") => PathBuf::from(&value["unix://".len()..]),
        _ => PathBuf::from(default),
    }
}

fn default_endpoints() -> Vec<Endpoint> {
    vec![
        Endpoint { runtime: Runtime::Docker, socket: socket_path("DOCKER_HOST", "/var/run/docker.sock") },
        Endpoint { runtime: Runtime::Podman, socket: socket_path("CONTAINER_HOST", "/run/podman/podman.sock") },
    ]
}

#[derive(Debug, Clone)]
enum Entry {
    Pending,
    Found(Arc<Names>),
    Missing { retry_at: Instant },
}

#[derive(Default)]
struct Cache {
    entries: HashMap<String, Entry>,
    /// Ids in insertion order, for eviction.
    order: VecDeque<String>,
}

impl Cache {
    fn set(&mut self, id: &str, entry: Entry) {
        if self.entries.insert(id.to_owned(), entry).is_none() {
            self.order.push_back(id.to_owned());
        }
        while self.entries.len() > CACHE_ENTRIES {
            let Some(oldest) = self.order.pop_front() else { break };
            self.entries.remove(&oldest);
        }
    }
}

/// The runtimes' answers, and the worker that asks them.
pub(crate) struct Runtimes {
    cache: Arc<Mutex<Cache>>,
    requests: Option<SyncSender<(String, Runtime)>>,
}

impl Runtimes {
    /// Starts the worker thread over the usual sockets.
    pub(crate) fn start() -> Self {
        Self::with_endpoints(default_endpoints())
    }

    fn with_endpoints(endpoints: Vec<Endpoint>) -> Self {
        let cache = Arc::new(Mutex::new(Cache::default()));
        let (sender, receiver) = sync_channel(QUEUE);
        let shared = cache.clone();
        let spawned =
            thread::Builder::new().name("runtime-names".into()).spawn(move || worker(&endpoints, &receiver, &shared));
        let requests = match spawned {
            Ok(_) => Some(sender),
            Err(e) => {
                debug!("no container-name lookups: {e}");
                None
            }
        };
        Runtimes { cache, requests }
    }

    /// What the runtime said about `container`, if it has answered; never
    /// waits. A container not asked about yet is queued for the worker.
    pub(crate) fn names(&self, container: &Container) -> Option<Arc<Names>> {
        let requests = self.requests.as_ref()?;
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        match cache.entries.get(&container.id) {
            Some(Entry::Found(names)) => return Some(names.clone()),
            Some(Entry::Pending) => return None,
            Some(Entry::Missing { retry_at }) if Instant::now() < *retry_at => return None,
            _ => {}
        }
        match requests.try_send((container.id.clone(), container.runtime)) {
            Ok(()) => cache.set(&container.id, Entry::Pending),
            // The worker is busy: asked again at a later tick.
            Err(TrySendError::Full(_)) => {}
            Err(TrySendError::Disconnected(_)) => {}
        }
        None
    }
}

fn worker(endpoints: &[Endpoint], requests: &Receiver<(String, Runtime)>, cache: &Mutex<Cache>) {
    while let Ok((id, runtime)) = requests.recv() {
        let entry = match lookup(endpoints, &id, runtime) {
            Some(names) => Entry::Found(Arc::new(names)),
            None => Entry::Missing { retry_at: Instant::now() + RETRY_AFTER },
        };
        cache.lock().unwrap_or_else(PoisonError::into_inner).set(&id, entry);
    }
}

/// Asks the runtime the path named, or each one when it did not say.
fn lookup(endpoints: &[Endpoint], id: &str, runtime: Runtime) -> Option<Names> {
    let candidates = endpoints.iter().filter(|e| match runtime {
        Runtime::Docker | Runtime::Podman => e.runtime == runtime,
        _ => true,
    });
    for endpoint in candidates {
        if !endpoint.socket.exists() {
            continue;
        }
        match inspect(&endpoint.socket, id, TIMEOUT) {
            Ok(Some(mut names)) => {
                names.runtime = Some(endpoint.runtime);
                return Some(names);
            }
            Ok(None) => debug!("{}: no container {id}", endpoint.socket.display()),
            Err(e) => debug!("{}: inspecting {id}: {e}", endpoint.socket.display()),
        }
    }
    None
}

/// `GET /containers/<id>/json`: `Ok(None)` when the runtime does not know
/// the container.
fn inspect(socket: &Path, id: &str, timeout: Duration) -> io::Result<Option<Names>> {
    let (status, body) = get(socket, &format!("/containers/{id}/json"), timeout)?;
    match status {
        200 => Ok(Some(parse_inspect(&body)?)),
        404 => Ok(None),
        other => Err(io::Error::other(format!("HTTP status {other}"))),
    }
}

/// Reads the names out of an inspect answer.
fn parse_inspect(body: &[u8]) -> io::Result<Names> {
    let value: serde_json::Value = serde_json::from_slice(body).map_err(io::Error::other)?;
    let labels = &value["Config"]["Labels"];
    let label = |key: &str| labels[key].as_str().filter(|s| !s.is_empty()).map(str::to_owned);
    let own_name = value["Name"].as_str().map(|n| n.trim_start_matches('/')).filter(|n| !n.is_empty());
    Ok(Names {
        runtime: None,
        name: label("io.kubernetes.container.name").or(own_name.map(str::to_owned)),
        pod_name: label("io.kubernetes.pod.name"),
        pod_namespace: label("io.kubernetes.pod.namespace"),
    })
}

/// One HTTP/1.1 GET over a unix socket, all of it within `timeout`.
/// Returns the status and the body.
fn get(socket: &Path, path: &str, timeout: Duration) -> io::Result<(u16, Vec<u8>)> {
    let deadline = Instant::now() + timeout;
    let left = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "the runtime did not answer in time"))
    };
    let mut stream = UnixStream::connect(socket)?;
    stream.set_write_timeout(Some(left()?))?;
    stream.write_all(format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").as_bytes())?;
    let mut response = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        stream.set_read_timeout(Some(left()?))?;
        let n = match stream.read(&mut buf) {
            Ok(n) => n,
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut) => {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "the runtime did not answer in time"))
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if n == 0 {
            break;
        }
        response.extend_from_slice(&buf[..n]);
        if response.len() > MAX_RESPONSE {
            return Err(io::Error::other("answer too large"));
        }
        if let Some(done) = complete(&response)? {
            return Ok(done);
        }
    }
    if let Some(done) = complete(&response)? {
        return Ok(done);
    }
    until_eof(&response).ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "answer cut short"))
}

/// A response read to its end (the peer closed): one without a length.
fn until_eof(response: &[u8]) -> Option<(u16, Vec<u8>)> {
    let (status, headers, body) = split(response).ok()??;
    let chunked = header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked"));
    let sized = header(headers, "content-length").is_some();
    (!chunked && !sized).then(|| (status, body.to_vec()))
}

/// Status, header block and body, once the header block is complete.
fn split(response: &[u8]) -> io::Result<Option<(u16, &str, &[u8])>> {
    let Some(end) = response.windows(4).position(|w| w == b"\r\n\r\n") else { return Ok(None) };
    let head = std::str::from_utf8(&response[..end]).map_err(io::Error::other)?;
    let (status_line, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    let status = status_line
        .strip_prefix("HTTP/1.")
        .and_then(|rest| rest.get(2..5))
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| io::Error::other(format!("not an HTTP answer: {status_line:?}")))?;
    Ok(Some((status, headers, &response[end + 4..])))
}

fn header<'a>(headers: &'a str, name: &str) -> Option<&'a str> {
    headers.lines().find_map(|line| {
        let (key, value) = line.split_once(':')?;
        key.trim().eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

/// The whole response, once it has arrived (by its length or its last
/// chunk); `None` while more is due.
fn complete(response: &[u8]) -> io::Result<Option<(u16, Vec<u8>)>> {
    let Some((status, headers, body)) = split(response)? else { return Ok(None) };
    if header(headers, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        return dechunk(body).map(|body| body.map(|b| (status, b)));
    }
    if let Some(length) = header(headers, "content-length") {
        let length: usize = length.parse().map_err(io::Error::other)?;
        return Ok((body.len() >= length).then(|| (status, body[..length].to_vec())));
    }
    Ok(None)
}

/// The body of a chunked transfer, once its last chunk has arrived.
fn dechunk(mut data: &[u8]) -> io::Result<Option<Vec<u8>>> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = data.windows(2).position(|w| w == b"\r\n") else { return Ok(None) };
        let size_text = std::str::from_utf8(&data[..line_end]).map_err(io::Error::other)?;
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = usize::from_str_radix(size_text, 16).map_err(io::Error::other)?;
        let rest = &data[line_end + 2..];
        if size == 0 {
            return Ok(Some(body));
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        body.extend_from_slice(&rest[..size]);
        data = &rest[size + 2..];
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::net::UnixListener, sync::atomic::AtomicU32};

    use super::*;
    use crate::model::container::{Pod, Qos};

    const ID: &str = "4e1b1dfcb9b8f21ff7e9a5c5a3e2d6a3b8f1c2d3e4f5a6b7c8d9e0f1a2b3c4d5";

    fn temp_socket() -> PathBuf {
        static N: AtomicU32 = AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::env::temp_dir().join(format!("tracer-runtime-{}-{n}.sock", std::process::id()))
    }

    /// A fake runtime: answers each connection with `answer` (after reading
    /// the request), or never answers when `answer` is `None`.
    fn serve(answer: Option<String>) -> (PathBuf, thread::JoinHandle<()>) {
        let path = temp_socket();
        let _ = std::fs::remove_file(&path);
        let listener = UnixListener::bind(&path).expect("bind");
        let handle = thread::spawn(move || {
            let Ok((mut stream, _)) = listener.accept() else { return };
            let mut request = [0u8; 4096];
            let _ = stream.read(&mut request);
            match &answer {
                Some(text) => {
                    // In pieces, as a runtime may write it.
                    for piece in text.as_bytes().chunks(7) {
                        let _ = stream.write_all(piece);
                    }
                }
                // Holds the connection until the client gives up.
                None => {
                    let _ = stream.read(&mut request);
                }
            }
        });
        (path, handle)
    }

    fn inspect_json(name: &str, labels: &str) -> String {
        format!(r#"{{"Id":"{ID}","Name":"{name}","Config":{{"Labels":{{{labels}}}}}}}"#)
    }

    #[test]
    fn reads_a_sized_answer() {
        let body = inspect_json("/web", r#""a":"b""#);
        let (path, server) = serve(Some(format!(
            "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )));
        let names = inspect(&path, ID, TIMEOUT).expect("answer").expect("known");
        assert_eq!(names.name.as_deref(), Some("web"));
        assert_eq!(names.pod_name, None);
        server.join().expect("server");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn reads_a_chunked_answer_with_kubernetes_labels() {
        let body = inspect_json(
            "/k8s_web_web-7d9f_shop_0a3c_0",
            r#""io.kubernetes.pod.name":"web-7d9f","io.kubernetes.pod.namespace":"shop","io.kubernetes.container.name":"web""#,
        );
        let (first, second) = body.split_at(10);
        let chunked = format!(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{first}\r\n{:x}\r\n{second}\r\n0\r\n\r\n",
            first.len(),
            second.len()
        );
        let (path, server) = serve(Some(chunked));
        let names = inspect(&path, ID, TIMEOUT).expect("answer").expect("known");
        assert_eq!(
            (names.name.as_deref(), names.pod_name.as_deref(), names.pod_namespace.as_deref()),
            (Some("web"), Some("web-7d9f"), Some("shop"))
        );
        server.join().expect("server");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn unknown_container_and_errors() {
        let (path, server) = serve(Some("HTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}".to_owned()));
        assert!(inspect(&path, ID, TIMEOUT).expect("answer").is_none());
        server.join().expect("server");
        let (path2, server) = serve(Some("garbage\r\n\r\n".to_owned()));
        assert!(inspect(&path2, ID, TIMEOUT).is_err());
        server.join().expect("server");
        let (path3, server) = serve(Some("HTTP/1.0 200 OK\r\n\r\n{\"Name\":\"/old\"}".to_owned()));
        assert_eq!(inspect(&path3, ID, TIMEOUT).expect("answer").and_then(|n| n.name).as_deref(), Some("old"));
        server.join().expect("server");
        for p in [path, path2, path3] {
            std::fs::remove_file(&p).expect("cleanup");
        }
        assert!(inspect(Path::new("/nonexistent/tracer.sock"), ID, TIMEOUT).is_err());
    }

    #[test]
    fn a_runtime_that_never_answers_costs_the_timeout_at_most() {
        let (path, server) = serve(None);
        let began = Instant::now();
        let err = inspect(&path, ID, Duration::from_millis(200)).expect_err("times out");
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        // Bounded by the deadline, with slack for a loaded machine.
        assert!(began.elapsed() < Duration::from_millis(2000), "{:?}", began.elapsed());
        server.join().expect("server");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn names_never_wait_and_arrive_later() {
        let body = inspect_json("/web", "");
        let (path, server) = serve(Some(format!("HTTP/1.1 200 OK\r\nContent-Length: {}\r\n\r\n{body}", body.len())));
        let runtimes = Runtimes::with_endpoints(vec![
            Endpoint { runtime: Runtime::Docker, socket: PathBuf::from("/nonexistent/docker.sock") },
            Endpoint { runtime: Runtime::Podman, socket: path.clone() },
        ]);
        let container = Container {
            id: ID.into(),
            runtime: Runtime::Unknown,
            name: None,
            pod: Some(Pod { uid: "u".into(), name: None, namespace: None, qos: Qos::Burstable }),
        };
        assert_eq!(runtimes.names(&container), None, "the first call only queues");
        let mut names = None;
        for _ in 0..500 {
            names = runtimes.names(&container);
            if names.is_some() {
                break;
            }
            thread::sleep(Duration::from_millis(10));
        }
        let names = names.expect("answered");
        assert_eq!(names.runtime, Some(Runtime::Podman));
        let named = names.apply(&container);
        assert_eq!((named.runtime, named.name.as_deref()), (Runtime::Podman, Some("web")));
        server.join().expect("server");
        std::fs::remove_file(&path).expect("cleanup");
    }

    #[test]
    fn the_cache_is_bounded() {
        let mut cache = Cache::default();
        for i in 0..CACHE_ENTRIES + 10 {
            cache.set(&i.to_string(), Entry::Pending);
        }
        assert_eq!(cache.entries.len(), CACHE_ENTRIES);
        assert!(!cache.entries.contains_key("0"));
        assert!(cache.entries.contains_key(&(CACHE_ENTRIES + 9).to_string()));
    }
}
