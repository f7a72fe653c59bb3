//! Configuration: `fepd.toml` (the agent) and `connectors.d/*.toml` (one file per registered
//! connector), parsed with `deny_unknown_fields` and validated once into the runtime types
//! below. Everything later trusts these types; nothing re-reads the files.
//!
//! Every error names the file, the key and what to do. Secrets are resolved here (so a
//! missing password is a start-up error) and kept in [`Secret`], which never prints.

pub mod duration;
pub mod secret;

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use chrono::NaiveDate;
use chrono_tz::Tz;
use serde::Deserialize;

use crate::schema::{FieldDef, FieldKind, RecordType};
use crate::source::sql::{check_read_only_expr, check_read_only_query, validate_identifier};
use crate::value::Value;
pub use duration::{parse_duration, parse_size};
pub use secret::{Secret, SecretRef};

/// Default source and agent time zone.
pub const DEFAULT_TIME_ZONE: Tz = chrono_tz::Asia::Shanghai;

/// One configuration problem: which file, which key, what is wrong, what to do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    pub key: String,
    pub message: String,
    pub hint: Option<String>,
}

impl ConfigError {
    fn new(file: &Path, key: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: key.into(),
            message: message.into(),
            hint: None,
        }
    }

    fn hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if !self.key.is_empty() {
            write!(f, ": {}", self.key)?;
        }
        write!(f, ": {}", self.message)?;
        if let Some(h) = &self.hint {
            write!(f, "\n  hint: {h}")?;
        }
        Ok(())
    }
}

/// All problems found in a configuration; the agent refuses to start while there is one.
#[derive(Debug, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "invalid configuration ({} problem(s)):", self.0.len())?;
        for e in &self.0 {
            writeln!(f, "- {e}")?;
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------------------
// Runtime configuration
// ---------------------------------------------------------------------------------------

/// The validated agent configuration with all its connectors.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// Where this configuration was read from.
    pub path: PathBuf,
    pub agent_id: String,
    /// The county (6 digits) or village (12 digits) the agent serves; records outside it are
    /// rejected.
    pub region_code: String,
    pub department_code: Option<String>,
    pub state_dir: PathBuf,
    pub time_zone: Tz,
    pub signing_key: PathBuf,
    pub hmac_key: Option<Secret>,
    pub sink: SinkConfig,
    pub spool: SpoolConfig,
    pub connectors: Vec<ConnectorConfig>,
}

impl AgentConfig {
    /// The spool database file.
    pub fn spool_path(&self) -> PathBuf {
        self.state_dir.join("spool.db")
    }

    pub fn connector(&self, name: &str) -> Option<&ConnectorConfig> {
        self.connectors.iter().find(|c| c.name == name)
    }

    /// The 6-digit region used in routing keys.
    pub fn region6(&self) -> &str {
        &self.region_code[..6.min(self.region_code.len())]
    }
}

/// Where delivered batches go.
#[derive(Debug, Clone)]
pub enum SinkConfig {
    Dir { path: PathBuf },
    Amqp(Box<AmqpSinkConfig>),
}

/// The platform's RabbitMQ.
#[derive(Debug, Clone)]
pub struct AmqpSinkConfig {
    /// Broker URLs (`amqp://host:5672/vhost`, `amqps://…`), tried in turn. Without user
    /// information: credentials come from `user` and `password`.
    pub urls: Vec<String>,
    pub user: Option<String>,
    pub password: Option<Secret>,
    /// CA bundle for `amqps://` (the extranet's own CA).
    pub ca_file: Option<PathBuf>,
    pub exchange: String,
    /// Only check that the exchange exists (for brokers where agents may not declare).
    pub passive: bool,
    pub connect_timeout: Duration,
    pub heartbeat: Duration,
    /// Client certificate (PEM chain) for mTLS.
    pub client_cert: Option<PathBuf>,
    /// Its private key (PEM: PKCS#8, SEC1 or PKCS#1).
    pub client_key: Option<PathBuf>,
    /// Log in with the client certificate (SASL EXTERNAL) instead of user and password.
    pub external_auth: bool,
    /// Batches published but not yet confirmed, at most.
    pub window: usize,
    /// How long a publish may wait for the broker's confirm before the link is dropped and
    /// the batch re-sent (a blocked connection or a silently cut network).
    pub confirm_timeout: Duration,
    /// After extraction has finished, how long delivery keeps retrying before the run
    /// reports failure (the batches stay spooled for the next run).
    pub retry_timeout: Duration,
    /// Exchange for heartbeats and reject reports.
    pub control_exchange: String,
}

/// Default spool cap: 8 GiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 8 << 30;

/// How batches are compressed on the wire (and in the spool).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    Gzip,
    None,
}

#[derive(Debug, Clone)]
pub struct SpoolConfig {
    /// Records per batch (= per message).
    pub batch_size: usize,
    pub compression: Compression,
    /// How long delivered batches stay in the spool for replay.
    pub retention: Duration,
    /// Bytes of batch bodies the spool may hold. When reached, delivered batches are pruned early; if it is
    /// still full, extraction pauses with an alarm until delivery makes room. Undelivered
    /// batches are never dropped.
    pub max_bytes: u64,
}

