//! The agent's HTTP side: the routes (`/metrics`, `/api/v1/report`,
//! `/api/v1/findings`, `/healthz`, `/` dashboard and the rates it draws,
//! `/api/v1/dashboard`) and the server that runs
//! them with bounded headers, bodies, connections and time.
//!
//! Handlers only read [`Published`], which the collection loop replaces
//! whole after each tick through a `watch` channel: the HTTP side never
//! touches the session, and a response is always one consistent tick.
//!
//! The accept loop is hyper's HTTP/1 connection (axum's `serve` sets no
//! timer, so it cannot time out slow clients): headers must arrive within
//! [`Limits::header_read_timeout`] (this also closes idle keep-alive
//! connections), a connection lives at most [`Limits::max_connection_age`],
//! and at most [`Limits::max_connections`] are open at once. At capacity a
//! new connection takes the place of the oldest one without a request being
//! handled (an idle or slow client, or one that does not read its
//! response): held or slow connections cannot keep a scrape out, since the
//! newest connection is always the last to go. On shutdown the listener
//! closes first, then in-flight requests finish within
//! [`Limits::drain_timeout`].
//!
//! The [`WebConfig`] in force (`--web.config.file`, replaced whole on
//! SIGHUP through a `watch` channel) decides per connection whether it
//! speaks TLS (a plaintext request to a TLS port gets a 400 saying so, as
//! Go's servers answer) and per request whether credentials are needed:
//! with `basic_auth_users` set, every route but `/healthz` answers 401 with
//! `WWW-Authenticate` unless the request's basic credentials match a
//! bcrypt hash (checked off the async workers).

use std::{
    collections::VecDeque,
    future::Future,
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::Duration,
};

use axum::{
    extract::{Request, State},
    http::{header, HeaderValue, StatusCode},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
    Router,
};
use bytes::Bytes;
use hyper::server::conn::http1;
use hyper_util::{
    rt::{TokioIo, TokioTimer},
    service::TowerToHyperService,
};
use tokio::{
    net::{TcpListener, TcpStream},
    sync::watch,
    task::{AbortHandle, JoinSet},
    time::{sleep, Instant},
};

use super::{dashboard::DASHBOARD_HTML, metrics, report::Report, webconfig::WebConfig, Snapshot};

/// The web configuration in force (TLS, users, headers).
pub(crate) type Security = watch::Receiver<Arc<WebConfig>>;

/// The JSON report (schema `tracer.report/v1`): rendered when asked for,
/// from the tick's snapshot. It lists every CLOSE_WAIT socket, so a leak
/// makes it megabytes; rendered every tick for no reader, that text would
/// be held from one tick to the next and grow the agent with the leak.
#[derive(Debug, Clone)]
pub(crate) enum ReportJson {
    Rendered(Bytes),
    Of(Arc<Snapshot>),
}

impl Default for ReportJson {
    fn default() -> Self {
        ReportJson::Rendered(Bytes::new())
    }
}

impl ReportJson {
    pub(crate) fn render(&self) -> Result<Bytes, serde_json::Error> {
        match self {
            ReportJson::Rendered(body) => Ok(body.clone()),
            ReportJson::Of(snapshot) => serde_json::to_vec(&Report::new(snapshot)).map(Bytes::from),
        }
    }
}

/// What the endpoints serve, as of the last tick.
#[derive(Debug, Clone, Default)]
pub(crate) struct Published {
    /// The JSON report.
    pub(crate) report_json: ReportJson,
    /// The report's findings, a JSON array.
    pub(crate) findings_json: Bytes,
    /// The rates the dashboard draws (`dashboard::Rates`).
    pub(crate) dashboard_json: Bytes,
    /// The Prometheus exposition.
    pub(crate) metrics_text: Bytes,
}

/// The HTTP side's view of the last tick.
pub(crate) type Feed = watch::Receiver<Arc<Published>>;

