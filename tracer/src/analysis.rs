//! Findings: pure functions over the model's time series (placeholder until
//! the analysis lands).

use std::collections::VecDeque;

use crate::{
    model::Sample,
    report::{CloseWaitReport, Finding, FlowReport},
};

/// Thresholds of the analysis (flags in `cli::AnalysisArgs`).
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub growth_ratio: f64,
    pub close_wait_age_secs: f64,
    pub retransmit_ratio: f64,
    pub churn_rate: f64,
    /// Analyse only the last this-many seconds of history.
    pub window_secs: Option<f64>,
}

/// What the analysis reads.
pub struct Input<'a> {
    pub samples: &'a VecDeque<Sample>,
    pub close_wait: &'a [CloseWaitReport],
    pub flows: &'a [FlowReport],
    pub comm: &'a dyn Fn(u32) -> String,
}

pub fn analyze(_input: &Input<'_>, _thresholds: &Thresholds) -> Vec<Finding> {
    Vec::new()
}

impl From<&crate::cli::AnalysisArgs> for Thresholds {
    fn from(args: &crate::cli::AnalysisArgs) -> Self {
        Thresholds {
            growth_ratio: args.growth_ratio,
            close_wait_age_secs: args.close_wait_age.as_secs_f64(),
            retransmit_ratio: args.retransmit_ratio,
            churn_rate: args.churn_rate,
            window_secs: args.analysis_window.map(|d| d.as_secs_f64()),
        }
    }
}
