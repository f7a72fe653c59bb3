//! The field rules of unified-schema.md: validate one source [`Value`] for one [`FieldDef`] and
//! turn it into its normalised wire form ([`Wire`]).
//!
//! Design points:
//! - One broken rule is reported per field, as a [`RuleError`] whose `rule` is a stable dotted
//!   id (used to group rejects in reports) and whose `message` is text for people, *without*
//!   the field name (the caller prefixes it: `id_number: check character is 7, expected X`).
//! - Nothing is silently repaired beyond the normalisations the contract names (trimming,
//!   upper-casing an ID's `x`, upgrading a 15-digit ID, dropping spaces and dashes from
//!   accounts, formatting dates and amounts). In particular amounts are never rounded and never
//!   pass through `f64` arithmetic: a float is converted through its shortest round-trip text.
//! - "Absent" (NULL, or empty after trimming) is not an error for an optional field; it is
//!   `Ok(None)`, and the field is left out of the record's `data`.
//!
//! Rule ids (the `rule` of a [`RuleError`]):
//!
//! | id | meaning |
//! |---|---|
//! | `required.missing` | a required field is NULL or empty |
//! | `value.type` | the source value's type cannot hold this kind (e.g. a boolean for a date) |
//! | `value.float` | a floating-point number cannot carry this value exactly |
//! | `text.encoding` | undecoded bytes that are not valid UTF-8 |
//! | `text.nul` | text contains a NUL character |
//! | `text.too_long` | text longer than the field allows |
//! | `code.too_long` | a code longer than 64 characters |
//! | `code.control_char` | a code contains a control character |
//! | `year.format` | not a 4-digit year |
//! | `year.range` | a year outside 1949 ..= current year + 1 |
//! | `date.format` | not a date in an accepted form |
//! | `date.invalid` | well-formed but not a calendar date (Feb 30) |
//! | `date.range` | a date outside 1949-10-01 ..= today + 1 year |
//! | `amount.format` | not a plain decimal number |
//! | `amount.scale` | more than 2 decimal places (never rounded) |
//! | `amount.negative` | below zero |
//! | `amount.range` | above 999999999999.99 |
//! | `region.format` | not 6 or 12 digits (or not 12 where 12 are required) |
//! | `region.province` | the first two digits are not a province |
//! | `region.outside_agent` | the region is not inside the agent's own region |
//! | `uscc.length` | a USCC that is not 18 characters |
//! | `uscc.charset` | a character outside the GB 32100 charset |
//! | `uscc.check_char` | wrong check character |
//! | `idcard.length` | an ID number that is neither 18 nor 15 characters |
//! | `idcard.format` | an ID number with non-digits where digits belong |
//! | `idcard.province` | the first two digits are not a province |
//! | `idcard.birth_date` | the birth date is not a real date, before 1900 or in the future |
//! | `idcard.check_char` | wrong check character |
//! | `account.format` | an account with characters other than digits, spaces and dashes |
//! | `account.length` | an account with fewer than 8 or more than 32 digits |
//! | `enum.unknown` | not one of the listed values or labels |
//! | `subject_code.format` | a functional subject code that is not 3, 5 or 7 digits |
//! | `period.format` | not `YYYY` or `YYYY-MM` (or an accepted variant) |
//! | `period.range` | a period whose year is outside the year range |
//! | `attachments.format` | not a JSON array of attachment objects |
//! | `attachments.sha256` | an attachment digest that is not 64 hex digits |
//! | `attachments.file_name` | an empty, too long or control-character file name |
//! | `attachments.media_type` | not a `type/subtype` media type |
//! | `attachments.size` | a size that is not an integer ≥ 0 |

use std::borrow::Cow;
use std::fmt;

use chrono::{DateTime, Datelike, Months, NaiveDate, NaiveTime};
use rust_decimal::Decimal;

use crate::schema::{EnumValue, FieldDef, FieldKind};
use crate::value::Value;

/// What a rule needs to know beyond the value.
#[derive(Debug, Clone)]
pub struct RuleContext {
    /// Today in the agent's time zone: the upper bound of dates, years and birth dates.
    pub today: NaiveDate,
    /// The agent's `region_code` (6 or 12 digits); when set, every region field of a record
    /// must lie inside it.
    pub agent_region: Option<String>,
    /// The source's time zone, used to take the date of a timestamp that carries an offset.
    pub time_zone: chrono_tz::Tz,
}

/// A validated, normalised field value as it goes on the wire.
#[derive(Debug, Clone, PartialEq)]
pub enum Wire {
    Str(String),
    Int(i64),
    Json(serde_json::Value),
}

/// One broken rule.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Stable dotted id, e.g. `idcard.check_char` (see the module doc for the list).
    pub rule: &'static str,
    /// Human text without the field name, e.g. `check character is 7, expected X`.
    pub message: String,
}

impl RuleError {
    fn new(rule: &'static str, message: impl Into<String>) -> Self {
        RuleError {
            rule,
            message: message.into(),
        }
    }
}

impl fmt::Display for RuleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for RuleError {}

type Checked = Result<Option<Wire>, RuleError>;

/// Validate and normalise one value for one field.
///
/// `Ok(None)` means the value is absent (NULL, or empty after trimming) and the field is
/// optional. An absent required field gives `required.missing`.
pub fn check_field(def: &FieldDef, value: &Value, ctx: &RuleContext) -> Checked {
    let value = decode_bytes(value)?;
    let value = value.as_ref();
    let checked = match def.kind {
        FieldKind::Code => text_rule(value, "a code", Floats::IfIntegral, check_code)?,
        FieldKind::Text { max_chars } => text_like(value, "text", Floats::IfIntegral, true)?
            .map(|s| check_text(&s, max_chars))
            .transpose()?,
        FieldKind::Year => check_year(value, ctx)?,
        FieldKind::Date => check_date(value, ctx)?,
        FieldKind::Amount => check_amount(value)?,
        FieldKind::Region { twelve_digits } => {
            text_rule(value, "a region code", Floats::IfIntegral, |s| {
                check_region(s, twelve_digits, ctx)
            })?
        }
        FieldKind::Uscc => text_rule(
            value,
            "a unified social credit code",
            Floats::Never,
            check_uscc,
        )?,
        FieldKind::Idcard => text_rule(value, "an identity card number", Floats::Never, |s| {
            check_idcard(s, ctx)
        })?,
        FieldKind::Account => text_rule(value, "an account number", Floats::Never, check_account)?,
        FieldKind::Enum(values) => {
            text_rule(value, "one of the listed values", Floats::IfIntegral, |s| {
                check_enum(s, values)
            })?
        }
        FieldKind::SubjectCode => text_rule(
            value,
            "a functional subject code",
            Floats::IfIntegral,
            check_subject_code,
        )?,
        FieldKind::Period => text_rule(value, "a period", Floats::IfIntegral, |s| {
            check_period(s, ctx)
        })?,
        FieldKind::Attachments => check_attachments(value)?,
    };
    match checked {
        None if def.required => Err(RuleError::new(
            "required.missing",
            "required field is empty",
        )),
        other => Ok(other),
    }
}

// ---------------------------------------------------------------------------------------------
// Input conversion
// ---------------------------------------------------------------------------------------------

/// The mapper decodes text (with the connector's `encoding`) before validation; bytes that
/// still arrive here are taken as UTF-8 when they are, and refused otherwise rather than
/// guessed at.
fn decode_bytes(value: &Value) -> Result<Cow<'_, Value>, RuleError> {
    match value {
        Value::Bytes(bytes) => match std::str::from_utf8(bytes) {
            Ok(s) => Ok(Cow::Owned(Value::Text(s.to_owned()))),
            Err(e) => Err(RuleError::new(
                "text.encoding",
                format!(
                    "not valid UTF-8 (invalid byte at offset {}); set the connector's encoding (e.g. gbk) to decode legacy text",
                    e.valid_up_to()
                ),
            )),
        },
        other => Ok(Cow::Borrowed(other)),
    }
}

/// Whether a floating-point source value may stand for a text-like field.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Floats {
    /// Accept integral values below 1e15 (exact in an f64 and printed without exponent).
    IfIntegral,
    /// Always refuse: an 18-digit ID or account stored as a float has already lost digits,
    /// and a USCC has letters, so a float can only be a damaged value.
    Never,
}

fn type_error(what: &str, value: &Value) -> RuleError {
    RuleError::new(
        "value.type",
        format!("expected {what}, got {}", value.kind_name()),
    )
}

