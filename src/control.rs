//! Control messages to the platform on exchange `fep.control` (design.md, message
//! contract): `heartbeat.<agent>` — the inventory the platform keeps of every front-end
//! (version, drivers, connectors with their state and lag, spool depth and alarm) — and
//! `rejects.<agent>` — reject reports, so the platform sees data-quality problems instead
//! of silence.
//!
//! A reject report names the connector, the row's source key and every reason as field and
//! rule id, never the row's values (a rule's message may quote them): those stay in the
//! local reject store.
//! Reports are sent from a watermark kept in the spool and advanced only after the sink
//! confirmed the report; a report re-sent after a failure has the same message id.

use chrono::Utc;
use serde_json::json;

use crate::config::{AgentConfig, SourceConfig};
use crate::sink::{Sink, SinkError};
use crate::spool::{REJECTS_REPORTED, REJECTS_SENDING, RejectFilter, Spool};

/// Control exchange.
pub const CONTROL_EXCHANGE: &str = "fep.control";
/// Value of the `fep-schema` header of a heartbeat.
pub const HEARTBEAT_SCHEMA: &str = "fep.heartbeat/1";
/// Value of the `fep-schema` header of a reject report.
pub const REJECTS_SCHEMA: &str = "fep.rejects/1";
/// Rejects per report message.
const REJECTS_PER_REPORT: i64 = 500;

/// The drivers this build can read from.
pub const DRIVERS: &[&str] = &["sqlite", "postgres", "mysql"];

/// One control message: a JSON body for `fep.control`.
#[derive(Debug, Clone)]
pub struct ControlMessage {
    /// `fep.heartbeat/1` or `fep.rejects/1`.
    pub schema: &'static str,
    /// `heartbeat.<agent>` or `rejects.<agent>`.
    pub routing_key: String,
    pub message_id: String,
    pub body: Vec<u8>,
}

impl ControlMessage {
    fn new(
        schema: &'static str,
        routing_key: String,
        message_id: String,
        body: &serde_json::Value,
    ) -> ControlMessage {
        ControlMessage {
            schema,
            routing_key,
            message_id,
            body: body.to_string().into_bytes(),
        }
    }
}

fn driver_name(source: &SourceConfig) -> &'static str {
    match source {
        SourceConfig::Sqlite { .. } => "sqlite",
        SourceConfig::Postgres(_) => "postgres",
        SourceConfig::Mysql(_) => "mysql",
    }
}

/// Seconds from an RFC 3339 time to now (0 if unparsable or in the future).
fn age_seconds(at: Option<&str>) -> Option<i64> {
    let at = chrono::DateTime::parse_from_rfc3339(at?).ok()?;
    Some((Utc::now() - at.with_timezone(&Utc)).num_seconds().max(0))
}

/// The heartbeat: what this agent is, what it reads, and how far behind it is.
pub async fn heartbeat(
    config: &AgentConfig,
    spool: &Spool,
    sink: &dyn Sink,
) -> Result<ControlMessage, SinkError> {
    let stats = spool.stats().await?;
    let states = spool.connector_states().await?;
    let backlog = spool.backlog().await?;
    let connectors: Vec<serde_json::Value> = config
        .connectors
        .iter()
        .map(|c| {
            let state = states.iter().find(|s| s.0 == c.name);
            let pending = backlog.iter().find(|b| b.connector == c.name);
            json!({
                "name": c.name,
                "record_type": c.record_type.as_str(),
                "driver": driver_name(&c.source),
                "enabled": c.enabled,
                "last_seq": state.map(|s| s.1),
                "cursor": state.and_then(|s| s.2.as_ref().map(|c| c.display())),
                "last_commit_at": state.map(|s| s.3.clone()),
                "seconds_since_commit": state.and_then(|s| age_seconds(Some(&s.3))),
                "pending_batches": pending.map_or(0, |p| p.batches),
                "pending_records": pending.map_or(0, |p| p.records),
                "delivery_lag_seconds": pending.and_then(|p| age_seconds(p.oldest_pending_at.as_deref())).unwrap_or(0),
            })
        })
        .collect();
    let now = Utc::now();
    let body = json!({
        "schema": HEARTBEAT_SCHEMA,
        "agent": config.agent_id,
        "region_code": config.region_code,
        "department_code": config.department_code,
        "version": env!("CARGO_PKG_VERSION"),
        "sent_at": now.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "drivers": DRIVERS,
        "sink": sink.describe(),
        "spool": {
            "pending_batches": stats.pending_batches,
            "pending_records": stats.pending_records,
            "pending_bytes": stats.pending_bytes,
            "batch_bytes": stats.batch_bytes,
            "used_bytes": stats.used_bytes,
            "max_bytes": config.spool.max_bytes,
            "full_since": stats.full_since,
            "delivery_lag_seconds": age_seconds(stats.oldest_pending_at.as_deref()).unwrap_or(0),
            "rejects": stats.rejects,
        },
        "connectors": connectors,
    });
    Ok(ControlMessage::new(
        HEARTBEAT_SCHEMA,
        format!("heartbeat.{}", config.agent_id),
        format!("heartbeat-{}-{}", config.agent_id, now.timestamp_millis()),
        &body,
    ))
}

