//! The retry schedule shared by source passes and deliveries: exponential backoff with
//! jitter.

use std::time::Duration;

/// The wait before retry `attempt` (1-based): 1 s doubling to 30 s, plus up to half a
/// second of jitter so that many agents (or connectors) do not retry in step.
pub fn backoff(attempt: u32) -> Duration {
    let base =
        Duration::from_secs(1u64 << attempt.saturating_sub(1).min(5)).min(Duration::from_secs(30));
    let jitter = Duration::from_millis(u64::from(
        chrono::Utc::now().timestamp_subsec_millis() % 500,
    ));
    base + jitter
}