/// The trimmed text of a value for a text-like kind, or `None` when absent.
/// `what` names the kind for error messages ("an identity card number").
/// `allow_fraction`: a decimal with a fraction is accepted as its exact text (only free text
/// wants that; for codes a fraction means the column is not what the mapping thinks it is).
fn text_like<'a>(
    value: &'a Value,
    what: &str,
    floats: Floats,
    allow_fraction: bool,
) -> Result<Option<Cow<'a, str>>, RuleError> {
    let text: Cow<'a, str> = match value {
        Value::Null => return Ok(None),
        Value::Text(s) => Cow::Borrowed(s.trim()),
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Decimal(d) => {
            if d.fract().is_zero() || allow_fraction {
                // normalize() drops the scale of DECIMAL(p,s) columns: 430124101001.00 →
                // 430124101001 (and 500.50 → 500.5 for free text).
                Cow::Owned(d.normalize().to_string())
            } else {
                return Err(RuleError::new(
                    "value.type",
                    format!(
                        "expected {what}, got the decimal number {} with a fraction",
                        d.normalize()
                    ),
                ));
            }
        }
        Value::Float(f) => Cow::Owned(float_as_integer_text(*f, what, floats)?),
        Value::Bytes(_)
        | Value::Bool(_)
        | Value::Date(_)
        | Value::DateTime(_)
        | Value::DateTimeTz(_) => return Err(type_error(what, value)),
    };
    if text.is_empty() {
        Ok(None)
    } else {
        Ok(Some(text))
    }
}

/// Apply a text rule to the text of a value (see [`text_like`]); absent stays absent.
fn text_rule(
    value: &Value,
    what: &str,
    floats: Floats,
    check: impl FnOnce(&str) -> Result<Wire, RuleError>,
) -> Checked {
    text_like(value, what, floats, false)?
        .map(|s| check(&s))
        .transpose()
}