/// Bounds on what a client may cost.
#[derive(Debug, Clone)]
pub(crate) struct Limits {
    /// A request's headers must arrive within this; also the idle time
    /// allowed between keep-alive requests.
    pub(crate) header_read_timeout: Duration,
    /// A connection is asked to close after this, whatever it does (bounds
    /// clients that read responses slowly).
    pub(crate) max_connection_age: Duration,
    /// Time a connection asked to close gets to finish its request.
    pub(crate) close_grace: Duration,
    /// Connections open at once; at capacity a new one closes the oldest
    /// that has no request being handled.
    pub(crate) max_connections: usize,
    /// Bytes of request line and headers (hyper answers 431 past it).
    pub(crate) max_header_bytes: usize,
    /// On shutdown, how long in-flight requests get to finish.
    pub(crate) drain_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            header_read_timeout: Duration::from_secs(10),
            max_connection_age: Duration::from_secs(120),
            close_grace: Duration::from_secs(5),
            max_connections: 128,
            max_header_bytes: 16 * 1024,
            // SIGTERM must end the agent within 2 s.
            drain_timeout: Duration::from_millis(1500),
        }
    }
}

/// hyper refuses buffers smaller than this.
const MIN_HEADER_BUFFER: usize = 8192;

/// The agent's routes, behind the authentication `security` asks for.
pub(crate) fn router(feed: Feed, security: Security) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/metrics", get(metrics_text))
        .route("/api/v1/report", get(report))
        .route("/api/v1/findings", get(findings))
        .route("/api/v1/dashboard", get(dashboard_rates))
        .route("/healthz", get(healthz))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(middleware::from_fn(no_request_bodies))
        .layer(middleware::from_fn_with_state(security, authorize))
        .layer(middleware::map_response(common_headers))
        .with_state(feed)
}

/// Basic auth where the web config asks for it (never on `/healthz`),
/// and the web config's extra headers on every response.
async fn authorize(State(security): State<Security>, request: Request, next: Next) -> Response {
    let config = Arc::clone(&security.borrow());
    let allowed = request.uri().path() == "/healthz"
        || config.users.is_empty()
        || match basic_credentials(request.headers()) {
            Some((user, password)) => {
                let config = Arc::clone(&config);
                // bcrypt is slow by design: not on the async workers.
                tokio::task::spawn_blocking(move || config.authenticate(&user, &password)).await.unwrap_or(false)
            }
            None => false,
        };
    let mut response = if allowed {
        next.run(request).await
    } else {
        let mut response = error(StatusCode::UNAUTHORIZED, "authentication required");
        response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Basic realm=\"tracer\""));
        response
    };
    for (name, value) in &config.headers {
        response.headers_mut().insert(name.clone(), value.clone());
    }
    response
}

/// The user and password of an `Authorization: Basic` header.
fn basic_credentials(headers: &axum::http::HeaderMap) -> Option<(String, String)> {
    use base64::Engine as _;
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, encoded) = value.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD.decode(encoded.trim()).ok()?;
    let (user, password) = std::str::from_utf8(&decoded).ok()?.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

fn current(feed: &Feed) -> Arc<Published> {
    Arc::clone(&feed.borrow())
}

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // The page needs nothing but itself and this origin's API.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
            ),
        ],
        DASHBOARD_HTML,
    )
        .into_response()
}

async fn metrics_text(State(feed): State<Feed>) -> Response {
    ([(header::CONTENT_TYPE, metrics::CONTENT_TYPE)], current(&feed).metrics_text.clone()).into_response()
}

async fn report(State(feed): State<Feed>) -> Response {
    let published = current(&feed);
    // Megabytes for a large CLOSE_WAIT leak: off the serving threads.
    match tokio::task::spawn_blocking(move || published.report_json.render()).await {
        Ok(Ok(body)) => json(body),
        Ok(Err(err)) => error(StatusCode::INTERNAL_SERVER_ERROR, &format!("cannot serialize the report: {err}")),
        Err(_) => error(StatusCode::INTERNAL_SERVER_ERROR, "the report could not be rendered"),
    }
}

async fn findings(State(feed): State<Feed>) -> Response {
    json(current(&feed).findings_json.clone())
}

async fn dashboard_rates(State(feed): State<Feed>) -> Response {
    json(current(&feed).dashboard_json.clone())
}

async fn healthz() -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], "ok").into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "no such endpoint; see /, /metrics, /api/v1/report, /api/v1/findings, /api/v1/dashboard, /healthz",
    )
}

async fn method_not_allowed() -> Response {
    error(StatusCode::METHOD_NOT_ALLOWED, "method not allowed; this API only answers GET and HEAD")
}

fn json(body: Bytes) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// A JSON error body: `{"error": "..."}`.
fn error(status: StatusCode, message: &str) -> Response {
    let body = serde_json::json!({ "error": message }).to_string();
    (status, [(header::CONTENT_TYPE, "application/json")], body).into_response()
}