/// One registered connector.
#[derive(Debug, Clone)]
pub struct ConnectorConfig {
    pub name: String,
    /// The connector file, for error messages.
    pub file: PathBuf,
    pub record_type: RecordType,
    pub enabled: bool,
    pub description: Option<String>,
    pub source: SourceConfig,
    pub extract: ExtractConfig,
    /// One entry per mapped field, in the record type's field order.
    pub fields: Vec<FieldMapping>,
    pub code_tables: HashMap<String, HashMap<String, String>>,
}

/// Where a connector reads from (driver-specific connection settings).
#[derive(Debug, Clone)]
pub enum SourceConfig {
    Sqlite { path: PathBuf },
    Postgres(NetSource),
    Mysql(NetSource),
}

impl SourceConfig {
    pub fn driver_name(&self) -> &'static str {
        match self {
            SourceConfig::Sqlite { .. } => "sqlite",
            SourceConfig::Postgres(_) => "postgres",
            SourceConfig::Mysql(_) => "mysql",
        }
    }
}

/// A database server reached over the network (PostgreSQL and its derivatives, MySQL,
/// MariaDB).
#[derive(Debug, Clone)]
pub struct NetSource {
    pub host: String,
    pub port: u16,
    pub database: String,
    pub user: String,
    /// `None` when the server needs none (or when loaded for inspection).
    pub password: Option<Secret>,
    pub tls: TlsMode,
    /// CA bundle to verify the server certificate (the extranet has its own CA).
    pub ca_file: Option<PathBuf>,
    pub connect_timeout: Duration,
}

impl NetSource {
    /// `host:port/database`, safe to print.
    pub fn describe(&self) -> String {
        format!(
            "{}@{}:{}/{}",
            self.user, self.host, self.port, self.database
        )
    }
}

/// TLS to the source database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsMode {
    /// Plain TCP.
    Disable,
    /// TLS if the server offers it, without verifying it.
    Prefer,
    /// TLS required; the certificate is verified against `ca_file` (or the system roots)
    /// when `ca_file` is set.
    Require,
    /// TLS required, certificate and host name verified.
    VerifyFull,
}

/// What a SQL connector reads: a table or a read-only query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Relation {
    Table(String),
    Query(String),
}

/// How a connector finds what is new since the last pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CursorMode {
    /// A strictly increasing column.
    Incrementing { column: String },
    /// `(column, key) > (last_ts, last_key)`, re-reading `lag` to catch late commits.
    Timestamp { column: String, lag: Duration },
    /// Full scan each pass, diffed against stored row hashes (emits deletes).
    Snapshot,
}

impl CursorMode {
    pub fn name(&self) -> &'static str {
        match self {
            CursorMode::Incrementing { .. } => "incrementing",
            CursorMode::Timestamp { .. } => "timestamp",
            CursorMode::Snapshot => "snapshot",
        }
    }
}

/// Settings shared by every SQL driver.
#[derive(Debug, Clone)]
pub struct ExtractConfig {
    pub relation: Relation,
    /// Columns identifying a row (its `source_key`).
    pub key: Vec<String>,
    pub mode: CursorMode,
    pub start_from: Option<NaiveDate>,
    pub fetch_size: usize,
    /// Source time zone for timestamps without time zone.
    pub time_zone: Tz,
    /// Text encoding of the source's text columns.
    pub encoding: &'static encoding_rs::Encoding,
    /// Longest a source query may run (`None`: no limit).
    pub query_timeout: Option<Duration>,
    /// Reading is throttled to this many rows per second (`None`: no limit).
    pub max_rows_per_second: Option<u64>,
    /// Passes run only inside this daily window (source time zone).
    pub window: Option<Window>,
}

/// A daily time window such as 20:00–07:00 (may cross midnight).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub start: chrono::NaiveTime,
    pub end: chrono::NaiveTime,
}

impl Window {
    /// Parses `"HH:MM-HH:MM"`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let bad = || format!("`{text}` is not a window; write it as \"20:00-07:00\"");
        let (a, b) = text.split_once('-').ok_or_else(bad)?;
        let t = |s: &str| chrono::NaiveTime::parse_from_str(s.trim(), "%H:%M").map_err(|_| bad());
        let w = Window {
            start: t(a)?,
            end: t(b)?,
        };
        if w.start == w.end {
            return Err(format!("`{text}`: the window is empty"));
        }
        Ok(w)
    }

    pub fn contains(&self, t: chrono::NaiveTime) -> bool {
        if self.start < self.end {
            self.start <= t && t < self.end
        } else {
            t >= self.start || t < self.end
        }
    }
}

/// How one unified field is filled.
#[derive(Debug, Clone)]
pub struct FieldMapping {
    pub def: &'static FieldDef,
    pub source: FieldSource,
    pub transforms: Vec<Transform>,
    pub code_table: Option<String>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum FieldSource {
    Column(String),
    /// A SQL expression evaluated by the source database (read-only, checked at load).
    Expr(String),
    Const(Value),
}

/// Per-field transforms. `trim` and `upper` run before the type rule; `mask`, `hmac` and
/// `drop` run after it, so the rule still sees (and checks) the real value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transform {
    Trim,
    Upper,
    Mask,
    Hmac,
    Drop,
}

impl Transform {
    fn parse(s: &str) -> Option<Transform> {
        Some(match s {
            "trim" => Transform::Trim,
            "upper" => Transform::Upper,
            "mask" => Transform::Mask,
            "hmac" => Transform::Hmac,
            "drop" => Transform::Drop,
            _ => return None,
        })
    }

    /// Whether the transform applies after the field's type rule.
    pub fn after_rule(self) -> bool {
        matches!(self, Transform::Mask | Transform::Hmac | Transform::Drop)
    }
}

