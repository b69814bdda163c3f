//! `tracer agent` (placeholder until the agent lands).

use crate::cli::AgentArgs;

pub async fn run(_args: AgentArgs) -> anyhow::Result<()> {
    anyhow::bail!("the agent is not available in this build yet")
}
