//! The `mysql` driver: MySQL and MariaDB, through sqlx with rustls.
//!
//! DECIMAL arrives as its exact text and stays exact; DATETIME is read as stored (a local
//! time in the source's zone); TIMESTAMP is an instant (the session runs in UTC, as sqlx
//! sets it, and the mapper takes dates in the source's zone). Text columns in any server
//! character set (gbk, utf8mb4, …) are converted to UTF-8 by the server. A connector with an
//! `encoding` (GBK bytes stored in latin1 columns by a legacy program) asks the server for
//! the bytes as stored (`SET NAMES binary`) and decodes them itself.

use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use sqlx::mysql::{
    MySql, MySqlConnectOptions, MySqlPool, MySqlPoolOptions, MySqlRow, MySqlSslMode, MySqlValueRef,
};
use sqlx::{AssertSqlSafe, Decode, Row as _, TypeInfo as _, ValueRef as _};

use super::postgres::sqlx_retryable;
use super::{Dialect, Row, RowStream, SelectQuery, SourceDriver, SourceError};
use crate::config::{NetSource, TlsMode};
use crate::value::Value;

pub struct MysqlDialect;

impl Dialect for MysqlDialect {
    fn quote_ident(&self, part: &str) -> String {
        format!("`{}`", part.replace('`', "``"))
    }

    fn placeholder(&self, _n: usize) -> String {
        "?".to_string()
    }
}

pub struct MysqlSource {
    connector: String,
    pool: MySqlPool,
    raw_text: bool,
}

impl MysqlSource {
    pub async fn open(
        connector: &str,
        net: &NetSource,
        query_timeout: Option<std::time::Duration>,
        raw_text: bool,
    ) -> Result<MysqlSource, SourceError> {
        let mut options = MySqlConnectOptions::new()
            .host(&net.host)
            .port(net.port)
            .database(&net.database)
            .username(&net.user)
            // Expressions in connector files mean what they mean on the department's server.
            .pipes_as_concat(false)
            .ssl_mode(match net.tls {
                TlsMode::Disable => MySqlSslMode::Disabled,
                TlsMode::Prefer => MySqlSslMode::Preferred,
                TlsMode::Require if net.ca_file.is_some() => MySqlSslMode::VerifyCa,
                TlsMode::Require => MySqlSslMode::Required,
                TlsMode::VerifyFull => MySqlSslMode::VerifyIdentity,
            });
        if let Some(ca) = &net.ca_file {
            options = options.ssl_ca(ca);
        }
        if raw_text {
            options = options.charset("binary");
        }
        if let Some(pw) = &net.password {
            let pw = pw.expose_str().map_err(|_| SourceError::Connect {
                connector: connector.to_string(),
                message: "the password is not valid UTF-8".into(),
                retryable: false,
            })?;
            options = options.password(pw);
        }
        let options = sqlx::ConnectOptions::disable_statement_logging(options);
        let timeout = query_timeout;
        // One connection: at most one query at a time against the source.
        let pool = MySqlPoolOptions::new()
            .max_connections(1)
            .acquire_timeout(net.connect_timeout)
            .after_connect(move |conn, _| {
                Box::pin(async move {
                    use sqlx::Executor as _;
                    conn.execute("SET SESSION TRANSACTION READ ONLY").await?;
                    if let Some(t) = timeout {
                        // MariaDB spells it max_statement_time (seconds), MySQL
                        // max_execution_time (milliseconds, SELECT only); one of them exists.
                        let ms = t.as_millis();
                        let secs = t.as_secs_f64();
                        if conn
                            .execute(AssertSqlSafe(format!(
                                "SET SESSION max_statement_time = {secs}"
                            )))
                            .await
                            .is_err()
                        {
                            conn.execute(AssertSqlSafe(format!(
                                "SET SESSION max_execution_time = {ms}"
                            )))
                            .await?;
                        }
                    }
                    Ok(())
                })
            })
            .connect_with(options)
            .await
            .map_err(|e| SourceError::Connect {
                connector: connector.to_string(),
                message: format!("mysql {}: {e}", net.describe()),
                retryable: sqlx_retryable(&e) || is_mysql_retryable(&e),
            })?;
        Ok(MysqlSource {
            connector: connector.to_string(),
            pool,
            raw_text,
        })
    }