// ---------------------------------------------------------------------------------------
// Files as written
// ---------------------------------------------------------------------------------------

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AgentFile {
    agent_id: String,
    region_code: String,
    department_code: Option<String>,
    state_dir: PathBuf,
    time_zone: Option<String>,
    connectors_dir: Option<PathBuf>,
    signing_key: PathBuf,
    hmac_key: Option<SecretRef>,
    sink: SinkFile,
    #[serde(default)]
    spool: SpoolFile,
}

#[derive(Debug, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
enum SinkFile {
    Dir { path: PathBuf },
    Amqp(Box<AmqpSinkFile>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct AmqpSinkFile {
    urls: Vec<String>,
    user: Option<String>,
    password: Option<SecretRef>,
    ca_file: Option<PathBuf>,
    exchange: Option<String>,
    #[serde(default)]
    passive: bool,
    connect_timeout: Option<String>,
    heartbeat: Option<String>,
    client_cert: Option<PathBuf>,
    client_key: Option<PathBuf>,
    auth: Option<String>,
    window: Option<usize>,
    confirm_timeout: Option<String>,
    retry_timeout: Option<String>,
    control_exchange: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct SpoolFile {
    batch_size: Option<usize>,
    compression: Option<String>,
    retention: Option<String>,
    max_bytes: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ConnectorFile {
    name: Option<String>,
    record_type: String,
    #[serde(default = "default_true")]
    enabled: bool,
    description: Option<String>,
    source: SourceFile,
    extract: ExtractFile,
    fields: toml::Table,
    #[serde(default)]
    code_tables: BTreeMap<String, BTreeMap<String, String>>,
}

fn default_true() -> bool {
    true
}

#[derive(Debug, Deserialize)]
#[serde(tag = "driver", rename_all = "lowercase", deny_unknown_fields)]
enum SourceFile {
    Sqlite {
        path: PathBuf,
    },
    Postgres(NetSourceFile),
    /// MySQL and MariaDB.
    #[serde(alias = "mariadb")]
    Mysql(NetSourceFile),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NetSourceFile {
    host: String,
    port: Option<u16>,
    database: String,
    user: String,
    password: Option<SecretRef>,
    tls: Option<String>,
    ca_file: Option<PathBuf>,
    connect_timeout: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExtractFile {
    table: Option<String>,
    query: Option<String>,
    key: OneOrMany,
    mode: String,
    column: Option<String>,
    lag: Option<String>,
    start_from: Option<String>,
    fetch_size: Option<usize>,
    time_zone: Option<String>,
    encoding: Option<String>,
    query_timeout: Option<String>,
    max_rows_per_second: Option<u64>,
    window: Option<String>,
}

// ---------------------------------------------------------------------------------------
// Loading
// ---------------------------------------------------------------------------------------

impl AgentConfig {
    /// Loads `fepd.toml` and every `*.toml` in its connectors directory, resolving secrets.
    /// Returns every problem found, not just the first.
    pub fn load(path: &Path) -> Result<AgentConfig, ConfigErrors> {
        Self::load_with(path, true)
    }

    /// Loads the configuration without reading any secret (`hmac_key` stays `None`): for
    /// commands that only inspect the spool (`status`, `rejects`), so that they work from a
    /// shell where the service's credentials are not available.
    pub fn load_for_inspection(path: &Path) -> Result<AgentConfig, ConfigErrors> {
        Self::load_with(path, false)
    }

    fn load_with(path: &Path, resolve_secrets: bool) -> Result<AgentConfig, ConfigErrors> {
        let mut errors = Vec::new();
        let text = std::fs::read_to_string(path).map_err(|e| {
            ConfigErrors(vec![
                ConfigError::new(path, "", format!("cannot read: {e}"))
                    .hint("pass the agent config with --config PATH (default /etc/fepd/fepd.toml)"),
            ])
        })?;
        let file: AgentFile =
            toml::from_str(&text).map_err(|e| ConfigErrors(vec![toml_error(path, &e)]))?;
        let base = path.parent().unwrap_or(Path::new("."));

        check_name(path, "agent_id", &file.agent_id, &mut errors);
        let region_ok = file.region_code.len() == 6 || file.region_code.len() == 12;
        if !region_ok || !file.region_code.bytes().all(|b| b.is_ascii_digit()) {
            errors.push(
                ConfigError::new(
                    path,
                    "region_code",
                    format!("`{}` is not a 6- or 12-digit region code", file.region_code),
                )
                .hint("use the county-level code of the department, e.g. \"430124\""),
            );
        }
        let time_zone = parse_tz(path, "time_zone", file.time_zone.as_deref(), &mut errors);
        let hmac_key = match &file.hmac_key {
            Some(_) if !resolve_secrets => None,
            Some(r) => match r.resolve() {
                Ok(s) => Some(s),
                Err(e) => {
                    errors.push(ConfigError::new(path, "hmac_key", e.to_string()));
                    None
                }
            },
            None => None,
        };
        let sink = match file.sink {
            SinkFile::Dir { path: p } => SinkConfig::Dir { path: base.join(p) },
            SinkFile::Amqp(a) => SinkConfig::Amqp(Box::new(amqp_sink(
                path,
                base,
                *a,
                resolve_secrets,
                &mut errors,
            ))),
        };
        let spool = SpoolConfig {
            batch_size: match file.spool.batch_size {
                Some(n) if (1..=100_000).contains(&n) => n,
                Some(n) => {
                    errors.push(ConfigError::new(
                        path,
                        "spool.batch_size",
                        format!("{n} is out of range 1..=100000"),
                    ));
                    1000
                }
                None => 1000,
            },
            compression: match file.spool.compression.as_deref() {
                None | Some("gzip") => Compression::Gzip,
                Some("none") => Compression::None,
                Some(other) => {
                    errors.push(
                        ConfigError::new(
                            path,
                            "spool.compression",
                            format!("unknown compression `{other}`"),
                        )
                        .hint("use \"gzip\" or \"none\""),
                    );
                    Compression::Gzip
                }
            },
            retention: match file.spool.retention.as_deref().map(parse_duration) {
                None => Duration::from_secs(7 * 86400),
                Some(Ok(d)) => d,
                Some(Err(e)) => {
                    errors.push(ConfigError::new(path, "spool.retention", e));
                    Duration::from_secs(7 * 86400)
                }
            },
            max_bytes: match file.spool.max_bytes.as_deref().map(parse_size) {
                None => DEFAULT_SPOOL_MAX_BYTES,
                Some(Ok(n)) if n >= 1 << 20 => n,
                Some(Ok(_)) => {
                    errors.push(ConfigError::new(
                        path,
                        "spool.max_bytes",
                        "must be at least 1MiB",
                    ));
                    DEFAULT_SPOOL_MAX_BYTES
                }
                Some(Err(e)) => {
                    errors.push(ConfigError::new(path, "spool.max_bytes", e));
                    DEFAULT_SPOOL_MAX_BYTES
                }
            },
        };

        let connectors_dir = base.join(
            file.connectors_dir
                .unwrap_or_else(|| PathBuf::from("connectors.d")),
        );
        let mut connectors: Vec<ConnectorConfig> = Vec::new();
        match list_toml_files(&connectors_dir) {
            Ok(files) => {
                for f in files {
                    match load_connector_with(&f, file.hmac_key.is_some(), resolve_secrets) {
                        Ok(c) => {
                            if let Some(other) = connectors.iter().find(|o| o.name == c.name) {
                                errors.push(
                                    ConfigError::new(
                                        &f,
                                        "name",
                                        format!(
                                            "connector name `{}` is already used by {}",
                                            c.name,
                                            other.file.display()
                                        ),
                                    )
                                    .hint("give each connector file a unique `name`"),
                                );
                            } else {
                                connectors.push(c);
                            }
                        }
                        Err(mut es) => errors.append(&mut es),
                    }
                }
            }
            Err(e) => errors.push(
                ConfigError::new(
                    path,
                    "connectors_dir",
                    format!("cannot list {}: {e}", connectors_dir.display()),
                )
                .hint("create the directory and put one connector .toml per source in it"),
            ),
        }

        if !errors.is_empty() {
            return Err(ConfigErrors(errors));
        }
        Ok(AgentConfig {
            path: path.to_path_buf(),
            agent_id: file.agent_id,
            region_code: file.region_code,
            department_code: file.department_code,
            state_dir: base.join(file.state_dir),
            time_zone,
            signing_key: base.join(file.signing_key),
            hmac_key,
            sink,
            spool,
            connectors,
        })
    }
}

fn list_toml_files(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let p = entry?.path();
        if p.extension().is_some_and(|e| e == "toml") && p.is_file() {
            files.push(p);
        }
    }
    files.sort();
    Ok(files)
}

fn toml_error(path: &Path, e: &toml::de::Error) -> ConfigError {
    // toml's message already carries line, column and the offending key.
    ConfigError::new(path, "", e.to_string().trim_end().to_string())
}

fn check_name(file: &Path, key: &str, name: &str, errors: &mut Vec<ConfigError>) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.');
    if !ok {
        errors.push(
            ConfigError::new(file, key, format!("`{name}` is not a valid name"))
                .hint("use 1-64 characters from a-z, A-Z, 0-9, '-', '_' and '.'"),
        );
    }
}

fn parse_tz(file: &Path, key: &str, tz: Option<&str>, errors: &mut Vec<ConfigError>) -> Tz {
    match tz {
        None => DEFAULT_TIME_ZONE,
        Some(name) => match name.parse::<Tz>() {
            Ok(tz) => tz,
            Err(_) => {
                errors.push(
                    ConfigError::new(file, key, format!("unknown time zone `{name}`"))
                        .hint("use an IANA name such as \"Asia/Shanghai\""),
                );
                DEFAULT_TIME_ZONE
            }
        },
    }
}

/// Loads and validates one connector file on its own (used by `load` and by tests of the
/// catalogue in `connectors/`).
pub fn load_connector(
    path: &Path,
    have_hmac_key: bool,
) -> Result<ConnectorConfig, Vec<ConfigError>> {
    load_connector_with(path, have_hmac_key, true)
}

fn load_connector_with(
    path: &Path,
    have_hmac_key: bool,
    resolve_secrets: bool,
) -> Result<ConnectorConfig, Vec<ConfigError>> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| vec![ConfigError::new(path, "", format!("cannot read: {e}"))])?;
    let file: ConnectorFile = toml::from_str(&text).map_err(|e| vec![toml_error(path, &e)])?;
    let base = path.parent().unwrap_or(Path::new("."));
    let mut errors = Vec::new();

    let name = file.name.clone().unwrap_or_else(|| {
        path.file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    check_name(path, "name", &name, &mut errors);

    let record_type = match file.record_type.parse::<RecordType>() {
        Ok(rt) => Some(rt),
        Err(e) => {
            errors.push(ConfigError::new(path, "record_type", e.to_string()));
            None
        }
    };

    let source = match file.source {
        SourceFile::Sqlite { path: p } => SourceConfig::Sqlite { path: base.join(p) },
        SourceFile::Postgres(n) => SourceConfig::Postgres(net_source(
            path,
            base,
            n,
            5432,
            resolve_secrets,
            &mut errors,
        )),
        SourceFile::Mysql(n) => SourceConfig::Mysql(net_source(
            path,
            base,
            n,
            3306,
            resolve_secrets,
            &mut errors,
        )),
    };

    let extract = parse_extract(path, &file.extract, &mut errors);

    let mut code_tables = HashMap::new();
    for (name, table) in &file.code_tables {
        code_tables.insert(
            name.clone(),
            table.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        );
    }

    let fields = match record_type {
        Some(rt) => parse_fields(
            path,
            rt,
            &file.fields,
            &code_tables,
            have_hmac_key,
            &mut errors,
        ),
        None => Vec::new(),
    };

    match (record_type, extract) {
        (Some(record_type), Some(extract)) if errors.is_empty() => Ok(ConnectorConfig {
            name,
            file: path.to_path_buf(),
            record_type,
            enabled: file.enabled,
            description: file.description,
            source,
            extract,
            fields,
            code_tables,
        }),
        _ => Err(errors),
    }
}

fn amqp_sink(
    path: &Path,
    base: &Path,
    a: AmqpSinkFile,
    resolve_secrets: bool,
    errors: &mut Vec<ConfigError>,
) -> AmqpSinkConfig {
    if a.urls.is_empty() {
        errors.push(
            ConfigError::new(path, "sink.urls", "at least one broker URL is needed")
                .hint("e.g. urls = [\"amqps://mq.example.gov.cn:5671/fep\"]"),
        );
    }
    for u in &a.urls {
        let scheme_ok = u.starts_with("amqp://") || u.starts_with("amqps://");
        let authority = u
            .split_once("://")
            .map(|(_, rest)| rest.split('/').next().unwrap_or_default())
            .unwrap_or_default();
        if !scheme_ok {
            errors.push(ConfigError::new(
                path,
                "sink.urls",
                format!("`{}` is not an amqp:// or amqps:// URL", redact_url(u)),
            ));
        } else if authority.contains('@') {
            errors.push(
                ConfigError::new(path, "sink.urls", format!("`{}` carries credentials", redact_url(u)))
                    .hint("put the user in `user` and the password in `password = { env = … }`, never in the URL"),
            );
        }
    }
    let password = match &a.password {
        Some(r) if resolve_secrets => match r.resolve() {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(ConfigError::new(
                    path,
                    "sink.password",
                    format!("{e} ({})", r.describe()),
                ));
                None
            }
        },
        _ => None,
    };
    for (key, file) in [
        ("sink.ca_file", &a.ca_file),
        ("sink.client_cert", &a.client_cert),
        ("sink.client_key", &a.client_key),
    ] {
        if let Some(f) = file
            && !base.join(f).is_file()
        {
            errors.push(ConfigError::new(
                path,
                key,
                format!("{} does not exist", base.join(f).display()),
            ));
        }
    }
    if a.ca_file.is_none() && a.urls.iter().any(|u| u.starts_with("amqps://")) {
        errors.push(
            ConfigError::new(path, "sink.ca_file", "amqps:// needs the CA that signed the broker's certificate")
                .hint("set ca_file = \"/etc/fepd/extranet-ca.pem\"; only that CA is trusted, no system roots"),
        );
    }
    if a.client_cert.is_some() != a.client_key.is_some() {
        errors.push(
            ConfigError::new(
                path,
                "sink.client_cert",
                "client_cert and client_key go together",
            )
            .hint("give both the certificate chain and its private key (PEM)"),
        );
    }
    let external_auth = match a.auth.as_deref() {
        None | Some("plain") => false,
        Some("external") => {
            if a.client_cert.is_none() {
                errors.push(
                    ConfigError::new(path, "sink.auth", "auth = \"external\" needs a client certificate")
                        .hint("set client_cert and client_key, or use auth = \"plain\" with user and password"),
                );
            }
            if a.user.is_some() || a.password.is_some() {
                errors.push(ConfigError::new(
                    path,
                    "sink.auth",
                    "auth = \"external\" logs in with the certificate: remove user and password",
                ));
            }
            true
        }
        Some(other) => {
            errors.push(
                ConfigError::new(path, "sink.auth", format!("unknown auth `{other}`"))
                    .hint("use \"plain\" (user and password) or \"external\" (client certificate)"),
            );
            false
        }
    };
    if a.window == Some(0) {
        errors.push(ConfigError::new(path, "sink.window", "must be at least 1"));
    }
    let duration = |key: &str, v: Option<&str>, default: u64, errors: &mut Vec<ConfigError>| match v
        .map(parse_duration)
    {
        None => Duration::from_secs(default),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(ConfigError::new(path, key, e));
            Duration::from_secs(default)
        }
    };
    AmqpSinkConfig {
        urls: a.urls,
        user: a.user,
        password,
        ca_file: a.ca_file.map(|c| base.join(c)),
        exchange: a
            .exchange
            .unwrap_or_else(|| crate::envelope::RECORDS_EXCHANGE.to_string()),
        passive: a.passive,
        connect_timeout: duration(
            "sink.connect_timeout",
            a.connect_timeout.as_deref(),
            10,
            errors,
        ),
        heartbeat: duration("sink.heartbeat", a.heartbeat.as_deref(), 30, errors),
        client_cert: a.client_cert.map(|c| base.join(c)),
        client_key: a.client_key.map(|c| base.join(c)),
        external_auth,
        window: a.window.unwrap_or(16).max(1),
        confirm_timeout: duration(
            "sink.confirm_timeout",
            a.confirm_timeout.as_deref(),
            60,
            errors,
        ),
        retry_timeout: duration(
            "sink.retry_timeout",
            a.retry_timeout.as_deref(),
            300,
            errors,
        ),
        control_exchange: a
            .control_exchange
            .unwrap_or_else(|| crate::control::CONTROL_EXCHANGE.to_string()),
    }
}

/// A URL with any user information replaced by `***`, safe to print.
pub fn redact_url(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => {
            let (authority, path) = match rest.find('/') {
                Some(i) => rest.split_at(i),
                None => (rest, ""),
            };
            match authority.rsplit_once('@') {
                Some((_, host)) => format!("{scheme}://***@{host}{path}"),
                None => url.to_string(),
            }
        }
        None => url.to_string(),
    }
}

fn net_source(
    path: &Path,
    base: &Path,
    n: NetSourceFile,
    default_port: u16,
    resolve_secrets: bool,
    errors: &mut Vec<ConfigError>,
) -> NetSource {
    let password = match &n.password {
        Some(r) if resolve_secrets => match r.resolve() {
            Ok(s) => Some(s),
            Err(e) => {
                errors.push(
                    ConfigError::new(path, "source.password", format!("{} ({})", e, r.describe()))
                        .hint("passwords come from { env = \"VAR\" }, { file = \"/path\" } or { credential = \"name\" } (systemd LoadCredential)"),
                );
                None
            }
        },
        _ => None,
    };
    let tls = match n.tls.as_deref() {
        None | Some("prefer") => TlsMode::Prefer,
        Some("disable") => TlsMode::Disable,
        Some("require") => TlsMode::Require,
        Some("verify-full") => TlsMode::VerifyFull,
        Some(other) => {
            errors.push(
                ConfigError::new(path, "source.tls", format!("unknown TLS mode `{other}`"))
                    .hint("use \"disable\", \"prefer\", \"require\" or \"verify-full\""),
            );
            TlsMode::Prefer
        }
    };
    if let Some(ca) = &n.ca_file
        && !base.join(ca).is_file()
    {
        errors.push(ConfigError::new(
            path,
            "source.ca_file",
            format!("{} does not exist", base.join(ca).display()),
        ));
    }
    let connect_timeout = match n.connect_timeout.as_deref().map(parse_duration) {
        None => Duration::from_secs(10),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(ConfigError::new(path, "source.connect_timeout", e));
            Duration::from_secs(10)
        }
    };
    for (key, v) in [
        ("source.host", &n.host),
        ("source.database", &n.database),
        ("source.user", &n.user),
    ] {
        if v.trim().is_empty() || v.chars().any(|c| c.is_control()) {
            errors.push(ConfigError::new(path, key, "must not be empty"));
        }
    }
    NetSource {
        host: n.host,
        port: n.port.unwrap_or(default_port),
        database: n.database,
        user: n.user,
        password,
        tls,
        ca_file: n.ca_file.map(|c| base.join(c)),
        connect_timeout,
    }
}

