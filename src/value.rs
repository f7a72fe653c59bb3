//! The typed cell value that every source driver produces and the mapper consumes.
//!
//! Drivers decode their native column types into [`Value`] and nothing else, so the mapper
//! and validator never see a driver-specific type. Exact types are kept exact: decimals stay
//! [`Decimal`], timestamps keep their full precision, and text whose encoding is not yet known
//! stays as bytes until the connector's `encoding` decodes it.

use chrono::{DateTime, FixedOffset, NaiveDate, NaiveDateTime};
use rust_decimal::Decimal;

/// One cell of a source row.
#[derive(Debug, Clone, PartialEq)]
pub enum Value {
    Null,
    Bool(bool),
    Int(i64),
    /// A binary floating-point number (SQLite REAL, FLOAT columns). Converted to a decimal
    /// only through its shortest round-trip text, never by arithmetic.
    Float(f64),
    Decimal(Decimal),
    /// Text known to be valid UTF-8.
    Text(String),
    /// Text (or a blob) whose bytes have not been decoded yet; the connector's `encoding`
    /// decides how.
    Bytes(Vec<u8>),
    Date(NaiveDate),
    /// A timestamp without time zone, in the source's time zone.
    DateTime(NaiveDateTime),
    DateTimeTz(DateTime<FixedOffset>),
}

impl Value {
    pub fn is_null(&self) -> bool {
        matches!(self, Value::Null)
    }

    /// A short name of the variant, for error messages ("expected a date, got integer").
    pub fn kind_name(&self) -> &'static str {
        match self {
            Value::Null => "null",
            Value::Bool(_) => "boolean",
            Value::Int(_) => "integer",
            Value::Float(_) => "floating-point number",
            Value::Decimal(_) => "decimal",
            Value::Text(_) => "text",
            Value::Bytes(_) => "bytes",
            Value::Date(_) => "date",
            Value::DateTime(_) => "timestamp",
            Value::DateTimeTz(_) => "timestamp with time zone",
        }
    }
}
