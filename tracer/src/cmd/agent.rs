//! `tracer agent`: attach once, collect every `--interval` until SIGTERM or
//! SIGINT, and serve the result over HTTP ([`http`]): Prometheus metrics
//! ([`Metrics`]), the JSON report over the `--window`, the findings and the
//! dashboard.
//!
//! This task owns the tick driver and the metrics state; after each tick it
//! publishes one immutable [`Published`] snapshot through a `watch` channel,
//! which is all the HTTP side ever reads. The web config
//! (`--web.config.file`: TLS, basic auth) goes the same way: SIGHUP re-reads
//! it and publishes it whole, or logs why not and keeps the one in force.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::{oneshot, watch},
    task::JoinError,
    time::Instant,
};

use super::{
    driver::{self, Driver, DriverConfig},
    UsageError,
};
use crate::{
    cli::AgentArgs,
    load::Attached,
    output::{
        dashboard::Rates,
        http::{self, Limits, Published, ReportJson},
        metrics::{Metrics, MetricsConfig, Tick},
        webconfig::WebConfig,
    },
};

/// How long the HTTP side gets to finish after a signal, on top of its own
/// drain bound (the agent must exit within 2 s).
const SERVER_STOP_TIMEOUT: Duration = Duration::from_millis(1800);

/// Why the collection loop ended.
enum Stop {
    /// SIGTERM or SIGINT.
    Signal,
    /// The HTTP server's task ended by itself.
    ServerEnded(Result<(), JoinError>),
}

/// Binds, attaches (and drops the capabilities no longer needed) on this
/// thread, then collects and serves on the async runtime.
pub(crate) fn run(args: AgentArgs) -> anyhow::Result<()> {
    // Cheap failures first: a bad web config or a taken port should not
    // cost an attach.
    let web_config = match &args.web_config_file {
        Some(path) => WebConfig::load(path).map_err(|err| UsageError(err.to_string()))?,
        None => WebConfig::default(),
    };
    if args.web_config_file.is_none() && !args.listen.ip().is_loopback() {
        log::warn!(
            "serving plain HTTP without authentication on {}: anyone who reaches it sees process names, remote \
             addresses and ports; use --web.config.file for TLS and basic auth, or listen on loopback",
            args.listen
        );
    }
    let listener = std::net::TcpListener::bind(args.listen)
        .with_context(|| format!("cannot listen on {} (choose another address with --listen)", args.listen))?;
    listener.set_nonblocking(true).context("making the listening socket non-blocking")?;
    let attached = driver::attach(args.backend.map(Into::into), args.max_sockets)?;
    super::runtime()?.block_on(serve(args, listener, web_config, attached))
}

