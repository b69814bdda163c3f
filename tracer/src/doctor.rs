//! `tracer doctor`: what the running kernel supports and which attach
//! backend `auto` would use, in plain words (or JSON).

use std::path::Path;

use std::{fmt::Write as _, io::Write as _};

use serde::Serialize;
use serde_json::json;

use crate::{
    btf::Btf,
    cli::{DoctorArgs, Format},
    collect,
    probes::{self, Backend, BACKEND_ORDER, PROBES},
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

fn kernel_release() -> String {
    std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|_| "unknown".into())
}

fn lockdown() -> String {
    let text = std::fs::read_to_string("/sys/kernel/security/lockdown").unwrap_or_default();
    // The active mode is the bracketed one: "none [integrity] confidentiality".
    text.split_whitespace()
        .find(|w| w.starts_with('['))
        .map(|w| w.trim_matches(|c| c == '[' || c == ']').to_owned())
        .unwrap_or_else(|| "unknown (securityfs not mounted)".into())
}

fn capabilities() -> String {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("CapEff:")).map(|v| v.trim().to_owned()))
        .unwrap_or_else(|| "unknown".into())
}

pub fn run(args: DoctorArgs) -> anyhow::Result<()> {
    let mut text = String::new();
    let btf_path = probes::kernel_btf_path();
    let btf = if btf_path.exists() { Btf::from_file(Path::new(btf_path)).ok() } else { None };
    // Of the programs written for different prototypes of one function,
    // show the one this kernel's prototype fits (or all, if none does).
    let fits = |p: &probes::Probe| btf.as_ref().is_some_and(|b| probes::hook_available(p, b));
    let hooks: Vec<HookStatus> = PROBES
        .iter()
        .filter(|p| {
            p.params.is_none()
                || fits(p)
                || !PROBES.iter().any(|q| q.params.is_some() && q.hook == p.hook && q.kind == p.kind && fits(q))
        })
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
    let trials = collect::trial_backends(btf_path);
    let trial_note = match &trials {
        Ok(_) => "each backend was loaded and attached for real".to_owned(),
        Err(e) => format!("backends not tried for real: {e}"),
    };
    let backends: Vec<(Backend, Option<String>)> = match trials {
        Ok(results) => results.into_iter().map(|(b, r)| (b, r.err())).collect(),
        Err(_) => BACKEND_ORDER
            .iter()
            .map(|&b| {
                let blocker = match &btf {
                    Some(btf) => probes::backend_blocker(b, btf),
                    None => Some("no BTF".into()),
                };
                (b, blocker)
            })
            .collect(),
    };
    let chosen = backends.iter().find(|(_, blocker)| blocker.is_none()).map(|(b, _)| b.as_str());
    let backends: Vec<serde_json::Value> = backends
        .iter()
        .map(|(b, blocker)| json!({ "backend": b.as_str(), "usable": blocker.is_none(), "reason": blocker }))
        .collect();
    let offsets_ok = btf.as_ref().map(|b| probes::resolve_offsets(b).map(|_| ()).map_err(|e| e.to_string()));
    let report = json!({
        "version": env!("CARGO_PKG_VERSION"),
        "kernel": kernel_release(),
        "btf": btf.is_some(),
        "btf_path": btf_path.display().to_string(),
        "struct_offsets": match &offsets_ok { Some(Ok(())) => "resolved".to_owned(), Some(Err(e)) => e.clone(), None => "no BTF".to_owned() },
        "byte_table": probes::byte_table_status().1,
        "lockdown": lockdown(),
        "capabilities_effective": capabilities(),
        "hooks": hooks,
        "backends": backends,
        "auto_backend": chosen,
        "note": trial_note,
    });
    match args.format {
        Format::Json => writeln!(text, "{}", serde_json::to_string_pretty(&report)?)?,
        Format::Table => {
            writeln!(text, "tracer {}", env!("CARGO_PKG_VERSION"))?;
            writeln!(text, "kernel:        {}", kernel_release())?;
            writeln!(
                text,
                "BTF:           {}",
                if btf.is_some() { format!("yes ({})", btf_path.display()) } else { "no".into() }
            )?;
            writeln!(text, "offsets:       {}", report["struct_offsets"].as_str().unwrap_or(""))?;
            writeln!(text, "byte table:    {}", probes::byte_table_status().1)?;
            writeln!(text, "lockdown:      {}", lockdown())?;
            writeln!(text, "capabilities:  CapEff={}", capabilities())?;
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
        }
    }
    // One write: a closed pipe (`tracer doctor | head`) is an error the
    // caller treats as success, not a panic.
    let mut stdout = std::io::stdout().lock();
    stdout.write_all(text.as_bytes())?;
    stdout.flush()?;
    Ok(())
}
