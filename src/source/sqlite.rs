//! The `sqlite` driver: legacy SQLite databases, opened read-only.
//!
//! Runs on rusqlite in a blocking thread and hands rows over in chunks (see
//! [`super::blocking_rows`]): sqlx's SQLite driver moves every row between threads, which
//! cost more than all the mapping and validation together.
//!
//! SQLite is dynamically typed, so each cell is decoded by its storage class (INTEGER,
//! REAL, TEXT, BLOB), not by the declared column type. Text that is not valid UTF-8 (GBK
//! written by a legacy program) is passed on as bytes for the connector's `encoding`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use futures_util::future::BoxFuture;
use rusqlite::types::{Value as SqlValue, ValueRef};
use rusqlite::{Connection, OpenFlags};

use super::{Dialect, Row, RowStream, SelectQuery, SourceDriver, SourceError, blocking_rows};
use crate::value::Value;

pub struct SqliteDialect;

impl Dialect for SqliteDialect {
    fn quote_ident(&self, part: &str) -> String {
        format!("\"{}\"", part.replace('"', "\"\""))
    }

    fn placeholder(&self, n: usize) -> String {
        format!("?{n}")
    }
}

pub struct SqliteSource {
    connector: String,
    path: PathBuf,
    raw_text: bool,
    fetch_size: usize,
}

impl SqliteSource {
    /// Checks that the database exists and opens read-only.
    pub fn open(
        connector: &str,
        path: &Path,
        raw_text: bool,
        fetch_size: usize,
    ) -> Result<SqliteSource, SourceError> {
        let source = SqliteSource {
            connector: connector.to_string(),
            path: path.to_path_buf(),
            raw_text,
            fetch_size,
        };
        if !path.is_file() {
            return Err(SourceError::Connect {
                connector: connector.to_string(),
                message: format!(
                    "SQLite database {} does not exist; check [source] path",
                    path.display()
                ),
                retryable: false,
            });
        }
        source.connect()?;
        Ok(source)
    }

    fn connect(&self) -> Result<Connection, SourceError> {
        let conn = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(|e| SourceError::Connect {
            connector: self.connector.clone(),
            message: format!("{}: {e}", self.path.display()),
            retryable: false,
        })?;
        conn.busy_timeout(Duration::from_secs(30))
            .map_err(|e| query_error(&self.connector, e))?;
        Ok(conn)
    }
}

fn query_error(connector: &str, e: rusqlite::Error) -> SourceError {
    let retryable = matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    );
    SourceError::Query {
        connector: connector.to_string(),
        message: e.to_string(),
        retryable,
    }
}

fn bind_value(v: &Value) -> SqlValue {
    match v {
        Value::Null => SqlValue::Null,
        Value::Bool(b) => SqlValue::Integer(i64::from(*b)),
        Value::Int(i) => SqlValue::Integer(*i),
        Value::Float(f) => SqlValue::Real(*f),
        Value::Decimal(d) => SqlValue::Text(d.to_string()),
        Value::Text(s) => SqlValue::Text(s.clone()),
        Value::Bytes(b) => SqlValue::Blob(b.clone()),
        // The text layouts SQLite's own date functions write and compare.
        Value::Date(d) => SqlValue::Text(d.format("%Y-%m-%d").to_string()),
        Value::DateTime(d) => SqlValue::Text(d.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
        Value::DateTimeTz(d) => SqlValue::Text(d.to_rfc3339()),
    }
}

fn decode(row: &rusqlite::Row<'_>, columns: usize, raw_text: bool) -> Result<Row, rusqlite::Error> {
    let mut out = Vec::with_capacity(columns);
    for i in 0..columns {
        out.push(match row.get_ref(i)? {
            ValueRef::Null => Value::Null,
            ValueRef::Integer(n) => Value::Int(n),
            ValueRef::Real(f) => Value::Float(f),
            ValueRef::Text(bytes) => match (raw_text, std::str::from_utf8(bytes)) {
                (false, Ok(s)) => Value::Text(s.to_string()),
                _ => Value::Bytes(bytes.to_vec()),
            },
            ValueRef::Blob(bytes) => Value::Bytes(bytes.to_vec()),
        });
    }
    Ok(out)
}

impl SourceDriver for SqliteSource {
    fn dialect(&self) -> &dyn Dialect {
        &SqliteDialect
    }

    fn rows<'a>(&'a self, q: &'a SelectQuery) -> RowStream<'a> {
        let conn = self.connect();
        let connector = self.connector.clone();
        let sql = q.sql.clone();
        let binds: Vec<SqlValue> = q.binds.iter().map(bind_value).collect();
        let raw_text = self.raw_text;
        blocking_rows(self.fetch_size, move |out| {
            let conn = conn?;
            let err = |e| query_error(&connector, e);
            let mut stmt = conn.prepare(&sql).map_err(err)?;
            let columns = stmt.column_count();
            let mut rows = stmt
                .query(rusqlite::params_from_iter(binds.iter()))
                .map_err(err)?;
            while let Some(row) = rows.next().map_err(err)? {
                if !out.emit(decode(row, columns, raw_text).map_err(err)?) {
                    break;
                }
            }
            Ok(())
        })
    }

    fn scalar_i64<'a>(
        &'a self,
        q: &'a SelectQuery,
    ) -> BoxFuture<'a, Result<Option<i64>, SourceError>> {
        let conn = self.connect();
        let connector = self.connector.clone();
        let sql = q.sql.clone();
        let binds: Vec<SqlValue> = q.binds.iter().map(bind_value).collect();
        Box::pin(async move {
            let conn = conn?;
            let joined = tokio::task::spawn_blocking(move || {
                conn.query_row(&sql, rusqlite::params_from_iter(binds.iter()), |r| {
                    r.get::<_, Option<i64>>(0)
                })
                .map_err(|e| query_error(&connector, e))
            })
            .await;
            joined.map_err(|e| SourceError::Query {
                connector: String::new(),
                message: e.to_string(),
                retryable: false,
            })?
        })
    }
}