fn parse_extract(
    path: &Path,
    x: &ExtractFile,
    errors: &mut Vec<ConfigError>,
) -> Option<ExtractConfig> {
    let before = errors.len();
    let relation = match (&x.table, &x.query) {
        (Some(t), None) => {
            for part in t.split('.') {
                if let Err(e) = validate_identifier(part) {
                    errors.push(ConfigError::new(path, "extract.table", e));
                }
            }
            Relation::Table(t.clone())
        }
        (None, Some(q)) => {
            if let Err(e) = check_read_only_query(q) {
                errors.push(ConfigError::new(path, "extract.query", e).hint("a connector query must be one read-only SELECT (or WITH … SELECT); fepd adds the cursor condition and ordering itself"));
            }
            Relation::Query(q.trim().trim_end_matches(';').to_string())
        }
        _ => {
            errors.push(ConfigError::new(
                path,
                "extract",
                "set exactly one of `table` or `query`",
            ));
            Relation::Table(String::new())
        }
    };
    let key = match &x.key {
        OneOrMany::One(k) => vec![k.clone()],
        OneOrMany::Many(ks) => ks.clone(),
    };
    if key.is_empty() {
        errors.push(
            ConfigError::new(path, "extract.key", "at least one key column is required")
                .hint("name the column(s) that identify a row, e.g. key = \"pay_id\""),
        );
    }
    for k in &key {
        if let Err(e) = validate_identifier(k) {
            errors.push(ConfigError::new(path, "extract.key", e));
        }
    }
    let lag = match x.lag.as_deref().map(parse_duration) {
        None => Duration::from_secs(300),
        Some(Ok(d)) => d,
        Some(Err(e)) => {
            errors.push(ConfigError::new(path, "extract.lag", e));
            Duration::ZERO
        }
    };
    let mode = match x.mode.as_str() {
        "incrementing" | "timestamp" => {
            let Some(column) = x.column.clone() else {
                errors.push(
                    ConfigError::new(
                        path,
                        "extract.column",
                        format!("mode = \"{}\" needs the cursor column", x.mode),
                    )
                    .hint("e.g. column = \"updated_at\""),
                );
                return None;
            };
            if let Err(e) = validate_identifier(&column) {
                errors.push(ConfigError::new(path, "extract.column", e));
            }
            if x.mode == "incrementing" {
                if x.lag.is_some() {
                    errors.push(ConfigError::new(
                        path,
                        "extract.lag",
                        "`lag` applies to mode = \"timestamp\" only",
                    ));
                }
                CursorMode::Incrementing { column }
            } else {
                CursorMode::Timestamp { column, lag }
            }
        }
        "snapshot" => {
            if x.column.is_some() || x.lag.is_some() {
                errors.push(ConfigError::new(
                    path,
                    "extract.column",
                    "mode = \"snapshot\" takes no cursor column or lag",
                ));
            }
            CursorMode::Snapshot
        }
        other => {
            errors.push(
                ConfigError::new(path, "extract.mode", format!("unknown mode `{other}`"))
                    .hint("use \"incrementing\", \"timestamp\" or \"snapshot\""),
            );
            return None;
        }
    };
    let start_from = match &x.start_from {
        None => None,
        Some(s) => match NaiveDate::parse_from_str(s, "%Y-%m-%d") {
            Ok(d) => Some(d),
            Err(_) => {
                errors.push(
                    ConfigError::new(path, "extract.start_from", format!("`{s}` is not a date"))
                        .hint("write it as \"YYYY-MM-DD\", e.g. \"2017-01-01\""),
                );
                None
            }
        },
    };
    if start_from.is_some() && !matches!(mode, CursorMode::Timestamp { .. }) {
        errors.push(ConfigError::new(
            path,
            "extract.start_from",
            "`start_from` applies to mode = \"timestamp\" only (it is a date)",
        ));
    }
    let fetch_size = x.fetch_size.unwrap_or(1000);
    if !(1..=100_000).contains(&fetch_size) {
        errors.push(ConfigError::new(
            path,
            "extract.fetch_size",
            format!("{fetch_size} is out of range 1..=100000"),
        ));
    }
    let time_zone = parse_tz(path, "extract.time_zone", x.time_zone.as_deref(), errors);
    let encoding = match x.encoding.as_deref() {
        None => encoding_rs::UTF_8,
        Some(label) => match encoding_rs::Encoding::for_label(label.as_bytes()) {
            Some(e) => e,
            None => {
                errors.push(
                    ConfigError::new(
                        path,
                        "extract.encoding",
                        format!("unknown encoding `{label}`"),
                    )
                    .hint("use \"utf8\", \"gbk\" or \"gb18030\""),
                );
                encoding_rs::UTF_8
            }
        },
    };
    let query_timeout = match x.query_timeout.as_deref().map(parse_duration) {
        None => None,
        Some(Ok(d)) if d.is_zero() => None,
        Some(Ok(d)) => Some(d),
        Some(Err(e)) => {
            errors.push(ConfigError::new(path, "extract.query_timeout", e));
            None
        }
    };
    let max_rows_per_second = match x.max_rows_per_second {
        Some(0) => {
            errors.push(ConfigError::new(
                path,
                "extract.max_rows_per_second",
                "0 would never read; leave it out for no limit",
            ));
            None
        }
        other => other,
    };
    let window = match x.window.as_deref().map(Window::parse) {
        None => None,
        Some(Ok(w)) => Some(w),
        Some(Err(e)) => {
            errors.push(ConfigError::new(path, "extract.window", e));
            None
        }
    };
    if errors.len() > before {
        return None;
    }
    Some(ExtractConfig {
        relation,
        key,
        mode,
        start_from,
        fetch_size,
        time_zone,
        encoding,
        query_timeout,
        max_rows_per_second,
        window,
    })
}