    fn query_error(&self, e: sqlx::Error) -> SourceError {
        SourceError::Query {
            connector: self.connector.clone(),
            retryable: sqlx_retryable(&e) || is_mysql_retryable(&e),
            message: e.to_string(),
        }
    }

    fn decode(&self, row: &MySqlRow) -> Result<Row, SourceError> {
        super::decode_sqlx_row(&self.connector, row, self.raw_text, decode_cell)
    }
}

/// MySQL error numbers worth retrying: server gone away or shutting down, lock waits,
/// deadlocks, too many connections.
fn is_mysql_retryable(e: &sqlx::Error) -> bool {
    let Some(d) = e.as_database_error() else {
        return false;
    };
    let Some(m) = d.try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>() else {
        return false;
    };
    matches!(
        m.number(),
        1040 | 1053 | 1205 | 1213 | 2006 | 2013 | 1927 | 1152 | 1158 | 1159 | 1160 | 1161
    )
}

fn dec<'r, T: Decode<'r, MySql>>(v: MySqlValueRef<'r>) -> Result<T, String> {
    T::decode(v).map_err(|e| e.to_string())
}

/// The types `decode_cell` handles by name; every other type is text.
const MYSQL_TYPES: &[&str] = &[
    "BOOLEAN",
    "TINYINT",
    "SMALLINT",
    "INT",
    "MEDIUMINT",
    "BIGINT",
    "YEAR",
    "TINYINT UNSIGNED",
    "SMALLINT UNSIGNED",
    "INT UNSIGNED",
    "MEDIUMINT UNSIGNED",
    "BIGINT UNSIGNED",
    "FLOAT",
    "DOUBLE",
    "DECIMAL",
    "DATE",
    "DATETIME",
    "TIMESTAMP",
    "TIME",
    "BINARY",
    "VARBINARY",
    "TINYBLOB",
    "BLOB",
    "MEDIUMBLOB",
    "LONGBLOB",
    "BIT",
    "GEOMETRY",
];

fn decode_cell(v: MySqlValueRef<'_>, raw_text: bool) -> Result<Value, String> {
    if v.is_null() {
        return Ok(Value::Null);
    }
    Ok(
        match super::known_type(v.type_info().name(), MYSQL_TYPES).unwrap_or_default() {
            "BOOLEAN" | "TINYINT" | "SMALLINT" | "INT" | "MEDIUMINT" | "BIGINT" | "YEAR"
            | "TINYINT UNSIGNED" | "SMALLINT UNSIGNED" | "INT UNSIGNED" | "MEDIUMINT UNSIGNED" => {
                Value::Int(dec(v)?)
            }
            "BIGINT UNSIGNED" => {
                let u: u64 = dec(v)?;
                match i64::try_from(u) {
                    Ok(i) => Value::Int(i),
                    Err(_) => Value::Decimal(rust_decimal::Decimal::from(u)),
                }
            }
            "FLOAT" => Value::Float(f64::from(dec::<f32>(v)?)),
            "DOUBLE" => Value::Float(dec(v)?),
            "DECIMAL" => {
                let text =
                    String::from_utf8(dec::<&[u8]>(v)?.to_vec()).map_err(|e| e.to_string())?;
                match rust_decimal::Decimal::from_str_exact(&text) {
                    Ok(d) => Value::Decimal(d),
                    Err(_) => Value::Text(text),
                }
            }
            "DATE" => Value::Date(dec(v)?),
            "DATETIME" => Value::DateTime(dec(v)?),
            "TIMESTAMP" => {
                Value::DateTimeTz(dec::<chrono::DateTime<chrono::Utc>>(v)?.fixed_offset())
            }
            "TIME" => Value::Text(dec::<chrono::NaiveTime>(v)?.to_string()),
            "BINARY" | "VARBINARY" | "TINYBLOB" | "BLOB" | "MEDIUMBLOB" | "LONGBLOB" | "BIT"
            | "GEOMETRY" => {
                // With `SET NAMES binary` every text column arrives flagged binary: raw text.
                Value::Bytes(dec::<&[u8]>(v)?.to_vec())
            }
            _ => {
                // CHAR, VARCHAR, TEXT, ENUM, SET, JSON: text converted by the server.
                let bytes: &[u8] = dec(v)?;
                match (raw_text, std::str::from_utf8(bytes)) {
                    (false, Ok(s)) => Value::Text(s.to_string()),
                    _ => Value::Bytes(bytes.to_vec()),
                }
            }
        },
    )
}

