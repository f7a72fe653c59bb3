//! The `amqp` sink: the platform's RabbitMQ (AMQP 0-9-1), through lapin with rustls.
//!
//! Each spooled batch is one persistent message on exchange `fep.records` (topic), routing
//! key `<record_type>.<region6>`, with the contract's properties and headers, published
//! `mandatory` on a channel in confirm mode. Up to `window` batches are in flight; a batch
//! counts as delivered only when the broker acknowledged it. A returned (unroutable) or
//! nacked message, or a confirm that does not come within `confirm_timeout` (a connection
//! blocked by a resource alarm, a network cut without a reset) is a failure: the
//! connection is dropped and the unconfirmed batches stay in the spool, to be re-sent with
//! the same `message_id` and seqs.
//!
//! Connecting tries the configured brokers in turn, each with a connect timeout; lapin's
//! own recovery is not relied on. TLS verifies the broker against `ca_file` (the
//! extranet's CA) and its host name; a client certificate gives mTLS, and with
//! `auth = "external"` the login itself (SASL EXTERNAL).

use std::time::Duration;

use futures_util::future::BoxFuture;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::{AMQPUri, AMQPUserInfo, SASLMechanism};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
    PublisherConfirm,
};

use super::{Receipt, Sink, SinkError};
use crate::config::{AmqpSinkConfig, redact_url};
use crate::control::ControlMessage;
use crate::envelope::BatchMeta;
use crate::spool::StoredBatch;

struct Link {
    connection: Connection,
    channel: Channel,
    broker: String,
}

pub struct AmqpSink {
    config: AmqpSinkConfig,
    tls: OwnedTLSConfig,
    link: tokio::sync::Mutex<Option<Link>>,
}

/// Reads a PEM file named in the config, for the TLS settings.
fn read_pem(key: &str, path: &std::path::Path) -> Result<Vec<u8>, SinkError> {
    std::fs::read(path).map_err(|e| SinkError::Refused {
        sink: "amqp".into(),
        message: format!("cannot read {key} {}: {e}", path.display()),
    })
}