/// No endpoint takes a body, so none is read: refuse declared ones rather
/// than leave them unread on the connection.
async fn no_request_bodies(request: Request, next: Next) -> Response {
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.trim() != "0");
    if declared || headers.contains_key(header::TRANSFER_ENCODING) {
        return error(StatusCode::PAYLOAD_TOO_LARGE, "request bodies are not accepted");
    }
    next.run(request).await
}

async fn common_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// One open connection, in accept order.
struct Open {
    task: AbortHandle,
    /// Requests being handled on it now.
    in_flight: Arc<AtomicUsize>,
}

/// At capacity: closes the oldest connection with no request being handled
/// (waiting for its client to send, or for it to read), else the oldest.
/// The newest connection, the one just accepted, is never chosen, so a
/// client that sends its request at once is always served.
fn make_room(open: &mut VecDeque<Open>, capacity: usize) {
    open.retain(|connection| !connection.task.is_finished());
    while open.len() >= capacity {
        let victim = open.iter().position(|c| c.in_flight.load(Ordering::Acquire) == 0).unwrap_or(0);
        let Some(connection) = open.remove(victim) else { return };
        connection.task.abort();
        log::debug!("HTTP: {capacity} connections open; closed the oldest idle or slow one");
    }
}

/// Serves `app` on `listener` until `shutdown` completes, then stops
/// accepting and lets in-flight requests finish (within
/// [`Limits::drain_timeout`]).
pub(crate) async fn serve(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    security: Security,
    shutdown: impl Future<Output = ()>,
) {
    let (closing_tx, closing_rx) = watch::channel(false);
    let capacity = limits.max_connections.max(1);
    let mut connections = JoinSet::new();
    let mut open = VecDeque::with_capacity(capacity);
    tokio::pin!(shutdown);
    loop {
        while connections.try_join_next().is_some() {}
        let stream = tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _peer)) => stream,
                Err(err) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    log::warn!("accepting an HTTP connection failed: {err}");
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        make_room(&mut open, capacity);
        let in_flight = Arc::new(AtomicUsize::new(0));
        let tls = security.borrow().tls.clone();
        let task = connections.spawn(serve_stream(
            stream,
            tls,
            app.clone(),
            limits.clone(),
            closing_rx.clone(),
            Arc::clone(&in_flight),
        ));
        open.push_back(Open { task, in_flight });
    }
    // New connections are refused from here on.
    drop(listener);
    let _ = closing_tx.send(true);
    let drained =
        tokio::time::timeout(limits.drain_timeout, async { while connections.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log::warn!("{} HTTP connection(s) did not finish in time; closing them", connections.len());
    }
    // Dropping the set aborts whatever is left.
}

