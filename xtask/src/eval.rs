//! `cargo xtask eval`: the findings' labelled evaluation
//! (`tracer/src/analysis/eval`). The cases run as a unit test in every
//! `cargo xtask test`; this task runs the same evaluation and writes its
//! precision/recall tables, the failing cases and the `--growth-ratio`
//! sweep to EVALUATION.md (printing them too).
//!
//! `--record REPORT --label PID=NAME=KIND+KIND ... --source TEXT --out
//! FILE` instead turns a real `tracer trace --format json` report into a
//! recorded-timeline fixture (each labelled process must have one flow;
//! an empty KIND list labels it "must not fire").

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Args;

use crate::{cargo, run, workspace_root};

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Where the report goes (default: EVALUATION.md at the workspace root).
    #[arg(long)]
    output: Option<PathBuf>,
    /// Convert this real report (JSON) into a fixture instead.
    #[arg(long, value_name = "REPORT")]
    record: Option<PathBuf>,
    /// With --record: PID=NAME=KIND+KIND (repeatable).
    #[arg(long, value_name = "PID=NAME=KINDS")]
    label: Vec<String>,
    /// With --record: how the report was recorded.
    #[arg(long, default_value = "")]
    source: String,
    /// With --record: the fixture to write.
    #[arg(long, value_name = "FILE")]
    out: Option<PathBuf>,
}

/// The unit test that does the work, run alone.
fn ignored_test(name: &str) -> std::process::Command {
    let mut cmd = cargo();
    cmd.args(["test", "--package", "tracer", "--lib", name, "--", "--ignored", "--exact", "--nocapture"]);
    cmd
}

pub fn eval(args: EvalArgs) -> Result<()> {
    let Some(report) = args.record else {
        let output = args.output.unwrap_or_else(|| workspace_root().join("EVALUATION.md"));
        return run(ignored_test("analysis::eval::tests::write_report").env("EVAL_REPORT", output));
    };
    let Some(out) = args.out else { bail!("--record needs --out FILE") };
    if args.label.is_empty() {
        bail!("--record needs at least one --label PID=NAME=KINDS");
    }
    run(ignored_test("analysis::eval::tests::record_fixture")
        .env("EVAL_RECORD", std::path::absolute(report)?)
        .env("EVAL_LABELS", args.label.join(";"))
        .env("EVAL_SOURCE", args.source)
        .env("EVAL_OUT", std::path::absolute(out)?))
}
