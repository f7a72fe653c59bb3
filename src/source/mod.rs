//! Source drivers and the cursor engine they share.
//!
//! A driver supplies only three things: a [`Dialect`] (quoting, placeholders, row limits),
//! the execution of a [`SelectQuery`] as a bounded stream of rows, and the decoding of its
//! native types into [`Value`]. Everything else — which columns to select, the cursor
//! condition and ordering of each mode, resuming, lag windows — is built once, in
//! [`cursor`], from the connector config. SQL Server and Oracle drivers plug in the same way.

pub mod cursor;
pub mod mysql;
pub mod postgres;
pub mod sql;
pub mod sqlite;

use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;

use crate::config::{ConnectorConfig, SourceConfig};
use crate::value::Value;

/// How a driver writes SQL.
pub trait Dialect: Send + Sync {
    /// Quotes one identifier part (no dots), escaping the quote character.
    fn quote_ident(&self, part: &str) -> String;

    /// The placeholder for the `n`-th bound value (1-based).
    fn placeholder(&self, n: usize) -> String;

    /// Appends a row limit to a complete SELECT.
    fn limit(&self, sql: &str, rows: usize) -> String {
        format!("{sql} LIMIT {rows}")
    }

    /// Quotes a possibly schema-qualified name such as `dbo.payments`.
    fn quote_path(&self, name: &str) -> String {
        name.split('.')
            .map(|p| self.quote_ident(p))
            .collect::<Vec<_>>()
            .join(".")
    }
}

/// A SELECT with its bound values, built by the cursor engine.
#[derive(Debug, Clone, PartialEq)]
pub struct SelectQuery {
    pub sql: String,
    pub binds: Vec<Value>,
}

/// A row as the driver decoded it, in the order of the query's select list.
pub type Row = Vec<Value>;

pub type RowStream<'a> = BoxStream<'a, Result<Row, SourceError>>;

/// A connected source.
pub trait SourceDriver: Send + Sync {
    fn dialect(&self) -> &dyn Dialect;

    /// Runs the query and streams its rows. The stream must pull from the database only as
    /// it is polled, so memory stays bounded whatever the table size.
    fn rows<'a>(&'a self, query: &'a SelectQuery) -> RowStream<'a>;

    /// Runs a query that returns a single integer (a count), for previews and `check`.
    fn scalar_i64<'a>(
        &'a self,
        query: &'a SelectQuery,
    ) -> BoxFuture<'a, Result<Option<i64>, SourceError>>;

    /// Whether the connector's account may write to `table` (`None`: cannot tell). fepd
    /// only reads; `fepd check` warns when the account could do more.
    fn can_write<'a>(
        &'a self,
        _table: &'a str,
    ) -> BoxFuture<'a, Result<Option<bool>, SourceError>> {
        Box::pin(async { Ok(None) })
    }
}

/// A source failure, with the connector it happened in.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    #[error("connector {connector}: cannot open source: {message}")]
    Connect {
        connector: String,
        message: String,
        retryable: bool,
    },
    #[error("connector {connector}: query failed: {message}")]
    Query {
        connector: String,
        message: String,
        retryable: bool,
    },
    #[error("connector {connector}: column {column}: {message}")]
    Decode {
        connector: String,
        column: String,
        message: String,
    },
}

impl SourceError {
    /// Whether trying again later may succeed (the database was down or busy), as opposed
    /// to a problem that needs a config or schema change.
    pub fn is_retryable(&self) -> bool {
        match self {
            SourceError::Connect { retryable, .. } | SourceError::Query { retryable, .. } => {
                *retryable
            }
            SourceError::Decode { .. } => false,
        }
    }
}

/// Hands rows from a blocking driver (rusqlite, later Oracle's ODPI-C) to the async side in
/// chunks, through a channel holding at most two chunks: the producer blocks when the
/// pipeline is behind, so memory stays bounded, and per-row cost stays free of thread
/// hand-offs.
pub struct Emitter {
    tx: tokio::sync::mpsc::Sender<Result<Vec<Row>, SourceError>>,
    buf: Vec<Row>,
    chunk: usize,
}

