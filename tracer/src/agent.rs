//! `tracer agent`: attach once, collect every `--interval` until SIGTERM or
//! SIGINT, and serve the result over HTTP ([`crate::http`]): Prometheus
//! metrics ([`crate::metrics`]), the JSON report over the `--window`, the
//! findings and the dashboard.
//!
//! This task owns the session and the metrics state; after each tick it
//! publishes one immutable [`Published`] snapshot through a `watch` channel,
//! which is all the HTTP side ever reads.

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::{
    net::TcpListener,
    signal::unix::{signal, SignalKind},
    sync::{oneshot, watch},
    time::{interval_at, Instant, MissedTickBehavior},
};

use crate::{
    analysis::Thresholds,
    cli::AgentArgs,
    http::{self, Limits, Published},
    metrics::{Metrics, MetricsConfig, Tick},
    session::Session,
};

/// How long the HTTP side gets to finish after a signal, on top of its own
/// drain bound (the agent must exit within 2 s).
const SERVER_STOP_TIMEOUT: Duration = Duration::from_millis(1800);

pub async fn run(args: AgentArgs) -> anyhow::Result<()> {
    // Cheap failures first: a taken port should not cost an attach.
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {} (choose another address with --listen)", args.listen))?;
    let address = listener.local_addr().context("reading the listening address")?;
    // Installed before anything is announced, so a signal sent as soon as
    // the agent says it listens is handled, not fatal.
    let mut sigterm = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    let mut sigint = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;

    let thresholds = Thresholds::from(&args.analysis);
    let mut session = Session::start(args.backend, args.filters.filter(), thresholds, args.interval, args.window)?;
    let backend = session.backend().as_str();
    let config = MetricsConfig {
        top_n: usize::try_from(args.metrics_top_n).unwrap_or(usize::MAX),
        pid_label: args.metrics_pid_label,
        expiry_secs: args.metrics_expiry.as_secs_f64(),
    };
    let mut metrics = Metrics::new(config, backend).context("defining the metrics")?;
    let started = Instant::now();

    // A first tick right away, so every endpoint has data from the start.
    let first = collect(&mut session, &mut metrics, started).context("the first collection")?;
    let (feed, feed_rx) = watch::channel(Arc::new(first));
    let (stop, stopped) = oneshot::channel::<()>();
    let mut server = tokio::spawn(http::serve(listener, http::router(feed_rx), Limits::default(), async move {
        let _ = stopped.await;
    }));
    eprintln!("tracer: agent listening on http://{address} ({backend} backend)");

    let mut ticks = interval_at(started + args.interval, args.interval);
    ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticks.tick() => match collect(&mut session, &mut metrics, started) {
                Ok(published) => {
                    feed.send_replace(Arc::new(published));
                }
                // Keep serving the previous tick; the next may succeed.
                Err(err) => log::warn!("collection failed: {err:#}"),
            },
            _ = session.pump_events() => {}
            _ = sigterm.recv() => break,
            _ = sigint.recv() => break,
            ended = &mut server => {
                anyhow::bail!("the HTTP server stopped unexpectedly: {}", match ended {
                    Ok(()) => "it returned".to_owned(),
                    Err(err) => err.to_string(),
                });
            }
        }
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
    drop(session);
    log::debug!("programs detached after {:?}", stopping.elapsed());
    eprintln!("tracer: agent stopped");
    Ok(())
}

/// Ends an interval and builds what the endpoints serve.
fn collect(session: &mut Session, metrics: &mut Metrics, started: Instant) -> anyhow::Result<Published> {
    let begun = Instant::now();
    session.tick();
    let report = session.report();
    let collect_duration_secs = begun.elapsed().as_secs_f64();
    let model = session.model();
    let no_growth = std::collections::HashMap::new();
    let comm = |pid: u32| model.comm(pid).to_owned();
    metrics.update(&Tick {
        now_secs: started.elapsed().as_secs_f64(),
        flow_growth: model.samples().back().map_or(&no_growth, |sample| &sample.flows),
        comm: &comm,
        report: &report,
        collect_duration_secs,
    });
    Ok(Published {
        report_json: serde_json::to_vec(&report).context("serializing the report")?.into(),
        findings_json: serde_json::to_vec(&report.findings).context("serializing the findings")?.into(),
        metrics_text: metrics.render().context("rendering the metrics")?.into(),
    })
}
