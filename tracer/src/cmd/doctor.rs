//! `tracer doctor`: what the running kernel supports and which attach
//! backend `auto` would use, in plain words (or JSON).

use std::{fmt::Write as _, io::Write as _, path::Path};

use serde::Serialize;
use serde_json::json;
use tracer_common::KernelOffsets;

use crate::{
    cli::{DoctorArgs, Format},
    load::{
        self,
        btf::Btf,
        health,
        kernel::{self, Capabilities, KERNEL_BTF},
        probes::{self, Backend, BACKEND_ORDER},
    },
};

#[derive(Serialize)]
struct HookStatus {
    hook: &'static str,
    kind: &'static str,
    backend: Option<&'static str>,
    purpose: &'static str,
    required: bool,
    available: bool,
}

/// Which TCP health values this kernel provides, and the fields it lacks.
fn tcp_health(btf: Option<&Btf>, sampling: &Result<(), String>) -> serde_json::Value {
    let mut offsets = KernelOffsets::default();
    let missing = btf.map(|btf| health::resolve_offsets(btf, &mut offsets)).unwrap_or_default();
    let support = health::support(&offsets, sampling.is_ok());
    json!({
        "sampling": sampling.is_ok(),
        "sampling_reason": sampling.as_ref().err(),
        "missing_fields": missing,
        "provides": {
            "rtt": support.rtt,
            "min_rtt": support.min_rtt,
            "connect_latency": true,
            "failure_reasons": support.failure_reasons,
            "queues": support.queues,
            "limited_ms": support.chrono,
            "delivery_rate": support.delivery_rate,
        },
    })
}