/// Sends reject reports for every reject not yet reported, advancing the watermark after
/// each confirmed report. Returns the number of rejects reported.
pub async fn report_rejects(
    config: &AgentConfig,
    spool: &Spool,
    sink: &dyn Sink,
) -> Result<u64, SinkError> {
    let mut reported = 0;
    loop {
        let watermark: i64 = spool
            .agent_state(REJECTS_REPORTED)
            .await?
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        // A report cut off by a failure is sent again as it was (same rejects, same id),
        // even if new rejects arrived since.
        let sending: Option<i64> = spool
            .agent_state(REJECTS_SENDING)
            .await?
            .and_then(|v| v.parse().ok());
        let rejects = spool
            .rejects(&RejectFilter {
                after_id: Some(watermark),
                up_to_id: sending,
                limit: Some(REJECTS_PER_REPORT),
                ..Default::default()
            })
            .await?;
        let (Some(first), Some(last)) = (rejects.first(), rejects.last()) else {
            if sending.is_some() {
                // The report in flight had been confirmed after all.
                spool.set_agent_state(REJECTS_SENDING, None).await?;
                continue;
            }
            return Ok(reported);
        };
        let (first_id, last_id) = (first.id, last.id);
        let entries: Vec<serde_json::Value> = rejects
            .iter()
            .map(|r| {
                // Field and rule only: a rule's message may quote the value.
                let reasons: Vec<serde_json::Value> = r
                    .reasons
                    .iter()
                    .map(|reason| json!({"field": reason.field, "rule": reason.rule}))
                    .collect();
                json!({
                    "id": r.id,
                    "connector": r.connector,
                    "source_key": r.source_key,
                    "reasons": reasons,
                    "first_seen": r.first_seen,
                    "last_seen": r.last_seen,
                    "occurrences": r.occurrences,
                })
            })
            .collect();
        let body = json!({
            "schema": REJECTS_SCHEMA,
            "agent": config.agent_id,
            "region_code": config.region_code,
            "sent_at": Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
            "first_id": first_id,
            "last_id": last_id,
            "rejects": entries,
        });
        let message = ControlMessage::new(
            REJECTS_SCHEMA,
            format!("rejects.{}", config.agent_id),
            format!("rejects-{}-{first_id}-{last_id}", config.agent_id),
            &body,
        );
        spool
            .set_agent_state(REJECTS_SENDING, Some(&last_id.to_string()))
            .await?;
        sink.send_control(&message).await?;
        spool
            .set_agent_state(REJECTS_REPORTED, Some(&last_id.to_string()))
            .await?;
        spool.set_agent_state(REJECTS_SENDING, None).await?;
        reported += rejects.len() as u64;
    }
}

/// Sends the reject reports, then a heartbeat. Failures are logged, not returned: control
/// messages never hold up records, and unsent reports go with the next attempt.
pub async fn send_all(config: &AgentConfig, spool: &Spool, sink: &dyn Sink) {
    match report_rejects(config, spool, sink).await {
        Ok(0) => {}
        Ok(n) => tracing::info!(rejects = n, "reject report sent"),
        Err(e) => {
            tracing::warn!(error = %e, "reject report not sent; it goes with the next heartbeat")
        }
    }
    let sent = match heartbeat(config, spool, sink).await {
        Ok(m) => sink.send_control(&m).await,
        Err(e) => Err(e),
    };
    match sent {
        Ok(()) => tracing::debug!("heartbeat sent"),
        Err(e) => tracing::warn!(error = %e, "heartbeat not sent"),
    }
}
