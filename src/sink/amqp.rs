//! The `amqp` sink: the platform's RabbitMQ (AMQP 0-9-1), through lapin with rustls.
//!
//! Each spooled batch is one persistent message on exchange `fep.records` (topic), routing
//! key `<record_type>.<region6>`, with the contract's properties and headers, published
//! `mandatory` on a channel in confirm mode. A batch counts as delivered only when the
//! broker acknowledged it; a returned (unroutable) or nacked message is a failure, and the
//! batch stays in the spool. Any failure drops the connection; the next delivery connects
//! again, trying the configured brokers in turn, each with a connect timeout (lapin's own
//! recovery is not relied on). The same batch re-sent carries the same `message_id` and
//! seqs, so consumers recognise it.

use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::OwnedTLSConfig;
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPUri, AMQPUserInfo};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};

use super::{Sink, SinkError};
use crate::config::{AmqpSinkConfig, redact_url};
use crate::envelope::BatchMeta;
use crate::spool::StoredBatch;

struct Link {
    // Kept so the connection lives as long as its channel.
    _connection: Connection,
    channel: Channel,
}

pub struct AmqpSink {
    config: AmqpSinkConfig,
    tls: OwnedTLSConfig,
    link: tokio::sync::Mutex<Option<Link>>,
}

impl AmqpSink {
    pub fn new(config: AmqpSinkConfig) -> Result<AmqpSink, SinkError> {
        let cert_chain = match &config.ca_file {
            Some(path) => Some(std::fs::read_to_string(path).map_err(|e| SinkError::Io {
                sink: "amqp".into(),
                message: format!("cannot read ca_file {}: {e}", path.display()),
            })?),
            None => None,
        };
        Ok(AmqpSink {
            config,
            tls: OwnedTLSConfig {
                identity: None,
                cert_chain,
            },
            link: tokio::sync::Mutex::new(None),
        })
    }

    fn error(&self, message: impl Into<String>) -> SinkError {
        SinkError::Io {
            sink: self.describe(),
            message: message.into(),
        }
    }

    /// Connects to the first broker that answers and prepares the channel.
    async fn connect(&self) -> Result<Link, SinkError> {
        let mut failures = Vec::new();
        for url in &self.config.urls {
            match self.connect_one(url).await {
                Ok(link) => {
                    tracing::info!(broker = %redact_url(url), "connected to the broker");
                    return Ok(link);
                }
                Err(e) => failures.push(format!("{}: {e}", redact_url(url))),
            }
        }
        Err(self.error(format!("no broker reachable ({})", failures.join("; "))))
    }

    async fn connect_one(&self, url: &str) -> Result<Link, String> {
        let mut uri: AMQPUri = url.parse().map_err(|e: String| e)?;
        if let Some(user) = &self.config.user {
            let password = match &self.config.password {
                Some(p) => p
                    .expose_str()
                    .map_err(|_| "the password is not valid UTF-8".to_string())?
                    .to_string(),
                None => String::new(),
            };
            uri.authority.userinfo = AMQPUserInfo {
                username: user.clone(),
                password,
            };
        }
        uri.query.heartbeat = Some(
            self.config
                .heartbeat
                .as_secs()
                .clamp(1, u64::from(u16::MAX)) as u16,
        );
        uri.query.connection_timeout = Some(self.config.connect_timeout.as_millis() as u64);
        let runtime = lapin::runtime::default_runtime().map_err(|e| e.to_string())?;
        let connect = Connection::connect_uri_with_config(
            uri,
            ConnectionProperties::default(),
            self.tls.clone(),
            runtime,
        );
        let connection = match tokio::time::timeout(self.config.connect_timeout, connect).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => {
                return Err(format!(
                    "no answer within {:?}",
                    self.config.connect_timeout
                ));
            }
        };
        let channel = connection
            .create_channel()
            .await
            .map_err(|e| e.to_string())?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| e.to_string())?;
        let options = ExchangeDeclareOptions {
            durable: true,
            passive: self.config.passive,
            ..Default::default()
        };
        channel
            .exchange_declare(
                self.config.exchange.as_str().into(),
                ExchangeKind::Topic,
                options,
                FieldTable::default(),
            )
            .await
            .map_err(|e| format!("exchange {}: {e}", self.config.exchange))?;
        Ok(Link {
            _connection: connection,
            channel,
        })
    }

    async fn publish(&self, channel: &Channel, batch: &StoredBatch) -> Result<(), SinkError> {
        let meta = &batch.meta;
        let confirm = channel
            .basic_publish(
                self.config.exchange.as_str().into(),
                meta.routing_key().as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &batch.body,
                properties(meta),
            )
            .await
            .map_err(|e| self.error(format!("publish of {}: {e}", meta.message_id())))?
            .await
            .map_err(|e| self.error(format!("confirm of {}: {e}", meta.message_id())))?;
        match confirm {
            Confirmation::Ack(None) => Ok(()),
            Confirmation::Ack(Some(returned)) => Err(self.error(format!(
                "{} was returned by the broker ({}): no queue is bound for routing key {} on exchange {}",
                meta.message_id(),
                returned.reply_text,
                meta.routing_key(),
                self.config.exchange
            ))),
            Confirmation::Nack(_) => Err(self.error(format!("{} was refused (nack) by the broker", meta.message_id()))),
            Confirmation::NotRequested => Err(self.error("the channel is not in confirm mode")),
        }
    }
}

/// The message properties and headers of the contract.
pub fn properties(meta: &BatchMeta) -> BasicProperties {
    let mut headers = FieldTable::default();
    for (k, v) in meta.headers() {
        let value = match v {
            serde_json::Value::Number(n) => AMQPValue::LongLongInt(n.as_i64().unwrap_or_default()),
            serde_json::Value::String(s) => AMQPValue::LongString(LongString::from(s)),
            other => AMQPValue::LongString(LongString::from(other.to_string())),
        };
        headers.insert(ShortString::from(k), value);
    }
    let timestamp = chrono::DateTime::parse_from_rfc3339(&meta.created_at)
        .map(|t| t.timestamp().max(0) as u64)
        .unwrap_or(0);
    let mut p = BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/x-ndjson".into())
        .with_message_id(meta.message_id().into())
        .with_app_id(format!("fepd/{}", env!("CARGO_PKG_VERSION")).into())
        .with_timestamp(timestamp)
        .with_headers(headers);
    if let Some(enc) = meta.content_encoding() {
        p = p.with_content_encoding(enc.into());
    }
    p
}

impl Sink for AmqpSink {
    fn describe(&self) -> String {
        let urls: Vec<String> = self.config.urls.iter().map(|u| redact_url(u)).collect();
        format!("amqp {} exchange {}", urls.join(","), self.config.exchange)
    }

    fn deliver<'a>(&'a self, batch: &'a StoredBatch) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            let mut link = self.link.lock().await;
            if link.is_none() {
                *link = Some(self.connect().await?);
            }
            let Some(current) = link.as_ref() else {
                return Err(self.error("not connected"));
            };
            let result = self.publish(&current.channel, batch).await;
            if result.is_err() {
                // Start from a fresh connection next time: after an error lapin's channel
                // state is not to be trusted.
                *link = None;
            }
            result
        })
    }
}