/// Counts a request as being handled while it lives (also if the
/// connection is dropped mid-request).
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn enter(count: &Arc<AtomicUsize>) -> Self {
        count.fetch_add(1, Ordering::AcqRel);
        InFlight(Arc::clone(count))
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What a client that speaks plain HTTP to the TLS port is told.
const PLAINTEXT_TO_TLS: &[u8] = b"HTTP/1.0 400 Bad Request\r\nContent-Type: text/plain; charset=utf-8\r\n\
Connection: close\r\n\r\nClient sent an HTTP request to an HTTPS server.\n";

/// Serves one accepted connection, over TLS when `tls` is set.
async fn serve_stream(
    stream: TcpStream,
    tls: Option<Arc<rustls::ServerConfig>>,
    app: Router,
    limits: Limits,
    closing: watch::Receiver<bool>,
    in_flight: Arc<AtomicUsize>,
) {
    let _ = stream.set_nodelay(true);
    let Some(tls) = tls else {
        return serve_connection(stream, app, limits, closing, in_flight).await;
    };
    // The handshake counts against the header deadline.
    let handshake = async {
        let mut first = [0u8; 1];
        // A TLS connection starts with a handshake record (0x16); plain
        // HTTP with a method name.
        if matches!(stream.peek(&mut first).await, Ok(1) if first[0].is_ascii_alphabetic()) {
            let mut unsent = PLAINTEXT_TO_TLS;
            while !unsent.is_empty() && stream.writable().await.is_ok() {
                match stream.try_write(unsent) {
                    Ok(sent) => unsent = &unsent[sent..],
                    Err(err) if err.kind() == std::io::ErrorKind::WouldBlock => continue,
                    Err(_) => break,
                }
            }
            return Err("plain HTTP sent to the TLS port".to_owned());
        }
        tokio_rustls::TlsAcceptor::from(tls).accept(stream).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(limits.header_read_timeout, handshake).await {
        Ok(Ok(stream)) => serve_connection(stream, app, limits, closing, in_flight).await,
        Ok(Err(err)) => log::debug!("TLS handshake failed: {err}"),
        Err(_) => log::debug!("TLS handshake timed out"),
    }
}

async fn serve_connection<S>(
    stream: S,
    app: Router,
    limits: Limits,
    mut closing: watch::Receiver<bool>,
    in_flight: Arc<AtomicUsize>,
) where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(limits.max_header_bytes.max(MIN_HEADER_BUFFER))
        .max_headers(64);
    let app = TowerToHyperService::new(app);
    let service = hyper::service::service_fn(move |request| {
        let handling = InFlight::enter(&in_flight);
        let response = hyper::service::Service::call(&app, request);
        async move {
            let response = response.await;
            drop(handling);
            response
        }
    });
    let connection = builder.serve_connection(TokioIo::new(stream), service);
    tokio::pin!(connection);
    let too_old = sleep(limits.max_connection_age);
    tokio::pin!(too_old);
    let mut asked_to_close = false;
    loop {
        tokio::select! {
            result = connection.as_mut() => {
                if let Err(err) = result {
                    log::debug!("HTTP connection ended: {err}");
                }
                return;
            }
            _ = closing.changed(), if !asked_to_close => {
                connection.as_mut().graceful_shutdown();
                asked_to_close = true;
                too_old.as_mut().reset(Instant::now() + limits.close_grace);
            }
            _ = &mut too_old => {
                if asked_to_close {
                    // Still not done after the grace: drop it.
                    return;
                }
                connection.as_mut().graceful_shutdown();
                asked_to_close = true;
                too_old.as_mut().reset(Instant::now() + limits.close_grace);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpStream as StdTcpStream},
    };

    use super::*;

    struct Server {
        runtime: tokio::runtime::Runtime,
        addr: SocketAddr,
        stop: Option<tokio::sync::oneshot::Sender<()>>,
        done: Option<tokio::task::JoinHandle<()>>,
    }

    impl Server {
        fn start(limits: Limits) -> Server {
            let runtime =
                tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("runtime");
            let published = Published {
                report_json: ReportJson::Rendered(Bytes::from_static(br#"{"schema":"tracer.report/v1"}"#)),
                findings_json: Bytes::from_static(b"[]"),
                dashboard_json: Bytes::from_static(br#"{"tx":[]}"#),
                metrics_text: Bytes::from_static(b"# HELP x y\n# TYPE x gauge\nx 1\n"),
            };
            let (_feed_tx, feed) = watch::channel(Arc::new(published));
            let listener = runtime.block_on(TcpListener::bind("127.0.0.1:0")).expect("bind");
            let addr = listener.local_addr().expect("addr");
            let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
            let (_, security) = watch::channel(Arc::new(WebConfig::default()));
            let done = runtime.spawn(serve(listener, router(feed, security.clone()), limits, security, async move {
                let _ = stopped.await;
            }));
            Server { runtime, addr, stop: Some(stop), done: Some(done) }
        }

        fn raw(&self, request: &[u8]) -> String {
            let mut stream = StdTcpStream::connect(self.addr).expect("connect");
            stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            stream.write_all(request).expect("write");
            let mut response = Vec::new();
            let _ = stream.read_to_end(&mut response);
            String::from_utf8_lossy(&response).into_owned()
        }

        fn get(&self, path: &str) -> String {
            self.raw(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        }

        fn stop(mut self) {
            if let Some(stop) = self.stop.take() {
                let _ = stop.send(());
            }
            if let Some(done) = self.done.take() {
                self.runtime.block_on(done).expect("server ends");
            }
        }
    }

    fn status(response: &str) -> &str {
        response.split(' ').nth(1).unwrap_or("")
    }

    fn body(response: &str) -> &str {
        response.split_once("\r\n\r\n").map(|(_, body)| body).unwrap_or("")
    }

    #[test]
    fn routes_answer_with_the_published_tick() {
        let server = Server::start(Limits::default());
        let response = server.get("/healthz");
        assert_eq!((status(&response), body(&response)), ("200", "ok"));
        let response = server.get("/metrics");
        assert!(response.contains("content-type: text/plain; version=0.0.4"), "{response}");
        assert!(body(&response).ends_with("x 1\n"));
        let response = server.get("/api/v1/report");
        assert!(response.contains("content-type: application/json"));
        assert_eq!(body(&response), r#"{"schema":"tracer.report/v1"}"#);
        assert_eq!(body(&server.get("/api/v1/findings")), "[]");
        assert_eq!(body(&server.get("/api/v1/dashboard")), r#"{"tx":[]}"#);
        let response = server.get("/");
        assert!(response.contains("content-security-policy: default-src 'none'"), "{response}");
        assert!(body(&response).starts_with("<!DOCTYPE html>"));
        server.stop();
    }

    #[test]
    fn errors_are_json_with_the_right_status() {
        let server = Server::start(Limits::default());
        let response = server.get("/nope");
        assert_eq!(status(&response), "404");
        let error: serde_json::Value = serde_json::from_str(body(&response)).expect("json");
        assert!(error["error"].is_string());
        let response = server.raw(b"DELETE /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
        assert_eq!(status(&response), "405");
        assert!(body(&response).contains("\"error\""));
        let response =
            server.raw(b"POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nConnection: close\r\n\r\nabc");
        assert_eq!(status(&response), "413", "{response}");
        let huge = format!("GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
        assert_eq!(status(&server.raw(huge.as_bytes())), "431");
        server.stop();
    }

    #[test]
    fn slow_clients_are_cut_off() {
        let server = Server::start(Limits { header_read_timeout: Duration::from_millis(300), ..Limits::default() });
        let mut stream = StdTcpStream::connect(server.addr).expect("connect");
        // A read timeout far above the server's: only a server that closes
        // the connection ends the read with EOF instead of a timeout error.
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        stream.write_all(b"GET /healthz HTTP/1.1\r\nHost:").expect("write");
        let mut response = Vec::new();
        let ended = stream.read_to_end(&mut response);
        assert!(ended.is_ok(), "not cut off by the server: {ended:?}");
        server.stop();
    }

    /// Reads until the server closes the connection (EOF, or a reset when
    /// it closed with bytes unread); false if the read timed out instead.
    fn closed_by_server(stream: &mut StdTcpStream) -> bool {
        // A read timeout far above anything the server waits for: only a
        // server that closes the connection ends the read first.
        stream.set_read_timeout(Some(Duration::from_secs(60))).expect("timeout");
        let mut sink = Vec::new();
        match stream.read_to_end(&mut sink) {
            Ok(_) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
        }
    }

    #[test]
    fn at_capacity_a_new_client_is_served_and_the_oldest_idle_one_goes() {
        // Header timeout far above the client's read timeout: only eviction
        // can make room in time.
        let limits = Limits { max_connections: 4, header_read_timeout: Duration::from_secs(120), ..Limits::default() };
        let server = Server::start(limits);
        // Idle, and one half-sent request (slowloris): all four slots.
        let mut held: Vec<StdTcpStream> =
            (0..3).map(|_| StdTcpStream::connect(server.addr).expect("connect")).collect();
        let mut slow = StdTcpStream::connect(server.addr).expect("connect");
        slow.write_all(b"GET /metrics HTTP/1.1\r\nHost:").expect("write");
        held.push(slow);
        // `raw` reads with a 5 s timeout; the slots are held for 120 s.
        let response = server.get("/healthz");
        assert_eq!((status(&response), body(&response)), ("200", "ok"), "{response}");
        // The oldest went to make room.
        assert!(closed_by_server(&mut held[0]), "the oldest idle connection was not closed");
        for _ in 0..3 {
            let response = server.get("/metrics");
            assert_eq!(status(&response), "200", "{response}");
        }
        server.stop();
    }

    #[test]
    fn shutdown_lets_idle_connections_go_and_refuses_new_ones() {
        let server = Server::start(Limits::default());
        // An idle keep-alive connection must not hold the shutdown up.
        let mut idle = StdTcpStream::connect(server.addr).expect("connect");
        idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n").expect("write");
        let mut buffer = [0u8; 512];
        let _ = idle.read(&mut buffer).expect("response");
        let addr = server.addr;
        // `stop` joins the server: it returns only once the idle connection
        // no longer holds the shutdown up.
        server.stop();
        assert!(StdTcpStream::connect(addr).is_err());
    }
}