fn build<'q>(q: &SelectQuery) -> sqlx::query::Query<'q, MySql, sqlx::mysql::MySqlArguments> {
    let mut query = sqlx::query(AssertSqlSafe(q.sql.clone()));
    for v in &q.binds {
        query = match v {
            Value::Null => query.bind(Option::<String>::None),
            Value::Bool(b) => query.bind(*b),
            Value::Int(i) => query.bind(*i),
            Value::Float(f) => query.bind(*f),
            Value::Decimal(d) => query.bind(*d),
            Value::Text(s) => query.bind(s.clone()),
            Value::Bytes(b) => query.bind(b.clone()),
            Value::Date(d) => query.bind(*d),
            Value::DateTime(d) => query.bind(*d),
            Value::DateTimeTz(d) => query.bind(d.with_timezone(&chrono::Utc)),
        };
    }
    query
}

impl SourceDriver for MysqlSource {
    fn dialect(&self) -> &dyn Dialect {
        &MysqlDialect
    }

    fn rows<'a>(&'a self, q: &'a SelectQuery) -> RowStream<'a> {
        build(q)
            .fetch(&self.pool)
            .map(move |r| match r {
                Ok(row) => self.decode(&row),
                Err(e) => Err(self.query_error(e)),
            })
            .boxed()
    }

    fn can_write<'a>(
        &'a self,
        _table: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>, SourceError>> {
        Box::pin(async move {
            let grants = sqlx::query("SHOW GRANTS FOR CURRENT_USER()")
                .fetch_all(&self.pool)
                .await
                .map_err(|e| self.query_error(e))?;
            let mut writes = false;
            for g in grants {
                let text: String = match g.try_get::<String, _>(0) {
                    Ok(t) => t,
                    Err(_) => {
                        String::from_utf8_lossy(&g.try_get::<Vec<u8>, _>(0).unwrap_or_default())
                            .into_owned()
                    }
                };
                let upper = text.to_uppercase();
                let privileges = upper.split(" ON ").next().unwrap_or_default();
                if [
                    "ALL PRIVILEGES",
                    "INSERT",
                    "UPDATE",
                    "DELETE",
                    "DROP",
                    "ALTER",
                ]
                .iter()
                .any(|p| privileges.contains(p))
                {
                    writes = true;
                }
            }
            Ok(Some(writes))
        })
    }

    fn scalar_i64<'a>(
        &'a self,
        q: &'a SelectQuery,
    ) -> BoxFuture<'a, Result<Option<i64>, SourceError>> {
        Box::pin(async move {
            let row = build(q)
                .fetch_optional(&self.pool)
                .await
                .map_err(|e| self.query_error(e))?;
            match row {
                None => Ok(None),
                Some(r) => r
                    .try_get::<Option<i64>, _>(0)
                    .map_err(|e| self.query_error(e)),
            }
        })
    }
}