/// Whether a connect failure will not pass by retrying: the certificate or the login was
/// refused. Said from lapin's and rustls' messages, which are all there is to go on.
fn is_refusal(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "certificate",
        "unknownissuer",
        "notvalidforname",
        "access_refused",
        "access-refused",
        "authentication",
        "login was refused",
        "not_found",
        "not-found",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

impl AmqpSink {
    pub fn new(config: AmqpSinkConfig) -> Result<AmqpSink, SinkError> {
        let cert_chain = match &config.ca_file {
            Some(path) => Some(String::from_utf8(read_pem("ca_file", path)?).map_err(|_| {
                SinkError::Refused {
                    sink: "amqp".into(),
                    message: format!("ca_file {} is not PEM text", path.display()),
                }
            })?),
            None => None,
        };
        let identity = match (&config.client_cert, &config.client_key) {
            (Some(cert), Some(key)) => Some(OwnedIdentity::PKCS8 {
                pem: read_pem("client_cert", cert)?,
                key: read_pem("client_key", key)?,
            }),
            _ => None,
        };
        Ok(AmqpSink {
            config,
            tls: OwnedTLSConfig {
                identity,
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
        // Refused only when every broker refused: one down and one refusing may pass.
        let mut refused = true;
        for url in &self.config.urls {
            match self.connect_one(url).await {
                Ok(link) => {
                    tracing::info!(broker = %link.broker, "connected to the broker");
                    return Ok(link);
                }
                Err(e) => {
                    refused &= is_refusal(&e);
                    failures.push(format!("{}: {e}", redact_url(url)));
                }
            }
        }
        let message = format!("no broker reachable ({})", failures.join("; "));
        Err(if refused {
            SinkError::Refused {
                sink: self.describe(),
                message: format!(
                    "{message}; check ca_file, client_cert/client_key, user and password, and the exchange"
                ),
            }
        } else {
            self.error(message)
        })
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
        if self.config.external_auth {
            uri.query.auth_mechanism = Some(SASLMechanism::External);
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
        let prepare = async {
            let channel = connection
                .create_channel()
                .await
                .map_err(|e| e.to_string())?;
            channel
                .confirm_select(ConfirmSelectOptions::default())
                .await
                .map_err(|e| e.to_string())?;
            for exchange in [&self.config.exchange, &self.config.control_exchange] {
                let options = ExchangeDeclareOptions {
                    durable: true,
                    passive: self.config.passive,
                    ..Default::default()
                };
                channel
                    .exchange_declare(
                        exchange.as_str().into(),
                        ExchangeKind::Topic,
                        options,
                        FieldTable::default(),
                    )
                    .await
                    .map_err(|e| format!("exchange {exchange}: {e}"))?;
            }
            Ok::<Channel, String>(channel)
        };
        let channel = match tokio::time::timeout(self.config.connect_timeout, prepare).await {
            Ok(Ok(c)) => c,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(format!(
                    "channel setup got no answer within {:?}",
                    self.config.connect_timeout
                ));
            }
        };
        Ok(Link {
            connection,
            channel,
            broker: redact_url(url),
        })
    }

    /// Publishes on the current link (connecting first if needed) and returns the pending
    /// confirm with what is needed to judge it. A failed publish drops the link.
    async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(PublisherConfirm, lapin::ConnectionStatus), SinkError> {
        let mut link = self.link.lock().await;
        if link.is_none() {
            *link = Some(self.connect().await?);
        }
        let Some(current) = link.as_ref() else {
            return Err(self.error("not connected"));
        };
        // lapin returns from a publish once its frames are written, and writes nothing
        // while the broker blocks the connection: bound that wait too.
        let published = tokio::time::timeout(
            self.config.confirm_timeout,
            current.channel.basic_publish(
                exchange.into(),
                routing_key.into(),
                BasicPublishOptions {
                    mandatory,
                    ..Default::default()
                },
                body,
                properties,
            ),
        )
        .await;
        match published {
            Ok(Ok(confirm)) => Ok((confirm, current.connection.status().clone())),
            Ok(Err(e)) => {
                // Start from a fresh connection next time: after an error lapin's channel
                // state is not to be trusted.
                *link = None;
                Err(self.error(format!("publish: {e}")))
            }
            Err(_) => {
                let why = stall_reason(current.connection.status());
                *link = None;
                Err(self.error(format!(
                    "publish not written within {}: {why}",
                    humantime(self.config.confirm_timeout)
                )))
            }
        }
    }

    /// The future that judges a confirm: ack without a returned message is success.
    fn judge(
        &self,
        confirm: PublisherConfirm,
        status: lapin::ConnectionStatus,
        what: String,
        routing_key: String,
        exchange: String,
    ) -> Receipt {
        let sink = self.describe();
        let timeout = self.config.confirm_timeout;
        Box::pin(async move {
            let error = |message: String| SinkError::Io {
                sink: sink.clone(),
                message,
            };
            let confirmation = match tokio::time::timeout(timeout, confirm).await {
                Ok(Ok(c)) => c,
                Ok(Err(e)) => return Err(error(format!("confirm of {what}: {e}"))),
                Err(_) => {
                    let why = stall_reason(&status);
                    return Err(error(format!(
                        "no confirm of {what} within {}: {why}; it will be re-sent",
                        humantime(timeout)
                    )));
                }
            };
            match confirmation {
                Confirmation::Ack(None) => Ok(()),
                Confirmation::Ack(Some(returned)) => Err(error(format!(
                    "{what} was returned by the broker ({}): no queue is bound for routing key {routing_key} on exchange {exchange}",
                    returned.reply_text
                ))),
                Confirmation::Nack(_) => {
                    Err(error(format!("{what} was refused (nack) by the broker")))
                }
                Confirmation::NotRequested => {
                    Err(error("the channel is not in confirm mode".into()))
                }
            }
        })
    }
}

/// Why the broker takes nothing: a blocked connection (lapin knows from the broker's
/// `connection.blocked`), or a broker or network gone silent.
fn stall_reason(status: &lapin::ConnectionStatus) -> &'static str {
    if status.blocked() {
        "the broker blocks this connection (a memory or disk alarm on the broker)"
    } else {
        "the broker or the network is not answering"
    }
}

fn humantime(d: Duration) -> String {
    format!("{}s", d.as_secs_f64())
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
        .with_app_id(app_id().into())
        .with_timestamp(timestamp)
        .with_headers(headers);
    if let Some(enc) = meta.content_encoding() {
        p = p.with_content_encoding(enc.into());
    }
    p
}

fn app_id() -> String {
    format!("fepd/{}", env!("CARGO_PKG_VERSION"))
}

/// The properties of a control message.
pub fn control_properties(message: &ControlMessage) -> BasicProperties {
    let mut headers = FieldTable::default();
    headers.insert(
        ShortString::from("fep-schema"),
        AMQPValue::LongString(LongString::from(message.schema)),
    );
    BasicProperties::default()
        .with_delivery_mode(2)
        .with_content_type("application/json".into())
        .with_message_id(message.message_id.as_str().into())
        .with_app_id(app_id().into())
        .with_timestamp(chrono::Utc::now().timestamp().max(0) as u64)
        .with_headers(headers)
}

impl Sink for AmqpSink {
    fn describe(&self) -> String {
        let urls: Vec<String> = self.config.urls.iter().map(|u| redact_url(u)).collect();
        format!("amqp {} exchange {}", urls.join(","), self.config.exchange)
    }

    fn window(&self) -> usize {
        self.config.window
    }

    fn retry_timeout(&self) -> Duration {
        self.config.retry_timeout
    }

    fn send<'a>(&'a self, batch: &'a StoredBatch) -> BoxFuture<'a, Result<Receipt, SinkError>> {
        Box::pin(async move {
            let meta = &batch.meta;
            let routing_key = meta.routing_key();
            let (confirm, status) = self
                .publish(
                    &self.config.exchange,
                    &routing_key,
                    true,
                    &batch.body,
                    properties(meta),
                )
                .await?;
            Ok(self.judge(
                confirm,
                status,
                meta.message_id(),
                routing_key,
                self.config.exchange.clone(),
            ))
        })
    }

    fn reset(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            if let Some(link) = self.link.lock().await.take() {
                // Close politely if the broker still listens; never wait long for a
                // broker that does not.
                tokio::spawn(async move {
                    let _ = tokio::time::timeout(
                        Duration::from_secs(2),
                        link.connection.close(320, "fepd reconnects".into()),
                    )
                    .await;
                });
            }
        })
    }

    fn send_control<'a>(
        &'a self,
        message: &'a ControlMessage,
    ) -> BoxFuture<'a, Result<(), SinkError>> {
        Box::pin(async move {
            // A reject report must reach a queue (returned = not delivered, and the
            // watermark stays); a heartbeat nobody listens to is not a failure.
            let mandatory = message.schema == crate::control::REJECTS_SCHEMA;
            let (confirm, status) = self
                .publish(
                    &self.config.control_exchange,
                    &message.routing_key,
                    mandatory,
                    &message.body,
                    control_properties(message),
                )
                .await?;
            let result = self
                .judge(
                    confirm,
                    status,
                    message.message_id.clone(),
                    message.routing_key.clone(),
                    self.config.control_exchange.clone(),
                )
                .await;
            if result.is_err() {
                self.reset().await;
            }
            result
        })
    }

    fn probe(&self) -> BoxFuture<'_, Result<String, SinkError>> {
        Box::pin(async move {
            let link = self.connect().await?;
            let exchanges = if self.config.passive {
                "exist"
            } else {
                "declared"
            };
            let said = format!(
                "connected to {}; exchanges {} and {} {exchanges}",
                link.broker, self.config.exchange, self.config.control_exchange
            );
            let _ = tokio::time::timeout(
                Duration::from_secs(2),
                link.connection.close(200, "fepd check".into()),
            )
            .await;
            Ok(said)
        })
    }
}