fn float_as_integer_text(f: f64, what: &str, floats: Floats) -> Result<String, RuleError> {
    if floats == Floats::Never {
        return Err(RuleError::new(
            "value.float",
            format!(
                "a floating-point number cannot carry {what} exactly (digits are already lost); the source must store it as text"
            ),
        ));
    }
    if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 {
        // Exact: every integer below 2^53 (≈ 9e15) is representable, and Display prints
        // integral floats without exponent or fraction. `+ 0.0` turns -0 into 0.
        Ok(format!("{}", f + 0.0))
    } else {
        Err(RuleError::new(
            "value.float",
            format!(
                "the floating-point number {f} cannot carry {what} exactly; the source must store it as text or an exact decimal"
            ),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Code, text, enum
// ---------------------------------------------------------------------------------------------

const CODE_MAX_CHARS: usize = 64;

fn check_code(s: &str) -> Result<Wire, RuleError> {
    if let Some(c) = s.chars().find(|c| c.is_control()) {
        return Err(RuleError::new(
            "code.control_char",
            format!("contains the control character U+{:04X}", u32::from(c)),
        ));
    }
    let n = s.chars().count();
    if n > CODE_MAX_CHARS {
        return Err(RuleError::new(
            "code.too_long",
            format!("has {n} characters; at most {CODE_MAX_CHARS} are allowed"),
        ));
    }
    Ok(Wire::Str(s.to_owned()))
}

fn check_text(s: &str, max_chars: usize) -> Result<Wire, RuleError> {
    if s.contains('\0') {
        return Err(RuleError::new("text.nul", "contains a NUL character"));
    }
    // Characters, not bytes: a Chinese character is 3 bytes of UTF-8 but one character.
    let n = s.chars().count();
    if n > max_chars {
        return Err(RuleError::new(
            "text.too_long",
            format!("has {n} characters; at most {max_chars} are allowed"),
        ));
    }
    Ok(Wire::Str(s.to_owned()))
}

fn check_enum(s: &str, values: &[EnumValue]) -> Result<Wire, RuleError> {
    match values.iter().find(|v| v.wire == s || v.label == s) {
        Some(v) => Ok(Wire::Str(v.wire.to_owned())),
        None => {
            let accepted: Vec<String> = values
                .iter()
                .map(|v| format!("{} ({})", v.wire, v.label))
                .collect();
            Err(RuleError::new(
                "enum.unknown",
                format!("{s:?} is not one of: {}", accepted.join(", ")),
            ))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Year, date, period
// ---------------------------------------------------------------------------------------------

const FIRST_YEAR: i32 = 1949;

/// 1949-10-01, the founding of the PRC: no record of these funds can be older.
fn first_date() -> NaiveDate {
    NaiveDate::from_ymd_opt(1949, 10, 1).unwrap_or(NaiveDate::MIN)
}

fn last_year(ctx: &RuleContext) -> i32 {
    ctx.today.year() + 1
}

fn year_in_range(year: i64, ctx: &RuleContext) -> Result<i32, RuleError> {
    let last = last_year(ctx);
    match i32::try_from(year) {
        Ok(y) if (FIRST_YEAR..=last).contains(&y) => Ok(y),
        _ => Err(RuleError::new(
            "year.range",
            format!("{year} is outside {FIRST_YEAR}..{last}"),
        )),
    }
}

fn check_year(value: &Value, ctx: &RuleContext) -> Checked {
    let year: i64 = match value {
        Value::Null => return Ok(None),
        Value::Int(i) => *i,
        Value::Decimal(d) => match i64::try_from(d.normalize()) {
            Ok(i) if d.fract().is_zero() => i,
            _ => {
                return Err(RuleError::new(
                    "year.format",
                    format!("{} is not a year", d.normalize()),
                ));
            }
        },
        // Spreadsheets hand years over as floats; 2024.0 is exact.
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 && f.abs() < 1e15 => *f as i64,
        Value::Float(f) => return Err(RuleError::new("year.format", format!("{f} is not a year"))),
        Value::Text(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            // "2024" or, as often written in Chinese forms, "2024年".
            let digits = s.strip_suffix('年').unwrap_or(s);
            match parse_digits(digits, 4) {
                Some(y) => i64::from(y),
                None => {
                    return Err(RuleError::new(
                        "year.format",
                        format!("{s:?} is not a 4-digit year"),
                    ));
                }
            }
        }
        Value::Bytes(_)
        | Value::Bool(_)
        | Value::Date(_)
        | Value::DateTime(_)
        | Value::DateTimeTz(_) => return Err(type_error("a year", value)),
    };
    let year = year_in_range(year, ctx)?;
    Ok(Some(Wire::Int(i64::from(year))))
}

/// `s` as a number when it is exactly `len` ASCII digits.
fn parse_digits(s: &str, len: usize) -> Option<u32> {
    if s.len() == len && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// `s` as a number when it is 1 to `max_len` ASCII digits.
fn parse_short_digits(s: &str, max_len: usize) -> Option<u32> {
    if (1..=max_len).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

fn check_date(value: &Value, ctx: &RuleContext) -> Checked {
    let date = match value {
        Value::Null => return Ok(None),
        Value::Date(d) => *d,
        Value::DateTime(dt) => dt.date(),
        // The calendar day of an instant depends on where you stand: take it in the source's zone.
        Value::DateTimeTz(dt) => dt.with_timezone(&ctx.time_zone).date_naive(),
        Value::Text(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            parse_date_text(s, ctx)?
        }
        Value::Int(i) => date_from_integer(*i)?,
        Value::Decimal(d) if d.fract().is_zero() => match i64::try_from(*d) {
            Ok(i) => date_from_integer(i)?,
            Err(_) => return Err(RuleError::new("date.format", format!("{d} is not a date"))),
        },
        Value::Decimal(_) | Value::Float(_) | Value::Bytes(_) | Value::Bool(_) => {
            return Err(type_error("a date", value));
        }
    };
    let first = first_date();
    let last = ctx
        .today
        .checked_add_months(Months::new(12))
        .unwrap_or(NaiveDate::MAX);
    if date < first {
        return Err(RuleError::new(
            "date.range",
            format!("{date} is before {first}"),
        ));
    }
    if date > last {
        return Err(RuleError::new(
            "date.range",
            format!("{date} is more than a year after today (latest allowed {last})"),
        ));
    }
    Ok(Some(Wire::Str(date.to_string())))
}

/// An integer date such as 20240105 (YYYYMMDD), as some systems store dates.
fn date_from_integer(i: i64) -> Result<NaiveDate, RuleError> {
    let s = i.to_string();
    if s.len() != 8 || i < 0 {
        return Err(RuleError::new(
            "date.format",
            format!("the integer {i} is not a date in YYYYMMDD form"),
        ));
    }
    ymd_date(&s[..4], &s[4..6], &s[6..])
}

/// A calendar date from textual year, month and day parts, which the caller has already cut
/// out of a well-formed text: a failure here is a non-existent date, such as 2023-02-29.
fn ymd_date(y: &str, m: &str, d: &str) -> Result<NaiveDate, RuleError> {
    let (year, month, day) = match (
        parse_digits(y, 4),
        parse_short_digits(m, 2),
        parse_short_digits(d, 2),
    ) {
        (Some(y), Some(m), Some(d)) => (y, m, d),
        _ => {
            return Err(RuleError::new(
                "date.format",
                format!("{y}-{m}-{d} is not a date"),
            ));
        }
    };
    // parse_digits(_, 4) returns at most 9999, so the cast cannot wrap.
    NaiveDate::from_ymd_opt(year as i32, month, day).ok_or_else(|| {
        RuleError::new(
            "date.invalid",
            format!("{year:04}-{month:02}-{day:02} is not a real calendar date"),
        )
    })
}

/// Accepted date texts (what legacy systems and spreadsheets commonly produce):
/// `YYYY-MM-DD`, `YYYY/MM/DD`, `YYYY.MM.DD` (month and day may have one digit, e.g.
/// `2024/1/5` as Excel writes it), `YYYYMMDD`, `YYYY年M月D日`, and any of the separated forms
/// followed by a time (`HH:MM[:SS[.f]]`, after a space or `T`), whose date is taken. A
/// timestamp with an offset (RFC 3339, `…+08:00` or `Z`) is converted to the source time zone
/// first.
fn parse_date_text(s: &str, ctx: &RuleContext) -> Result<NaiveDate, RuleError> {
    let format_error = || {
        RuleError::new(
            "date.format",
            format!(
                "{s:?} is not a date (expected YYYY-MM-DD, YYYY/MM/DD, YYYYMMDD or YYYY年M月D日)"
            ),
        )
    };
    // The common case first, without trying every timestamp layout (this runs per row).
    let b = s.as_bytes();
    if b.len() == 10 && b[4] == b'-' && b[7] == b'-' {
        return ymd_date(&s[..4], &s[5..7], &s[8..]).map_err(|e| {
            if e.rule == "date.format" {
                format_error()
            } else {
                e
            }
        });
    }
    // Timestamps with an offset: RFC 3339 (also with a space for the T), and the variants
    // databases print (`+0800`, or a space before the offset).
    let with_offset = DateTime::parse_from_rfc3339(s).ok().or_else(|| {
        [
            "%Y-%m-%d %H:%M:%S%.f%z",
            "%Y-%m-%dT%H:%M:%S%.f%z",
            "%Y-%m-%d %H:%M:%S%.f %z",
        ]
        .iter()
        .find_map(|f| DateTime::parse_from_str(s, f).ok())
    });
    if let Some(dt) = with_offset {
        return Ok(dt.with_timezone(&ctx.time_zone).date_naive());
    }
    if let Some(rest) = s.strip_suffix('日') {
        let (y, rest) = rest.split_once('年').ok_or_else(format_error)?;
        let (m, d) = rest.split_once('月').ok_or_else(format_error)?;
        return ymd_date(y, m, d).map_err(|e| {
            if e.rule == "date.format" {
                format_error()
            } else {
                e
            }
        });
    }
    let (date_part, time_part) = match s.find([' ', 'T']) {
        Some(i) => (&s[..i], Some(s[i + 1..].trim_start())),
        None => (s, None),
    };
    if let Some(time) = time_part {
        let valid_time = ["%H:%M:%S%.f", "%H:%M"]
            .iter()
            .any(|f| NaiveTime::parse_from_str(time, f).is_ok());
        if !valid_time {
            return Err(format_error());
        }
    }
    if date_part.len() == 8 && date_part.bytes().all(|b| b.is_ascii_digit()) {
        return ymd_date(&date_part[..4], &date_part[4..6], &date_part[6..]);
    }
    let sep = date_part
        .chars()
        .find(|c| !c.is_ascii_digit())
        .filter(|c| matches!(c, '-' | '/' | '.'))
        .ok_or_else(format_error)?;
    let parts: Vec<&str> = date_part.split(sep).collect();
    match parts.as_slice() {
        [y, m, d] => ymd_date(y, m, d).map_err(|e| {
            if e.rule == "date.format" {
                format_error()
            } else {
                e
            }
        }),
        _ => Err(format_error()),
    }
}

/// `YYYY` or `YYYY-MM`; also `YYYY-M`, `YYYYMM` (as integer columns hold it), `YYYY年` and
/// `YYYY年M月`, all normalised to `YYYY` or `YYYY-MM`.
fn check_period(s: &str, ctx: &RuleContext) -> Result<Wire, RuleError> {
    let format_error = || {
        RuleError::new(
            "period.format",
            format!("{s:?} is not a period (expected YYYY or YYYY-MM)"),
        )
    };
    let (year, month) = if let Some(y) = parse_digits(s, 4) {
        (y, None)
    } else if let Some(y) = s.strip_suffix('年').and_then(|y| parse_digits(y, 4)) {
        (y, None)
    } else if s.len() == 6 && s.bytes().all(|b| b.is_ascii_digit()) {
        (
            parse_digits(&s[..4], 4).ok_or_else(format_error)?,
            parse_digits(&s[4..], 2),
        )
    } else {
        let (y, m) = match s.strip_suffix('月') {
            Some(rest) => rest.split_once('年'),
            None => s.split_once('-'),
        }
        .ok_or_else(format_error)?;
        (
            parse_digits(y, 4).ok_or_else(format_error)?,
            Some(parse_short_digits(m, 2).ok_or_else(format_error)?),
        )
    };
    if let Some(m) = month
        && !(1..=12).contains(&m)
    {
        return Err(RuleError::new(
            "period.format",
            format!("month {m} of {s:?} is not 01..12"),
        ));
    }
    let last = last_year(ctx);
    if !(FIRST_YEAR..=last).contains(&(year as i32)) {
        return Err(RuleError::new(
            "period.range",
            format!("year {year} is outside {FIRST_YEAR}..{last}"),
        ));
    }
    Ok(Wire::Str(match month {
        Some(m) => format!("{year:04}-{m:02}"),
        None => format!("{year:04}"),
    }))
}

// ---------------------------------------------------------------------------------------------
// Amount
// ---------------------------------------------------------------------------------------------

/// 999999999999.99 yuan, the largest amount the contract allows.
fn max_amount() -> Decimal {
    Decimal::new(99_999_999_999_999, 2)
}

/// Every source type is turned into decimal *text* and parsed exactly: a Decimal prints
/// exactly, an integer too, and a float prints its shortest round-trip text (0.1 → "0.1"), so
/// no value ever goes through binary floating-point arithmetic.
fn check_amount(value: &Value) -> Checked {
    let text: Cow<'_, str> = match value {
        Value::Null => return Ok(None),
        Value::Text(s) => {
            let s = s.trim();
            if s.is_empty() {
                return Ok(None);
            }
            Cow::Borrowed(s)
        }
        Value::Int(i) => Cow::Owned(i.to_string()),
        Value::Decimal(d) => Cow::Owned(d.to_string()),
        Value::Float(f) if f.is_finite() => Cow::Owned(format!("{f}")),
        Value::Float(f) => {
            return Err(RuleError::new(
                "amount.format",
                format!("{f} is not a finite number"),
            ));
        }
        Value::Bytes(_)
        | Value::Bool(_)
        | Value::Date(_)
        | Value::DateTime(_)
        | Value::DateTimeTz(_) => return Err(type_error("an amount", value)),
    };
    parse_amount(&text).map(|s| Some(Wire::Str(s)))
}

/// Validate a plain decimal text (optional sign, digits, optional point and digits) and
/// return it with exactly two decimals.
fn parse_amount(s: &str) -> Result<String, RuleError> {
    let format_error = || {
        RuleError::new(
            "amount.format",
            format!(
                "{s:?} is not a plain decimal number (digits with an optional decimal point, no thousands separators)"
            ),
        )
    };
    let (negative, unsigned) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (int_part, frac_part) = unsigned.split_once('.').unwrap_or((unsigned, ""));
    let all_digits = |p: &str| p.bytes().all(|b| b.is_ascii_digit());
    if int_part.is_empty()
        || !all_digits(int_part)
        || !all_digits(frac_part)
        || unsigned.ends_with('.')
    {
        return Err(format_error());
    }
    // Normalise before judging: DECIMAL(19,4) sends 12.5000, which has only one real decimal.
    // Done on the text so that no length of input can overflow the decimal type.
    let int_part = match int_part.trim_start_matches('0') {
        "" => "0",
        digits => digits,
    };
    let frac_part = frac_part.trim_end_matches('0');
    let is_zero = int_part == "0" && frac_part.is_empty();
    let mut shown = format!(
        "{}{int_part}{}{frac_part}",
        if negative && !is_zero { "-" } else { "" },
        if frac_part.is_empty() { "" } else { "." }
    );
    // Keep messages readable for absurd inputs such as the float 5e-324 (324 decimals).
    if shown.len() > 40 {
        shown.truncate(40);
        shown.push('…');
    }
    if frac_part.len() > 2 {
        return Err(RuleError::new(
            "amount.scale",
            format!(
                "{shown} has {} decimal places; at most 2 are allowed (not rounded)",
                frac_part.len()
            ),
        ));
    }
    if negative && !is_zero {
        return Err(RuleError::new(
            "amount.negative",
            format!("{shown} is negative; amounts must be ≥ 0"),
        ));
    }
    let range_error = || {
        RuleError::new(
            "amount.range",
            format!("{shown} is above the maximum {}", max_amount()),
        )
    };
    // More than 12 integer digits is out of range whatever follows; checking the length first
    // keeps arbitrarily long input away from the decimal type (28 digits at most).
    if int_part.len() > 12 {
        return Err(range_error());
    }
    // At most 12 + 2 digits: always representable exactly, so parsing cannot fail here, and
    // always ≤ 999999999999.99; the comparison below states the rule rather than relying on
    // that arithmetic.
    let amount = Decimal::from_str_exact(&format!("{int_part}.{frac_part:0<2}"))
        .map_err(|_| format_error())?;
    if amount > max_amount() {
        return Err(range_error());
    }
    // The text has exactly 2 decimals (scale 2), and Decimal keeps the scale when printed.
    Ok(amount.to_string())
}

// ---------------------------------------------------------------------------------------------
// Region
// ---------------------------------------------------------------------------------------------

/// Province-level codes of GB/T 2260 (first two digits of a region or ID number).
fn valid_province(two_digits: &str) -> bool {
    matches!(
        two_digits.parse::<u8>(),
        Ok(11..=15 | 21..=23 | 31..=37 | 41..=46 | 50..=54 | 61..=65 | 71 | 81 | 82)
    )
}

fn check_region(s: &str, twelve_digits: bool, ctx: &RuleContext) -> Result<Wire, RuleError> {
    if !s.bytes().all(|b| b.is_ascii_digit()) {
        return Err(RuleError::new(
            "region.format",
            format!("{s:?} must be digits only"),
        ));
    }
    let n = s.len();
    if twelve_digits && n != 12 {
        return Err(RuleError::new(
            "region.format",
            format!("{s} has {n} digits; a 12-digit village-level code is required"),
        ));
    }
    if n != 6 && n != 12 {
        return Err(RuleError::new(
            "region.format",
            format!("{s} has {n} digits; expected 6 or 12"),
        ));
    }
    if !valid_province(&s[..2]) {
        return Err(RuleError::new(
            "region.province",
            format!("{s} starts with {}, which is not a province code", &s[..2]),
        ));
    }
    if let Some(agent) = ctx.agent_region.as_deref().map(str::trim) {
        let prefix = containment_prefix(agent);
        if !s.starts_with(prefix) {
            return Err(RuleError::new(
                "region.outside_agent",
                format!("{s} is outside the agent's region {agent}"),
            ));
        }
    }
    Ok(Wire::Str(s.to_owned()))
}

/// The prefix that every code inside the region `agent` starts with.
///
/// A region code is a hierarchy of digit groups: province 2, city 2, county 2 (the 6-digit
/// code), then township 3 and village 3 (the 12-digit statistical code). A group of zeros at
/// the end means "all of the level above", so zero groups are dropped from the end, level by
/// level, stopping at the first non-zero group and never dropping the province:
/// `430124` → `430124`, `430100` → `4301`, `430000` → `43`, `430124101000` → `430124101`,
/// `430124000000` → `430124`. Groups, not digit pairs, matter: `430124100000` (township 100)
/// must stay `430124100`, where stripping "00" pairs would wrongly give `4301241`.
/// A code of another length (rejected by configuration validation) is used as it is.
fn containment_prefix(agent: &str) -> &str {
    let bounds: &[usize] = match agent.len() {
        6 => &[2, 4, 6],
        12 => &[2, 4, 6, 9, 12],
        _ => return agent,
    };
    let mut end = agent.len();
    for pair in bounds.windows(2).rev() {
        let (start, group_end) = (pair[0], pair[1]);
        if group_end == end && agent[start..end].bytes().all(|b| b == b'0') {
            end = start;
        } else {
            break;
        }
    }
    &agent[..end]
}

// ---------------------------------------------------------------------------------------------
// USCC (GB 32100-2015)
// ---------------------------------------------------------------------------------------------

const USCC_CHARSET: &[u8; 31] = b"0123456789ABCDEFGHJKLMNPQRTUWXY";
const USCC_WEIGHTS: [u32; 17] = [
    1, 3, 9, 27, 19, 26, 16, 17, 20, 29, 25, 13, 8, 24, 10, 30, 28,
];

fn check_uscc(s: &str) -> Result<Wire, RuleError> {
    let code = s.to_ascii_uppercase();
    let n = code.chars().count();
    if n != 18 {
        return Err(RuleError::new(
            "uscc.length",
            format!("has {n} characters; a unified social credit code has 18"),
        ));
    }
    let mut values = [0u32; 18];
    for (i, c) in code.chars().enumerate() {
        match USCC_CHARSET.iter().position(|&b| char::from(b) == c) {
            Some(v) => values[i] = v as u32,
            None => {
                return Err(RuleError::new(
                    "uscc.charset",
                    format!(
                        "character {c:?} at position {} is not allowed (0-9 and A-Z without I, O, S, V, Z)",
                        i + 1
                    ),
                ));
            }
        }
    }
    let sum: u32 = values.iter().zip(USCC_WEIGHTS).map(|(v, w)| v * w).sum();
    let expected = char::from(USCC_CHARSET[((31 - sum % 31) % 31) as usize]);
    let actual = char::from(USCC_CHARSET[values[17] as usize]);
    if actual != expected {
        return Err(RuleError::new(
            "uscc.check_char",
            format!("check character is {actual}, expected {expected}"),
        ));
    }
    Ok(Wire::Str(code))
}

// ---------------------------------------------------------------------------------------------
// Identity card number (GB 11643-1999)
// ---------------------------------------------------------------------------------------------

const ID_WEIGHTS: [u32; 17] = [7, 9, 10, 5, 8, 4, 2, 1, 6, 3, 7, 9, 10, 5, 8, 4, 2];
const ID_CHECK_CHARS: &[u8; 11] = b"10X98765432";

/// The ISO 7064 MOD 11-2 check character of the first 17 digits (ASCII digits assumed).
fn idcard_check_char(first17: &[u8]) -> char {
    let sum: u32 = first17
        .iter()
        .zip(ID_WEIGHTS)
        .map(|(b, w)| u32::from(b - b'0') * w)
        .sum();
    char::from(ID_CHECK_CHARS[(sum % 11) as usize])
}

fn check_idcard(s: &str, ctx: &RuleContext) -> Result<Wire, RuleError> {
    let s = s.to_ascii_uppercase();
    let n = s.chars().count();
    let id = match n {
        15 => {
            if !s.bytes().all(|b| b.is_ascii_digit()) {
                return Err(RuleError::new(
                    "idcard.format",
                    "a 15-digit legacy number must be all digits",
                ));
            }
            // Legacy numbers (before 1999) have a 2-digit birth year, always 19xx, and no
            // check character.
            let first17 = format!("{}19{}", &s[..6], &s[6..]);
            let check = idcard_check_char(first17.as_bytes());
            format!("{first17}{check}")
        }
        18 => {
            let bytes = s.as_bytes();
            // n == 18 chars and 18 bytes only when all are ASCII, so byte indexing is safe.
            if s.len() != 18 || !bytes[..17].iter().all(u8::is_ascii_digit) {
                return Err(RuleError::new(
                    "idcard.format",
                    "the first 17 characters must be digits",
                ));
            }
            if !(bytes[17].is_ascii_digit() || bytes[17] == b'X') {
                return Err(RuleError::new(
                    "idcard.format",
                    format!(
                        "the check character {:?} must be a digit or X",
                        char::from(bytes[17])
                    ),
                ));
            }
            s
        }
        _ => {
            return Err(RuleError::new(
                "idcard.length",
                format!("has {n} characters; expected 18 (or a 15-digit legacy number)"),
            ));
        }
    };
    if !valid_province(&id[..2]) {
        return Err(RuleError::new(
            "idcard.province",
            format!(
                "area code starts with {}, which is not a province code",
                &id[..2]
            ),
        ));
    }
    let birth = &id[6..14];
    // All 17 leading characters are digits by now, so only the calendar can refuse.
    let date = ymd_date(&birth[..4], &birth[4..6], &birth[6..]).map_err(|_| {
        RuleError::new(
            "idcard.birth_date",
            format!("birth date {birth} is not a real date"),
        )
    })?;
    if date.year() < 1900 {
        return Err(RuleError::new(
            "idcard.birth_date",
            format!("birth date {birth} is before 1900"),
        ));
    }
    if date > ctx.today {
        return Err(RuleError::new(
            "idcard.birth_date",
            format!("birth date {birth} is in the future"),
        ));
    }
    let expected = idcard_check_char(&id.as_bytes()[..17]);
    let actual = char::from(id.as_bytes()[17]);
    if actual != expected {
        return Err(RuleError::new(
            "idcard.check_char",
            format!("check character is {actual}, expected {expected}"),
        ));
    }
    Ok(Wire::Str(id))
}

// ---------------------------------------------------------------------------------------------
// Account, subject code
// ---------------------------------------------------------------------------------------------

fn check_account(s: &str) -> Result<Wire, RuleError> {
    // The common case (digits only) without rebuilding the string character by character.
    if (8..=32).contains(&s.len()) && s.bytes().all(|b| b.is_ascii_digit()) {
        return Ok(Wire::Str(s.to_string()));
    }
    // Accounts are printed in groups ("6228 4801 2345 6789 012", "6228-4801-…"); the
    // separators carry nothing. Full-width ones come from Chinese input methods.
    let digits: String = s
        .chars()
        .filter(|c| !(c.is_whitespace() || matches!(c, '-' | '－')))
        .collect();
    if let Some(c) = digits.chars().find(|c| !c.is_ascii_digit()) {
        return Err(RuleError::new(
            "account.format",
            format!(
                "contains {c:?}; an account number has only digits (spaces and dashes are ignored)"
            ),
        ));
    }
    let n = digits.len();
    if !(8..=32).contains(&n) {
        return Err(RuleError::new(
            "account.length",
            format!("has {n} digits; expected 8 to 32"),
        ));
    }
    Ok(Wire::Str(digits))
}

fn check_subject_code(s: &str) -> Result<Wire, RuleError> {
    // 类 (3 digits), 款 (5), 项 (7) of the government functional classification.
    if s.bytes().all(|b| b.is_ascii_digit()) && matches!(s.len(), 3 | 5 | 7) {
        Ok(Wire::Str(s.to_owned()))
    } else {
        Err(RuleError::new(
            "subject_code.format",
            format!("{s:?} is not 3, 5 or 7 digits"),
        ))
    }
}

// ---------------------------------------------------------------------------------------------
// Attachments
// ---------------------------------------------------------------------------------------------

const FILE_NAME_MAX_CHARS: usize = 255;

/// A JSON array (in a text value) of `{sha256, file_name, media_type, size}` objects. The
/// output keeps exactly those four keys, with the digest and media type lower-cased.
fn check_attachments(value: &Value) -> Checked {
    let text = match value {
        Value::Null => return Ok(None),
        Value::Text(s) => s.trim(),
        other => return Err(type_error("a JSON array of attachments", other)),
    };
    if text.is_empty() {
        return Ok(None);
    }
    let format_error = |detail: String| {
        RuleError::new(
            "attachments.format",
            format!("{detail}; expected a JSON array of {{sha256, file_name, media_type, size}}"),
        )
    };
    let parsed: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format_error(format!("not valid JSON ({e})")))?;
    let items = parsed
        .as_array()
        .ok_or_else(|| format_error("not a JSON array".to_owned()))?;
    if items.is_empty() {
        return Ok(None);
    }
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let at = i + 1;
        let obj = item
            .as_object()
            .ok_or_else(|| format_error(format!("attachment {at} is not an object")))?;
        if let Some(key) = obj
            .keys()
            .find(|k| !matches!(k.as_str(), "sha256" | "file_name" | "media_type" | "size"))
        {
            return Err(format_error(format!(
                "attachment {at} has the unknown key {key:?}"
            )));
        }
        let text_of = |key: &str| obj.get(key).and_then(serde_json::Value::as_str);

        let sha256 = text_of("sha256")
            .filter(|s| s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit()))
            .ok_or_else(|| {
                RuleError::new(
                    "attachments.sha256",
                    format!("attachment {at}: sha256 must be 64 hex digits"),
                )
            })?
            .to_ascii_lowercase();

        let file_name = text_of("file_name").unwrap_or("");
        let name_chars = file_name.chars().count();
        if file_name.trim().is_empty()
            || name_chars > FILE_NAME_MAX_CHARS
            || file_name.chars().any(char::is_control)
        {
            return Err(RuleError::new(
                "attachments.file_name",
                format!(
                    "attachment {at}: file_name must be 1 to {FILE_NAME_MAX_CHARS} characters without control characters"
                ),
            ));
        }

        let media_type = text_of("media_type")
            .filter(|m| valid_media_type(m))
            .ok_or_else(|| {
                RuleError::new(
                    "attachments.media_type",
                    format!("attachment {at}: media_type must look like image/jpeg"),
                )
            })?
            .to_ascii_lowercase();

        let size = obj
            .get("size")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| {
                RuleError::new(
                    "attachments.size",
                    format!("attachment {at}: size must be an integer ≥ 0"),
                )
            })?;

        out.push(serde_json::json!({
            "sha256": sha256,
            "file_name": file_name,
            "media_type": media_type,
            "size": size,
        }));
    }
    Ok(Some(Wire::Json(serde_json::Value::Array(out))))
}

/// `type/subtype` with RFC 6838 name characters, no parameters.
fn valid_media_type(m: &str) -> bool {
    let name_ok = |p: &str| {
        !p.is_empty()
            && p.len() <= 127
            && p.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&^_.+-".contains(&b))
    };
    matches!(m.split_once('/'), Some((t, s)) if name_ok(t) && name_ok(s))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{FixedOffset, NaiveDateTime, TimeZone};
    use std::str::FromStr;

    fn today() -> NaiveDate {
        NaiveDate::from_ymd_opt(2026, 12, 4).unwrap()
    }

    fn ctx() -> RuleContext {
        RuleContext {
            today: today(),
            agent_region: None,
            time_zone: chrono_tz::Asia::Shanghai,
        }
    }

    fn ctx_in(agent: &str) -> RuleContext {
        RuleContext {
            agent_region: Some(agent.to_owned()),
            ..ctx()
        }
    }

    fn t(s: &str) -> Value {
        Value::Text(s.to_owned())
    }

    fn s(s: &str) -> Wire {
        Wire::Str(s.to_owned())
    }

    fn dec(s: &str) -> Value {
        Value::Decimal(Decimal::from_str(s).unwrap())
    }

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    fn field(kind: FieldKind, required: bool) -> FieldDef {
        FieldDef {
            name: "field_name",
            label: "字段",
            kind,
            required,
        }
    }

    /// Run a table of valid inputs (with their wire output) and invalid ones (with the rule
    /// they break) against a required field of `kind`.
    fn table(
        kind: FieldKind,
        ctx: &RuleContext,
        valid: &[(Value, Wire)],
        invalid: &[(Value, &str)],
    ) {
        let def = field(kind, true);
        for (input, want) in valid {
            match check_field(&def, input, ctx) {
                Ok(Some(got)) => assert_eq!(&got, want, "{kind:?}: {input:?}"),
                other => panic!("{kind:?}: {input:?} should give {want:?}, got {other:?}"),
            }
        }
        for (input, rule) in invalid {
            match check_field(&def, input, ctx) {
                Err(e) => {
                    assert_eq!(e.rule, *rule, "{kind:?}: {input:?}: {}", e.message);
                    assert!(!e.message.is_empty());
                    assert!(
                        !e.message.contains("field_name"),
                        "the message must not name the field"
                    );
                }
                ok => panic!("{kind:?}: {input:?} should break {rule}, got {ok:?}"),
            }
        }
    }

    /// The error message for one input (which must fail).
    fn message(kind: FieldKind, ctx: &RuleContext, input: Value) -> String {
        check_field(&field(kind, true), &input, ctx)
            .unwrap_err()
            .message
    }

    // --- identity card -------------------------------------------------------------------

    /// ISO 7064 MOD 11-2 by its recursive definition (not the weight table the code uses),
    /// so the test does not just repeat the implementation.
    fn iso7064_mod11_2(first17: &str) -> char {
        let p = first17
            .bytes()
            .fold(0u32, |p, b| ((p + u32::from(b - b'0')) * 2) % 11);
        match (12 - p) % 11 {
            10 => 'X',
            c => char::from_digit(c, 10).unwrap(),
        }
    }

    fn with_check(first17: &str) -> String {
        format!("{first17}{}", iso7064_mod11_2(first17))
    }

    #[test]
    fn independent_check_digit_agrees_with_known_numbers() {
        // 11010519491231002X is the textbook example of GB 11643-1999.
        assert_eq!(iso7064_mod11_2("11010519491231002"), 'X');
        // By hand: 1*7+1*9+0*10+1*5+0*8+5*4+1*2+9*1+4*6+9*3+1*7+2*9+3*10+1*5+0*8+0*4+2*2
        //   = 7+9+0+5+0+20+2+9+24+27+7+18+30+5+0+0+4 = 167; 167 mod 11 = 2 → "10X98765432"[2] = X.
        assert_eq!(167 % 11, 2);
    }

    #[test]
    fn idcard() {
        let c = ctx();
        let valid_a = with_check("43012419800101123");
        let valid_0 = with_check("44030420001231000");
        let valid = [
            (t("11010519491231002X"), s("11010519491231002X")),
            (t("11010519491231002x"), s("11010519491231002X")),
            (t(" 11010519491231002X\u{3000}"), s("11010519491231002X")),
            (t("110105491231002"), s("11010519491231002X")),
            (t(&valid_a), s(&valid_a)),
            (t(&valid_0), s(&valid_0)),
            // An ID born today is fine; 1900-01-01 is the earliest birth date.
            (
                t(&with_check("43012420261204001")),
                s(&with_check("43012420261204001")),
            ),
            (
                t(&with_check("43012419000101001")),
                s(&with_check("43012419000101001")),
            ),
            (
                Value::Bytes(b"11010519491231002X".to_vec()),
                s("11010519491231002X"),
            ),
        ];
        let mut wrong = valid_a.clone();
        wrong.replace_range(17.., if valid_a.ends_with('7') { "8" } else { "7" });
        let invalid = [
            (t("11010519491231002"), "idcard.length"),
            (t("1101051949123100211"), "idcard.length"),
            (t("11010519491231002Y"), "idcard.format"),
            (t("1101051949123100AX"), "idcard.format"),
            (t("11010549123100A"), "idcard.format"),
            (t("11010519491231002１"), "idcard.format"), // full-width digit
            (t(&wrong), "idcard.check_char"),
            (t("110105194912310021"), "idcard.check_char"),
            (t(&with_check("43012419810230123")), "idcard.birth_date"), // Feb 30
            (t(&with_check("43012419811301123")), "idcard.birth_date"), // month 13
            (t(&with_check("43012418991231123")), "idcard.birth_date"), // before 1900
            (t(&with_check("43012420261205123")), "idcard.birth_date"), // tomorrow
            (t(&with_check("99012419800101123")), "idcard.province"),
            (t(&with_check("00012419800101123")), "idcard.province"),
            (Value::Float(1.1010519491231002e17), "value.float"),
            (Value::Float(110105491231002.0), "value.float"),
            (Value::Bool(true), "value.type"),
            (Value::Date(date(1949, 12, 31)), "value.type"),
            (Value::Null, "required.missing"),
            (t("   "), "required.missing"),
        ];
        table(FieldKind::Idcard, &c, &valid, &invalid);
        assert_eq!(
            message(FieldKind::Idcard, &c, t("110105194912310027")),
            "check character is 7, expected X"
        );
        assert_eq!(
            message(
                FieldKind::Idcard,
                &c,
                t("11010519491231002X".replace('X', "3").as_str())
            ),
            "check character is 3, expected X"
        );
    }

    #[test]
    fn int_idcard_is_checked_as_digits() {
        // An Int keeps every digit (unlike a float), so an ID stored in an integer column is
        // usable; a 15-digit legacy number stored that way is upgraded like its text.
        let got = check_field(
            &field(FieldKind::Idcard, true),
            &Value::Int(110105491231002),
            &ctx(),
        );
        assert_eq!(got, Ok(Some(s("11010519491231002X"))));
    }

    // --- USCC ----------------------------------------------------------------------------

    #[test]
    fn uscc() {
        let c = ctx();
        let valid = [
            (t("91350100M000100Y43"), s("91350100M000100Y43")),
            (t("91350100m000100y43"), s("91350100M000100Y43")),
            (t(" 91110000802100433B "), s("91110000802100433B")),
        ];
        let invalid = [
            (t("91350100M000100Y45"), "uscc.check_char"),
            (t("91350100M000100Y4"), "uscc.length"),
            (t("91350100M000100Y433"), "uscc.length"),
            (t("91350100I000100Y43"), "uscc.charset"), // I is not in the charset
            (t("91350100M000100Y4Z"), "uscc.charset"),
            (Value::Float(9.135e17), "value.float"),
            (Value::Null, "required.missing"),
        ];
        table(FieldKind::Uscc, &c, &valid, &invalid);
        assert_eq!(
            message(FieldKind::Uscc, &c, t("91350100M000100Y45")),
            "check character is 5, expected 3"
        );
    }

    // --- amount --------------------------------------------------------------------------

    #[test]
    fn amount() {
        let c = ctx();
        let valid = [
            (t("0"), s("0.00")),
            (t("12.5"), s("12.50")),
            (t("12.50"), s("12.50")),
            (t("12.5000"), s("12.50")),
            (t(" +1234.5 "), s("1234.50")),
            (t("-0"), s("0.00")),
            (t("-0.000"), s("0.00")),
            (t("007.10"), s("7.10")),
            (t("999999999999.99"), s("999999999999.99")),
            (
                t("999999999999.9900000000000000000000000000000000"),
                s("999999999999.99"),
            ),
            (Value::Int(0), s("0.00")),
            (Value::Int(1500), s("1500.00")),
            (Value::Float(0.1), s("0.10")),
            (Value::Float(1234.5), s("1234.50")),
            (Value::Float(-0.0), s("0.00")),
            (Value::Float(1e11), s("100000000000.00")),
            (dec("12.5000"), s("12.50")), // DECIMAL(19,4)
            (dec("1234.5600"), s("1234.56")),
            (dec("0.0000"), s("0.00")),
            (
                Value::Decimal(Decimal::new(99_999_999_999_999, 2)),
                s("999999999999.99"),
            ),
        ];
        let invalid = [
            (t("1234.567"), "amount.scale"),
            (t("0.001"), "amount.scale"),
            (dec("12.3456"), "amount.scale"),
            (Value::Float(0.1 + 0.2), "amount.scale"), // 0.30000000000000004: not rounded
            (Value::Float(1e-7), "amount.scale"),
            (Value::Float(5e-324), "amount.scale"),
            (t("-1"), "amount.negative"),
            (Value::Int(-5), "amount.negative"),
            (dec("-0.01"), "amount.negative"),
            (t("1000000000000.00"), "amount.range"),
            (t("1000000000000000000000000000000000"), "amount.range"),
            (Value::Float(1e300), "amount.range"),
            (Value::Int(i64::MAX), "amount.range"),
            (t("1,234.50"), "amount.format"),
            (t("12."), "amount.format"),
            (t(".5"), "amount.format"),
            (t("1e5"), "amount.format"),
            (t("¥12"), "amount.format"),
            (t("12 元"), "amount.format"),
            (t("--1"), "amount.format"),
            (t("+"), "amount.format"),
            (Value::Float(f64::NAN), "amount.format"),
            (Value::Float(f64::INFINITY), "amount.format"),
            (Value::Bool(false), "value.type"),
            (Value::Date(date(2024, 1, 5)), "value.type"),
            (t(""), "required.missing"),
        ];
        table(FieldKind::Amount, &c, &valid, &invalid);
        assert_eq!(
            message(FieldKind::Amount, &c, t("1234.567")),
            "1234.567 has 3 decimal places; at most 2 are allowed (not rounded)"
        );
        assert_eq!(
            message(FieldKind::Amount, &c, Value::Float(5e-324)),
            format!(
                "0.{}… has 324 decimal places; at most 2 are allowed (not rounded)",
                "0".repeat(38)
            )
        );
        assert_eq!(
            message(FieldKind::Amount, &c, t("-1")),
            "-1 is negative; amounts must be ≥ 0"
        );
    }

    // --- date ----------------------------------------------------------------------------

    #[test]
    fn date_rule() {
        let c = ctx();
        // Latest allowed: today + 1 year.
        let last = "2027-12-04";
        let offset8 = FixedOffset::east_opt(8 * 3600).unwrap();
        let utc = FixedOffset::east_opt(0).unwrap();
        let valid = [
            (t("2024-01-05"), s("2024-01-05")),
            (t("2024/01/05"), s("2024-01-05")),
            (t("2024/1/5"), s("2024-01-05")), // as Excel writes it: accepted
            (t("2024-1-5"), s("2024-01-05")),
            (t("2024.01.05"), s("2024-01-05")),
            (t("20240105"), s("2024-01-05")),
            (t("2024年1月5日"), s("2024-01-05")),
            (t("2024年01月05日"), s("2024-01-05")),
            (t("2024-01-05 13:45:00"), s("2024-01-05")),
            (t("2024-01-05 13:45:00.123"), s("2024-01-05")),
            (t("2024-01-05T13:45:00"), s("2024-01-05")),
            (t("2024/1/5 0:00"), s("2024-01-05")),
            (t("2024-01-05T20:00:00Z"), s("2024-01-06")), // 04:00 in Shanghai
            (t("2024-01-05T20:00:00+08:00"), s("2024-01-05")),
            (t("2024-01-05 20:00:00+00:00"), s("2024-01-06")),
            (t("2024-01-05 20:00:00.5+0000"), s("2024-01-06")),
            (t("2024-01-05 20:00:00 +08:00"), s("2024-01-05")),
            (t("2024-02-29"), s("2024-02-29")),
            (t("1949-10-01"), s("1949-10-01")),
            (t(last), s(last)),
            (Value::Int(20240105), s("2024-01-05")),
            (dec("20240105"), s("2024-01-05")),
            (Value::Date(date(2024, 1, 5)), s("2024-01-05")),
            (
                Value::DateTime(NaiveDateTime::new(
                    date(2024, 1, 5),
                    NaiveTime::from_hms_opt(23, 59, 59).unwrap(),
                )),
                s("2024-01-05"),
            ),
            (
                Value::DateTimeTz(utc.with_ymd_and_hms(2024, 1, 5, 17, 0, 0).unwrap()),
                s("2024-01-06"),
            ),
            (
                Value::DateTimeTz(offset8.with_ymd_and_hms(2024, 1, 5, 7, 0, 0).unwrap()),
                s("2024-01-05"),
            ),
        ];
        let invalid = [
            (t("1949-09-30"), "date.range"),
            (t("2027-12-05"), "date.range"), // today + 1 year + 1 day
            (Value::Date(date(1900, 1, 1)), "date.range"),
            (t("2023-02-29"), "date.invalid"),
            (t("2024-02-30"), "date.invalid"),
            (t("2024-13-01"), "date.invalid"),
            (t("20230229"), "date.invalid"),
            (t("2023年2月29日"), "date.invalid"),
            (Value::Int(20230229), "date.invalid"),
            (t("05/01/2024"), "date.format"),
            (t("2024-01"), "date.format"),
            (t("2024-01-05 25:00"), "date.format"),
            (t("2024/01-05"), "date.format"),
            (t("24-1-5"), "date.format"),
            (t("2024年1月"), "date.format"),
            (t("yesterday"), "date.format"),
            (Value::Int(45296), "date.format"), // an Excel serial is not guessed at
            (Value::Float(45296.0), "value.type"),
            (Value::Bool(true), "value.type"),
            (Value::Null, "required.missing"),
        ];
        table(FieldKind::Date, &c, &valid, &invalid);
    }

    #[test]
    fn date_upper_bound_moves_with_today() {
        // On 29 Feb the bound is 28 Feb of the next year (chrono clamps the month end).
        let c = RuleContext {
            today: date(2028, 2, 29),
            ..ctx()
        };
        table(
            FieldKind::Date,
            &c,
            &[(t("2029-02-28"), s("2029-02-28"))],
            &[(t("2029-03-01"), "date.range")],
        );
    }

    // --- year and period -----------------------------------------------------------------

    #[test]
    fn year() {
        let c = ctx();
        let valid = [
            (Value::Int(2024), Wire::Int(2024)),
            (Value::Int(1949), Wire::Int(1949)),
            (Value::Int(2027), Wire::Int(2027)), // current year + 1
            (t("2024"), Wire::Int(2024)),
            (t(" 2024年 "), Wire::Int(2024)),
            (dec("2024"), Wire::Int(2024)),
            (dec("2024.00"), Wire::Int(2024)),
            (Value::Float(2024.0), Wire::Int(2024)),
        ];
        let invalid = [
            (Value::Int(1948), "year.range"),
            (Value::Int(2028), "year.range"),
            (Value::Int(i64::MAX), "year.range"),
            (t("0024"), "year.range"),
            (t("24"), "year.format"),
            (t("2024-01"), "year.format"),
            (dec("2024.5"), "year.format"),
            (Value::Float(2024.5), "year.format"),
            (Value::Date(date(2024, 1, 1)), "value.type"),
            (Value::Null, "required.missing"),
        ];
        table(FieldKind::Year, &c, &valid, &invalid);
    }

    #[test]
    fn period() {
        let c = ctx();
        let valid = [
            (t("2024"), s("2024")),
            (t("2024-03"), s("2024-03")),
            (t("2024-3"), s("2024-03")),
            (t("202403"), s("2024-03")),
            (Value::Int(202403), s("2024-03")),
            (Value::Int(2024), s("2024")),
            (t("2024年"), s("2024")),
            (t("2024年3月"), s("2024-03")),
            (t("2027-12"), s("2027-12")),
        ];
        let invalid = [
            (t("2024-13"), "period.format"),
            (t("202400"), "period.format"),
            (t("2024-00"), "period.format"),
            (t("2024/03"), "period.format"),
            (t("2024-03-01"), "period.format"),
            (t("24-03"), "period.format"),
            (t("1948"), "period.range"),
            (t("2028-01"), "period.range"),
            (Value::Date(date(2024, 3, 1)), "value.type"),
        ];
        table(FieldKind::Period, &c, &valid, &invalid);
    }

    // --- region --------------------------------------------------------------------------

    #[test]
    fn region_format_and_province() {
        let c = ctx();
        let valid = [
            (t("430124"), s("430124")),
            (t("430124101001"), s("430124101001")),
            (t("110101"), s("110101")),
            (t("820000"), s("820000")),
            (Value::Int(430124), s("430124")),
            (dec("430124101001.00"), s("430124101001")),
            (Value::Float(430124101001.0), s("430124101001")),
        ];
        let invalid = [
            (t("990124"), "region.province"),
            (t("160124"), "region.province"),
            (t("43012"), "region.format"),
            (t("4301241010"), "region.format"),
            (t("43012A"), "region.format"),
            (t("430-124"), "region.format"),
            (dec("430124.5"), "value.type"),
            (Value::Float(430124.5), "value.float"),
            (Value::Bool(true), "value.type"),
        ];
        table(
            FieldKind::Region {
                twelve_digits: false,
            },
            &c,
            &valid,
            &invalid,
        );
        table(
            FieldKind::Region {
                twelve_digits: true,
            },
            &c,
            &[(t("430124101001"), s("430124101001"))],
            &[
                (t("430124"), "region.format"),
                (t("990124101001"), "region.province"),
            ],
        );
    }

    #[test]
    fn region_inside_agent() {
        let twelve = FieldKind::Region {
            twelve_digits: true,
        };
        let six = FieldKind::Region {
            twelve_digits: false,
        };
        // (agent, region inside, region outside)
        let cases = [
            ("430124", "430124101001", "430225101001"),
            ("430100", "430124101001", "430225101001"),
            ("430000", "430225101001", "440225101001"),
            ("430124101000", "430124101001", "430124102001"),
            ("430124100000", "430124100001", "430124101001"), // township 100 is not "00" pairs
            ("430124000000", "430124999001", "430125101001"),
            ("430124101001", "430124101001", "430124101002"),
        ];
        for (agent, inside, outside) in cases {
            let c = ctx_in(agent);
            table(
                twelve,
                &c,
                &[(t(inside), s(inside))],
                &[(t(outside), "region.outside_agent")],
            );
        }
        // A 6-digit record region against a county agent, and a county record against a
        // township agent (the county is larger than the agent's township).
        table(
            six,
            &ctx_in("430124"),
            &[(t("430124"), s("430124"))],
            &[(t("430225"), "region.outside_agent")],
        );
        table(
            six,
            &ctx_in("430124101000"),
            &[],
            &[(t("430124"), "region.outside_agent")],
        );
        assert_eq!(
            message(twelve, &ctx_in("430124"), t("430225101001")),
            "430225101001 is outside the agent's region 430124"
        );
    }

    #[test]
    fn containment_prefixes() {
        let cases = [
            ("430124", "430124"),
            ("430100", "4301"),
            ("430000", "43"),
            ("430124101000", "430124101"),
            ("430124000000", "430124"),
            ("430100000000", "4301"),
            ("430000000000", "43"),
            ("430124100000", "430124100"),
            ("000000", "00"), // never below the province
            ("4301", "4301"),
        ];
        for (agent, prefix) in cases {
            assert_eq!(containment_prefix(agent), prefix, "{agent}");
        }
    }

    // --- account, code, text, enum, subject ----------------------------------------------

    #[test]
    fn account() {
        let valid = [
            (t("6228480123456789012"), s("6228480123456789012")),
            (t("6228-4801-2345-6789-012"), s("6228480123456789012")),
            (t("6228 4801 2345 6789 012"), s("6228480123456789012")),
            (t("6228－4801"), s("62284801")),
            (Value::Int(12345678), s("12345678")),
        ];
        let invalid = [
            (t("1234567"), "account.length"),
            (t("123456789012345678901234567890123"), "account.length"),
            (t("6228/4801/2345"), "account.format"),
            (t("62284801234567A"), "account.format"),
            (t("--"), "account.length"),
            (Value::Float(6228480123456789012.0), "value.float"),
            (Value::Float(12345678.0), "value.float"),
        ];
        table(FieldKind::Account, &ctx(), &valid, &invalid);
    }

    #[test]
    fn code() {
        let long = "A".repeat(64);
        let valid = [
            (t("XM-2024-001"), s("XM-2024-001")),
            (t("  XM001\t"), s("XM001")),
            (t(&long), s(&long)),
            (t("项目编码一"), s("项目编码一")),
            (Value::Int(1001), s("1001")),
            (dec("1001.0"), s("1001")),
            (Value::Float(1001.0), s("1001")),
            (Value::Bytes("凭证1".as_bytes().to_vec()), s("凭证1")),
        ];
        let invalid = [
            (t(&"A".repeat(65)), "code.too_long"),
            (t("XM\u{1}001"), "code.control_char"),
            (t("XM\n001"), "code.control_char"),
            (dec("10.5"), "value.type"),
            (Value::Float(10.5), "value.float"),
            (Value::Float(1e15), "value.float"),
            (Value::Bool(true), "value.type"),
            (Value::Bytes(vec![0xD5, 0xC5]), "text.encoding"), // GBK 张, not decoded
            (t(" \u{3000} "), "required.missing"),
        ];
        table(FieldKind::Code, &ctx(), &valid, &invalid);
    }

    #[test]
    fn text() {
        let kind = FieldKind::Text { max_chars: 200 };
        let chinese_200 = "民".repeat(200);
        let valid = [
            (t(" 农村危房改造 "), s("农村危房改造")),
            (t(&chinese_200), s(&chinese_200)), // 600 bytes, 200 characters
            (t("第一行\n第二行"), s("第一行\n第二行")),
            (dec("500.50"), s("500.5")),
            (Value::Int(42), s("42")),
        ];
        let invalid = [
            (t(&"民".repeat(201)), "text.too_long"),
            (t("a\0b"), "text.nul"),
            (Value::Float(0.5), "value.float"),
            (Value::Date(date(2024, 1, 1)), "value.type"),
        ];
        table(kind, &ctx(), &valid, &invalid);
        table(
            FieldKind::Text { max_chars: 2000 },
            &ctx(),
            &[(t(&"x".repeat(2000)), s(&"x".repeat(2000)))],
            &[(t(&"x".repeat(2001)), "text.too_long")],
        );
    }

    #[test]
    fn enums() {
        let kind = crate::schema::RecordType::FundProject
            .field("disclosure")
            .unwrap()
            .kind;
        let valid = [
            (t("public"), s("public")),
            (t("公开"), s("public")),
            (t(" 不公开 "), s("restricted")),
            (t("restricted"), s("restricted")),
        ];
        let invalid = [
            (t("Public"), "enum.unknown"),
            (t("公示"), "enum.unknown"),
            (Value::Int(1), "enum.unknown"),
            (Value::Null, "required.missing"),
        ];
        table(kind, &ctx(), &valid, &invalid);
        assert_eq!(
            message(kind, &ctx(), t("公示")),
            "\"公示\" is not one of: public (公开), restricted (不公开)"
        );
        let level = crate::schema::RecordType::BudgetSource
            .field("fund_level")
            .unwrap()
            .kind;
        table(
            level,
            &ctx(),
            &[(t("中央"), s("central")), (t("乡镇"), s("township"))],
            &[(t("区级"), "enum.unknown")],
        );
    }

    #[test]
    fn subject_code() {
        let valid = [
            (t("208"), s("208")),
            (t("20802"), s("20802")),
            (t("2080201"), s("2080201")),
            (Value::Int(2080201), s("2080201")),
        ];
        let invalid = [
            (t("2080"), "subject_code.format"),
            (t("20"), "subject_code.format"),
            (t("208020101"), "subject_code.format"),
            (t("208A2"), "subject_code.format"),
        ];
        table(FieldKind::SubjectCode, &ctx(), &valid, &invalid);
    }

    // --- attachments ---------------------------------------------------------------------

    #[test]
    fn attachments() {
        let hex = "ab".repeat(32);
        let item = |sha: &str, name: &str, media: &str, size: &str| {
            format!(
                r#"{{"sha256":"{sha}","file_name":"{name}","media_type":"{media}","size":{size}}}"#
            )
        };
        let one = format!(
            "[{}]",
            item(&hex.to_uppercase(), "凭证1.jpg", "Image/JPEG", "1024")
        );
        let want = serde_json::json!([{ "sha256": hex, "file_name": "凭证1.jpg", "media_type": "image/jpeg", "size": 1024 }]);
        let two = format!(
            "[{},{}]",
            item(&hex, "a.pdf", "application/pdf", "0"),
            item(&hex, "b.png", "image/png", "5")
        );
        let def = field(FieldKind::Attachments, true);
        assert_eq!(
            check_field(&def, &t(&two), &ctx())
                .unwrap()
                .map(|w| match w {
                    Wire::Json(serde_json::Value::Array(a)) => a.len(),
                    _ => 0,
                }),
            Some(2)
        );
        let valid = [(t(&one), Wire::Json(want))];
        let bad = |s: String| t(&format!("[{s}]"));
        let invalid = [
            (t("not json"), "attachments.format"),
            (t(r#"{"sha256":"x"}"#), "attachments.format"),
            (t("[1]"), "attachments.format"),
            (
                bad(format!(
                    r#"{{"sha256":"{hex}","file_name":"a","media_type":"a/b","size":1,"path":"/x"}}"#
                )),
                "attachments.format",
            ),
            (
                bad(item(&"ab".repeat(31), "a.jpg", "image/jpeg", "1")),
                "attachments.sha256",
            ),
            (
                bad(item(&"zz".repeat(32), "a.jpg", "image/jpeg", "1")),
                "attachments.sha256",
            ),
            (
                bad(item(&hex, "", "image/jpeg", "1")),
                "attachments.file_name",
            ),
            (
                bad(item(&hex, &"n".repeat(256), "image/jpeg", "1")),
                "attachments.file_name",
            ),
            (
                bad(item(&hex, "a.jpg", "jpeg", "1")),
                "attachments.media_type",
            ),
            (
                bad(item(&hex, "a.jpg", "image/jpeg; q=1", "1")),
                "attachments.media_type",
            ),
            (
                bad(item(&hex, "a.jpg", "image/jpeg", "-1")),
                "attachments.size",
            ),
            (
                bad(item(&hex, "a.jpg", "image/jpeg", "1.5")),
                "attachments.size",
            ),
            (
                bad(item(&hex, "a.jpg", "image/jpeg", "\"1\"")),
                "attachments.size",
            ),
            (Value::Int(1), "value.type"),
            (t("[]"), "required.missing"),
        ];
        table(FieldKind::Attachments, &ctx(), &valid, &invalid);
        let optional = field(FieldKind::Attachments, false);
        assert_eq!(check_field(&optional, &t(" [ ] "), &ctx()), Ok(None));
        assert_eq!(check_field(&optional, &t(""), &ctx()), Ok(None));
    }

    // --- required vs optional ------------------------------------------------------------

    #[test]
    fn required_missing_versus_optional_absent() {
        let kinds = [
            FieldKind::Code,
            FieldKind::Text { max_chars: 10 },
            FieldKind::Year,
            FieldKind::Date,
            FieldKind::Amount,
            FieldKind::Region {
                twelve_digits: true,
            },
            FieldKind::Uscc,
            FieldKind::Idcard,
            FieldKind::Account,
            crate::schema::RecordType::PovertyTarget
                .field("status")
                .unwrap()
                .kind,
            FieldKind::SubjectCode,
            FieldKind::Period,
            FieldKind::Attachments,
        ];
        let absent = [Value::Null, t(""), t("  \t "), Value::Bytes(Vec::new())];
        for kind in kinds {
            for value in &absent {
                assert_eq!(
                    check_field(&field(kind, false), value, &ctx()),
                    Ok(None),
                    "{kind:?} {value:?}"
                );
                assert_eq!(
                    check_field(&field(kind, true), value, &ctx()),
                    Err(RuleError {
                        rule: "required.missing",
                        message: "required field is empty".into()
                    }),
                    "{kind:?} {value:?}"
                );
            }
        }
    }

    #[test]
    fn optional_present_values_are_still_checked() {
        let def = field(FieldKind::Account, false);
        assert_eq!(
            check_field(&def, &t("123"), &ctx()).unwrap_err().rule,
            "account.length"
        );
    }
}