const FIELD_KEYS: &str = "column, expr, value, transforms, code_table";

fn parse_fields(
    path: &Path,
    rt: RecordType,
    table: &toml::Table,
    code_tables: &HashMap<String, HashMap<String, String>>,
    have_hmac_key: bool,
    errors: &mut Vec<ConfigError>,
) -> Vec<FieldMapping> {
    let mut by_name: HashMap<&str, FieldMapping> = HashMap::new();
    for (name, spec) in table {
        let key = format!("fields.{name}");
        let Some(def) = rt.field(name) else {
            let known: Vec<&str> = rt.fields().iter().map(|f| f.name).collect();
            errors.push(
                ConfigError::new(path, &key, format!("`{name}` is not a field of {rt}"))
                    .hint(format!("fields of {rt}: {}", known.join(", "))),
            );
            continue;
        };
        let mut source = None;
        let mut transforms = Vec::new();
        let mut code_table = None;
        match spec {
            toml::Value::String(col) => source = Some(FieldSource::Column(col.clone())),
            toml::Value::Table(t) => {
                for (k, v) in t {
                    match (k.as_str(), v) {
                        ("column", toml::Value::String(c)) => {
                            source =
                                set_once(path, &key, source, FieldSource::Column(c.clone()), errors)
                        }
                        ("expr", toml::Value::String(e)) => {
                            source =
                                set_once(path, &key, source, FieldSource::Expr(e.clone()), errors)
                        }
                        ("value", v) => match toml_to_value(v) {
                            Ok(v) => {
                                source = set_once(path, &key, source, FieldSource::Const(v), errors)
                            }
                            Err(m) => {
                                errors.push(ConfigError::new(path, format!("{key}.value"), m))
                            }
                        },
                        ("transforms", toml::Value::Array(list)) => {
                            for item in list {
                                match item.as_str().and_then(Transform::parse) {
                                    Some(t) => transforms.push(t),
                                    None => errors.push(
                                        ConfigError::new(
                                            path,
                                            format!("{key}.transforms"),
                                            format!("unknown transform {item}"),
                                        )
                                        .hint("use trim, upper, mask, hmac or drop"),
                                    ),
                                }
                            }
                        }
                        ("code_table", toml::Value::String(ct)) => code_table = Some(ct.clone()),
                        (k @ ("column" | "expr" | "transforms" | "code_table"), v) => {
                            errors.push(ConfigError::new(
                                path,
                                format!("{key}.{k}"),
                                format!("wrong type ({})", v.type_str()),
                            ))
                        }
                        (other, _) => errors.push(
                            ConfigError::new(path, format!("{key}.{other}"), "unknown key")
                                .hint(format!("a field takes: {FIELD_KEYS}")),
                        ),
                    }
                }
            }
            other => errors.push(
                ConfigError::new(
                    path,
                    &key,
                    format!(
                        "expected a column name or a table, got {}",
                        other.type_str()
                    ),
                )
                .hint(format!(
                    "write `{name} = \"column\"` or `{name} = {{ column = \"…\" }}`"
                )),
            ),
        }
        let Some(source) = source else {
            errors.push(ConfigError::new(
                path,
                &key,
                "no source: set one of `column`, `expr` or `value`",
            ));
            continue;
        };
        match &source {
            FieldSource::Column(c) => {
                if let Err(e) = validate_identifier(c) {
                    errors.push(ConfigError::new(path, format!("{key}.column"), e));
                }
            }
            FieldSource::Expr(e) => {
                if let Err(m) = check_read_only_expr(e) {
                    errors.push(ConfigError::new(path, format!("{key}.expr"), m));
                }
            }
            FieldSource::Const(_) => {}
        }
        if let Some(ct) = &code_table
            && !code_tables.contains_key(ct)
        {
            errors.push(
                ConfigError::new(
                    path,
                    format!("{key}.code_table"),
                    format!("no code table `{ct}`"),
                )
                .hint(format!(
                    "define it as [code_tables.{ct}] with \"local\" = \"platform\" lines"
                )),
            );
        }
        if transforms.contains(&Transform::Drop) && def.required {
            errors.push(ConfigError::new(
                path,
                format!("{key}.transforms"),
                format!("`{name}` is required by {rt} and cannot be dropped"),
            ));
        }
        if transforms.contains(&Transform::Hmac) && !have_hmac_key {
            errors.push(
                ConfigError::new(path, format!("{key}.transforms"), "`hmac` needs a key")
                    .hint("set hmac_key = { env = \"…\" } (or file/credential) in fepd.toml"),
            );
        }
        if transforms.contains(&Transform::Hmac) && transforms.contains(&Transform::Mask) {
            errors.push(ConfigError::new(
                path,
                format!("{key}.transforms"),
                "use either `hmac` or `mask`, not both",
            ));
        }
        if (transforms.contains(&Transform::Hmac) || transforms.contains(&Transform::Mask))
            && matches!(
                def.kind,
                FieldKind::Amount | FieldKind::Year | FieldKind::Date | FieldKind::Attachments
            )
        {
            errors.push(ConfigError::new(
                path,
                format!("{key}.transforms"),
                "`hmac` and `mask` apply to text fields only",
            ));
        }
        by_name.insert(
            def.name,
            FieldMapping {
                def,
                source,
                transforms,
                code_table,
            },
        );
    }
    let missing: Vec<&str> = rt
        .fields()
        .iter()
        .filter(|f| f.required && !by_name.contains_key(f.name))
        .map(|f| f.name)
        .collect();
    if !missing.is_empty() {
        errors.push(
            ConfigError::new(path, "fields", format!("required field(s) of {rt} not mapped: {}", missing.join(", ")))
                .hint("map each to a column (`name = \"column\"`), an expression or a constant (`{ value = … }`)"),
        );
    }
    rt.fields()
        .iter()
        .filter_map(|f| by_name.remove(f.name))
        .collect()
}

fn set_once(
    path: &Path,
    key: &str,
    old: Option<FieldSource>,
    new: FieldSource,
    errors: &mut Vec<ConfigError>,
) -> Option<FieldSource> {
    if old.is_some() {
        errors.push(ConfigError::new(
            path,
            key,
            "set only one of `column`, `expr` or `value`",
        ));
    }
    Some(new)
}

fn toml_to_value(v: &toml::Value) -> Result<Value, String> {
    Ok(match v {
        toml::Value::String(s) => Value::Text(s.clone()),
        toml::Value::Integer(i) => Value::Int(*i),
        toml::Value::Boolean(b) => Value::Bool(*b),
        toml::Value::Datetime(d) => Value::Text(d.to_string()),
        toml::Value::Float(_) => return Err(
            "floating-point constants are not exact; write the number as a string, e.g. \"12.50\""
                .into(),
        ),
        _ => return Err("a constant must be a string, an integer, a boolean or a date".into()),
    })
}