async fn serve(
    args: AgentArgs,
    listener: std::net::TcpListener,
    web_config: WebConfig,
    attached: Attached,
) -> anyhow::Result<()> {
    let listener = TcpListener::from_std(listener).context("registering the listening socket")?;
    let address = listener.local_addr().context("reading the listening address")?;
    // Installed before anything is announced, so a signal sent as soon as
    // the agent says it listens is handled, not fatal.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let scheme = if web_config.tls.is_some() { "https" } else { "http" };
    let (reload, security) = watch::channel(Arc::new(web_config));
    if let Some(path) = args.web_config_file.clone() {
        let mut sighup = signal(SignalKind::hangup()).context("cannot handle SIGHUP")?;
        tokio::spawn(async move {
            while sighup.recv().await.is_some() {
                match WebConfig::load(&path) {
                    Ok(config) => {
                        reload.send_replace(Arc::new(config));
                        eprintln!("tracer: web config reloaded from {}", path.display());
                    }
                    Err(err) => log::error!("{err}; keeping the previous web config"),
                }
            }
        });
    }

    let mut driver = Driver::start(
        attached,
        DriverConfig {
            filter: args.filters.filter(),
            thresholds: args.analysis.thresholds(),
            interval: args.interval,
            window: args.window,
        },
    )?;
    let backend = driver.backend().as_str();
    let config = MetricsConfig {
        top_n: usize::try_from(args.metrics_top_n).unwrap_or(usize::MAX),
        pid_label: args.metrics_pid_label,
        expiry_secs: args.metrics_expiry.as_secs_f64(),
    };
    let mut metrics = Metrics::new(config, backend).context("defining the metrics")?;

    // A first tick right away, so every endpoint has data from the start.
    let began = Instant::now();
    driver.tick();
    let first = publish(&driver, &mut metrics, began).context("the first collection")?;
    let (feed, feed_rx) = watch::channel(Arc::new(first));
    let (stop, stopped) = oneshot::channel::<()>();
    let app = http::router(feed_rx, security.clone());
    let mut server = tokio::spawn(http::serve(listener, app, Limits::default(), security, async move {
        let _ = stopped.await;
    }));
    eprintln!("tracer: agent listening on {scheme}://{address} ({backend} backend)");

    let until = async {
        tokio::select! {
            _ = sigterm.recv() => Stop::Signal,
            _ = sigint.recv() => Stop::Signal,
            ended = &mut server => Stop::ServerEnded(ended),
        }
    };
    let ended = driver
        .run(until, |driver, began| match publish(driver, &mut metrics, began) {
            Ok(published) => {
                feed.send_replace(Arc::new(published));
                // The snapshot, the report and the bodies of the previous
                // tick are freed now: give them back, or the resident size
                // keeps a tick's worth of them (which grows with what is
                // reported, e.g. a CLOSE_WAIT pile).
                crate::sys::release_free_memory();
            }
            // Keep serving the previous tick; the next may succeed.
            Err(err) => log::warn!("collection failed: {err:#}"),
        })
        .await;
    if let Stop::ServerEnded(ended) = ended {
        anyhow::bail!(
            "the HTTP server stopped unexpectedly: {}",
            match ended {
                Ok(()) => "it returned".to_owned(),
                Err(err) => err.to_string(),
            }
        );
    }

    let stopping = Instant::now();
    let _ = stop.send(());
    match tokio::time::timeout(SERVER_STOP_TIMEOUT, &mut server).await {
        Ok(Ok(())) => {}
        Ok(Err(err)) => log::warn!("the HTTP server failed while stopping: {err}"),
        Err(_) => {
            log::warn!("the HTTP server did not stop in time");
            server.abort();
        }
    }
    log::debug!("HTTP server stopped after {:?}", stopping.elapsed());
    // Detaches the eBPF programs.
    drop(driver);
    log::debug!("programs detached after {:?}", stopping.elapsed());
    eprintln!("tracer: agent stopped");
    Ok(())
}

/// Builds what the endpoints serve after the tick that began at `began`.
fn publish(driver: &Driver, metrics: &mut Metrics, began: Instant) -> anyhow::Result<Published> {
    let snapshot = driver.snapshot();
    let collect_duration_secs = began.elapsed().as_secs_f64();
    let model = driver.session().model();
    let no_growth = std::collections::HashMap::new();
    let comm = |pid: u32| model.comm(pid).to_owned();
    let container = |pid: u32| {
        model.identity(pid).and_then(|identity| identity.container.as_ref()).map(|c| c.label()).unwrap_or_default()
    };
    metrics.update(&Tick {
        now_secs: driver.started().elapsed().as_secs_f64(),
        flow_growth: model.samples().back().map_or(&no_growth, |sample| &sample.flows),
        comm: &comm,
        container: &container,
        snapshot: &snapshot,
        collect_duration_secs,
    });
    let findings_json = serde_json::to_vec(&snapshot.findings).context("serializing the findings")?.into();
    let dashboard_json =
        serde_json::to_vec(&Rates::new(&snapshot)).context("serializing the dashboard's rates")?.into();
    Ok(Published {
        report_json: ReportJson::Of(Arc::new(snapshot)),
        findings_json,
        dashboard_json,
        metrics_text: metrics.render().context("rendering the metrics")?.into(),
    })
}
