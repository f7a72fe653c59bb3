//! Source drivers and the cursor engine they share.
//!
//! A driver supplies only three things: a [`Dialect`] (quoting, placeholders, row limits),
//! the execution of a [`SelectQuery`] as a bounded stream of rows, and the decoding of its
//! native types into [`Value`]. Everything else — which columns to select, the cursor
//! condition and ordering of each mode, resuming, lag windows — is built once, in
//! [`cursor`], from the connector config. SQL Server and Oracle drivers plug in the same way.

pub mod cursor;
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

/// Opens the driver named by the connector's `[source]`.
pub async fn open(connector: &ConnectorConfig) -> Result<Box<dyn SourceDriver>, SourceError> {
    let raw_text = connector.extract.encoding != encoding_rs::UTF_8;
    match &connector.source {
        SourceConfig::Sqlite { path } => Ok(Box::new(
            sqlite::SqliteSource::open(&connector.name, path, raw_text).await?,
        )),
    }
}