pub(crate) fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    let btf_path = Path::new(KERNEL_BTF);
    let btf = if btf_path.exists() { Btf::from_file(btf_path).ok() } else { None };
    let kernel_release = kernel::release().unwrap_or_else(|| "unknown".into());
    let current = Capabilities::current();
    let capabilities = current.as_ref().map_or_else(|| "unknown".to_owned(), |caps| caps.text.clone());
    let uses = current
        .as_ref()
        .map(|caps| caps.assess(kernel::version(&kernel_release), kernel::memlock_unlimited()))
        .unwrap_or_default();
    let held = current.as_ref().map(|caps| kernel::names(caps.bits)).unwrap_or_default();
    let missing: Vec<&str> = uses.iter().filter(|u| u.needed && !u.held).map(|u| u.cap.name()).collect();
    let kept = kernel::names(kernel::kept_after_attach(kernel::version(&kernel_release)));
    let lockdown = kernel::lockdown();
    let hooks: Vec<HookStatus> = probes::shown_probes(btf.as_ref())
        .map(|p| HookStatus {
            hook: p.hook,
            kind: p.kind.as_str(),
            backend: p.backend.map(|b| b.as_str()),
            purpose: p.purpose,
            required: p.required,
            available: btf.as_ref().is_some_and(|b| probes::hook_available(p, b)),
        })
        .collect();
    // With privileges, try each backend for real: the kernel may refuse one
    // that looks available (fentry under some lockdown or LSM policies).
    let trials = load::trial_backends(btf_path);
    let trial_note = match &trials {
        Ok(_) => "each backend was loaded and attached for real".to_owned(),
        Err(e) => format!("backends not tried for real: {e}"),
    };
    let sampling = match &trials {
        Ok(trials) => trials.sampling.clone(),
        Err(e) => Err(format!("not tried: {e}")),
    };
    let backends: Vec<(Backend, Option<String>)> = match trials {
        Ok(trials) => trials.backends.into_iter().map(|(b, r)| (b, r.err())).collect(),
        Err(_) => match &btf {
            Some(btf) => probes::backend_programs(BACKEND_ORDER, btf)
                .into_iter()
                .map(|(b, programs)| (b, programs.err()))
                .collect(),
            None => BACKEND_ORDER.iter().map(|&b| (b, Some("no BTF".into()))).collect(),
        },
    };
    let chosen = backends.iter().find(|(_, blocker)| blocker.is_none()).map(|(b, _)| b.as_str());
    let backends: Vec<serde_json::Value> = backends
        .iter()
        .map(|(b, blocker)| json!({ "backend": b.as_str(), "usable": blocker.is_none(), "reason": blocker }))
        .collect();
    let offsets_ok = btf.as_ref().map(|b| probes::resolve_offsets(b).map(|_| ()).map_err(|e| e.to_string()));
    let health = tcp_health(btf.as_ref(), &sampling);
    let report = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": kernel_release,
        "btf": btf.is_some(),
        "btf_path": btf_path.display().to_string(),
        "struct_offsets": match &offsets_ok { Some(Ok(())) => "resolved".to_owned(), Some(Err(e)) => e.clone(), None => "no BTF".to_owned() },
        "byte_table": probes::byte_table_status().1,
        "lockdown": lockdown,
        "capabilities_effective": capabilities,
        "capabilities": {
            "held": held,
            "missing": missing,
            "uses": uses.iter().map(|u| json!({
                "capability": u.cap.name(),
                "held": u.held,
                "needed": u.needed,
                "role": u.role,
                "cost_if_missing": (u.needed && !u.held).then_some(u.cost),
            })).collect::<Vec<_>>(),
            "kept_after_attach": kept,
        },
        "hooks": hooks,
        "backends": backends,
        "auto_backend": chosen,
        "tcp_health": health,
        "note": trial_note,
    });
    match args.format {
        Format::Json => writeln!(text, "{}", serde_json::to_string_pretty(&report)?)?,
        Format::Table => {
            writeln!(text, "tracer {}", env!("CARGO_PKG_VERSION"))?;
            writeln!(text, "kernel:        {kernel_release}")?;
            writeln!(
                text,
                "BTF:           {}",
                if btf.is_some() { format!("yes ({})", btf_path.display()) } else { "no".into() }
            )?;
            writeln!(text, "offsets:       {}", report["struct_offsets"].as_str().unwrap_or(""))?;
            writeln!(text, "byte table:    {}", probes::byte_table_status().1)?;
            writeln!(text, "lockdown:      {lockdown}")?;
            writeln!(text, "capabilities:  CapEff={capabilities}")?;
            writeln!(text, "  has:     {}", if held.is_empty() { "none".to_owned() } else { held.join(", ") })?;
            writeln!(text, "  missing: {}", if missing.is_empty() { "none".to_owned() } else { missing.join(", ") })?;
            for used in &uses {
                let status = match (used.held, used.needed) {
                    (true, _) => "yes",
                    (false, true) => "MISSING",
                    (false, false) => "not needed",
                };
                writeln!(text, "  {:<20} {:<10} {}", used.cap.name(), status, used.role)?;
                if used.needed && !used.held {
                    writeln!(text, "  {:<20} {:<10} without it: {}", "", "", used.cost)?;
                }
            }
            writeln!(text, "  after attach, trace and agent keep only {}", kept.join(" and "))?;
            writeln!(text, "hooks:")?;
            for hook in &hooks {
                writeln!(
                    text,
                    "  {:<22} {:<9} {:<10} {}{}",
                    hook.hook,
                    hook.kind,
                    if hook.available { "available" } else { "MISSING" },
                    hook.purpose,
                    if hook.required { "" } else { " (optional)" }
                )?;
            }
            writeln!(text, "backends:")?;
            for b in &backends {
                let reason = b["reason"].as_str().map(|r| format!(": {r}")).unwrap_or_default();
                writeln!(
                    text,
                    "  {:<11} {}{}",
                    b["backend"].as_str().unwrap_or(""),
                    if b["usable"] == true { "usable" } else { "not usable" },
                    reason
                )?;
            }
            writeln!(text, "  ({trial_note})")?;
            match chosen {
                Some(b) => writeln!(text, "auto would use: {b} (the cheapest that works)")?,
                None => writeln!(text, "auto would use: nothing works on this kernel")?,
            }
            writeln!(text, "tcp health:")?;
            match &sampling {
                Ok(()) => {
                    writeln!(text, "  sampling pass: runs (RTT, backlogs, chrono counters, delivery rate each tick)")?
                }
                Err(reason) => writeln!(
                    text,
                    "  sampling pass: NOT AVAILABLE ({reason}): RTT, backlogs and delivery rate are null"
                )?,
            }
            for (name, provided) in health["provides"].as_object().into_iter().flatten() {
                writeln!(text, "  {name:<22} {}", if provided == true { "yes" } else { "no (null in reports)" })?;
            }
            let missing: Vec<&str> =
                health["missing_fields"].as_array().into_iter().flatten().filter_map(|v| v.as_str()).collect();
            if !missing.is_empty() {
                writeln!(text, "  kernel fields missing: {}", missing.join(", "))?;
            }
        }
    }
    // One write: a closed pipe (`tracer doctor | head`) is an error the
    // caller treats as success, not a panic.
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