impl Emitter {
    /// Queues a row; `false` means the reader has gone away and the producer should stop.
    pub fn emit(&mut self, row: Row) -> bool {
        self.buf.push(row);
        if self.buf.len() >= self.chunk {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
            return self.tx.blocking_send(Ok(full)).is_ok();
        }
        true
    }

    fn finish(mut self, result: Result<(), SourceError>) {
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            if self.tx.blocking_send(Ok(rest)).is_err() {
                return;
            }
        }
        if let Err(e) = result {
            let _ = self.tx.blocking_send(Err(e));
        }
    }
}

/// Runs `produce` on a blocking thread and streams what it emits.
pub fn blocking_rows<F>(chunk: usize, produce: F) -> RowStream<'static>
where
    F: FnOnce(&mut Emitter) -> Result<(), SourceError> + Send + 'static,
{
    use futures_util::StreamExt;
    let chunk = chunk.max(1);
    let (tx, rx) = tokio::sync::mpsc::channel(2);
    tokio::task::spawn_blocking(move || {
        let mut emitter = Emitter {
            tx,
            buf: Vec::with_capacity(chunk),
            chunk,
        };
        let result = produce(&mut emitter);
        emitter.finish(result);
    });
    futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    })
    .flat_map(|item| match item {
        Ok(rows) => futures_util::stream::iter(rows.into_iter().map(Ok)).left_stream(),
        Err(e) => futures_util::stream::once(std::future::ready(Err(e))).right_stream(),
    })
    .boxed()
}

/// Decodes every cell of a row from a sqlx driver with that driver's `decode_cell`, naming
/// the column when a cell cannot be decoded.
fn decode_sqlx_row<R: sqlx::Row>(
    connector: &str,
    row: &R,
    raw_text: bool,
    decode_cell: impl for<'v> Fn(
        <R::Database as sqlx::Database>::ValueRef<'v>,
        bool,
    ) -> Result<Value, String>,
) -> Result<Row, SourceError>
where
    usize: sqlx::ColumnIndex<R>,
{
    use sqlx::Column as _;
    let mut out = Vec::with_capacity(row.len());
    for i in 0..row.len() {
        let fail = |message: String| SourceError::Decode {
            connector: connector.to_string(),
            column: row
                .columns()
                .get(i)
                .map(|c| c.name().to_string())
                .unwrap_or_else(|| format!("#{i}")),
            message,
        };
        let raw = row.try_get_raw(i).map_err(|e| fail(e.to_string()))?;
        out.push(decode_cell(raw, raw_text).map_err(fail)?);
    }
    Ok(out)
}

/// A column type's name as one of the driver's `known` names, without allocating (this
/// runs for every cell); `None` for a type the driver has no special case for.
fn known_type(name: &str, known: &'static [&'static str]) -> Option<&'static str> {
    known.iter().copied().find(|k| *k == name)
}

/// Opens the driver named by the connector's `[source]`.
pub async fn open(connector: &ConnectorConfig) -> Result<Box<dyn SourceDriver>, SourceError> {
    let raw_text = connector.extract.encoding != encoding_rs::UTF_8;
    match &connector.source {
        SourceConfig::Postgres(net) => Ok(Box::new(
            postgres::PostgresSource::open(
                &connector.name,
                net,
                connector.extract.time_zone.name(),
                connector.extract.query_timeout,
                raw_text,
            )
            .await?,
        )),
        SourceConfig::Mysql(net) => Ok(Box::new(
            mysql::MysqlSource::open(
                &connector.name,
                net,
                connector.extract.query_timeout,
                raw_text,
            )
            .await?,
        )),
        SourceConfig::Sqlite { path } => Ok(Box::new(sqlite::SqliteSource::open(
            &connector.name,
            path,
            raw_text,
            connector.extract.fetch_size,
        )?)),
    }
}
