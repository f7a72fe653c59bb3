//! The mapper: turns one source row into the canonical `data` object of a unified record,
//! or into a reject carrying every reason.
//!
//! Per field, in order: take the column (or constant), decode legacy text with the
//! connector's `encoding`, apply `trim`/`upper`, look the value up in its code table, check
//! it against the field's type rule (which also normalises it), then apply `mask`, `hmac`
//! or `drop`. The output is canonical JSON (RFC 8785: keys sorted, compact), written
//! directly without an intermediate map, because this runs once per row.

pub mod transform;

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use sha2::{Digest, Sha256};

use crate::config::{ConnectorConfig, FieldSource, Secret, Transform};
use crate::schema::FieldDef;
use crate::schema::rules::{RuleContext, Wire, check_field};
use crate::source::Row;
use crate::source::cursor::{Layout, SelectItem};
use crate::value::Value;

/// Why one field (or the row's key) was refused.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Reason {
    pub field: String,
    pub rule: String,
    pub message: String,
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

/// A row that mapped and validated.
#[derive(Debug, Clone)]
pub struct Mapped {
    pub source_key: String,
    /// Canonical JSON of the record's `data` object.
    pub data: Vec<u8>,
    /// SHA-256 of `data`: the row's content hash.
    pub content_hash: [u8; 32],
}

/// A row that did not; kept with its raw values and every reason.
#[derive(Debug, Clone)]
pub struct Rejected {
    pub source_key: String,
    /// The selected columns as a JSON object (column name → value).
    pub raw: serde_json::Value,
    pub reasons: Vec<Reason>,
}

enum Input {
    Column(usize),
    Const(Value),
}

struct CompiledField {
    def: &'static FieldDef,
    input: Input,
    before: Vec<Transform>,
    after: Vec<Transform>,
    code_table: Option<(String, Arc<HashMap<String, String>>)>,
}

/// A connector's compiled mapping.
pub struct Mapper {
    /// Sorted by field name: the order of canonical JSON.
    fields: Vec<CompiledField>,
    key: Vec<usize>,
    key_names: Vec<String>,
    column_names: Vec<String>,
    encoding: &'static encoding_rs::Encoding,
    hmac_key: Option<Secret>,
    rules: RuleContext,
}

impl Mapper {
    pub fn new(
        c: &ConnectorConfig,
        layout: &Layout,
        hmac_key: Option<Secret>,
        rules: RuleContext,
    ) -> Mapper {
        let tables: HashMap<&String, Arc<HashMap<String, String>>> = c
            .code_tables
            .iter()
            .map(|(k, v)| (k, Arc::new(v.clone())))
            .collect();
        let mut fields: Vec<CompiledField> = c
            .fields
            .iter()
            .filter_map(|f| {
                let input = match &f.source {
                    FieldSource::Column(col) => {
                        Input::Column(layout.index_of(&SelectItem::Column(col.clone()))?)
                    }
                    FieldSource::Expr(e) => {
                        Input::Column(layout.index_of(&SelectItem::Expr(e.clone()))?)
                    }
                    FieldSource::Const(v) => Input::Const(v.clone()),
                };
                Some(CompiledField {
                    def: f.def,
                    input,
                    before: f
                        .transforms
                        .iter()
                        .copied()
                        .filter(|t| !t.after_rule())
                        .collect(),
                    after: f
                        .transforms
                        .iter()
                        .copied()
                        .filter(|t| t.after_rule())
                        .collect(),
                    code_table: f
                        .code_table
                        .as_ref()
                        .and_then(|name| tables.get(name).map(|t| (name.clone(), t.clone()))),
                })
            })
            .collect();
        fields.sort_by_key(|f| f.def.name);
        Mapper {
            fields,
            key: layout.key.clone(),
            key_names: c.extract.key.clone(),
            column_names: layout.names(),
            encoding: c.extract.encoding,
            hmac_key,
            rules,
        }
    }

    /// Maps one row.
    pub fn map(&self, row: &Row) -> Result<Mapped, Rejected> {
        let mut reasons = Vec::new();
        let source_key = self.source_key(row, &mut reasons);
        let mut data = Vec::with_capacity(256);
        data.push(b'{');
        let mut first = true;
        for f in &self.fields {
            let value = match &f.input {
                Input::Column(i) => row.get(*i).unwrap_or(&Value::Null),
                Input::Const(v) => v,
            };
            match self.field(f, value) {
                Ok(Some(wire)) => {
                    if !first {
                        data.push(b',');
                    }
                    first = false;
                    write_json_str(&mut data, f.def.name);
                    data.push(b':');
                    write_wire(&mut data, &wire);
                }
                Ok(None) => {}
                Err((rule, message)) => reasons.push(Reason {
                    field: f.def.name.to_string(),
                    rule: rule.to_string(),
                    message,
                }),
            }
        }
        data.push(b'}');
        if !reasons.is_empty() {
            return Err(Rejected {
                source_key,
                raw: self.raw_row(row),
                reasons,
            });
        }
        let content_hash: [u8; 32] = Sha256::digest(&data).into();
        Ok(Mapped {
            source_key,
            data,
            content_hash,
        })
    }

    fn field(
        &self,
        f: &CompiledField,
        value: &Value,
    ) -> Result<Option<Wire>, (&'static str, String)> {
        let mut v = transform::decode_text(value, self.encoding)?;
        for t in &f.before {
            v = transform::apply_before(*t, v);
        }
        if let Some((name, table)) = &f.code_table {
            v = transform::lookup_code(name, table, v)?;
        }
        let wire = check_field(f.def, &v, &self.rules).map_err(|e| (e.rule, e.message))?;
        let Some(mut wire) = wire else {
            return Ok(None);
        };
        for t in &f.after {
            match transform::apply_after(*t, wire, self.hmac_key.as_ref()) {
                Some(w) => wire = w,
                None => return Ok(None),
            }
        }
        Ok(Some(wire))
    }

    fn source_key(&self, row: &Row, reasons: &mut Vec<Reason>) -> String {
        let mut parts = Vec::with_capacity(self.key.len());
        for (n, i) in self.key.iter().enumerate() {
            let v = row.get(*i).unwrap_or(&Value::Null);
            match transform::key_text(v, self.encoding) {
                Some(s) => parts.push(s),
                None => {
                    reasons.push(Reason {
                        field: format!(
                            "key {}",
                            self.key_names.get(n).map(String::as_str).unwrap_or("?")
                        ),
                        rule: "key.missing".into(),
                        message:
                            "the key column is NULL or unreadable, so the row cannot be identified"
                                .into(),
                    });
                    parts.push(String::new());
                }
            }
        }
        parts.join("|")
    }

    fn raw_row(&self, row: &Row) -> serde_json::Value {
        let mut map = serde_json::Map::new();
        for (name, v) in self.column_names.iter().zip(row.iter()) {
            map.insert(name.clone(), transform::raw_json(v));
        }
        serde_json::Value::Object(map)
    }
}

/// Writes a JSON string exactly as RFC 8785 wants it (serde_json's escaping is the same).
pub fn write_json_str(out: &mut Vec<u8>, s: &str) {
    // Writing into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, s);
}

fn write_wire(out: &mut Vec<u8>, w: &Wire) {
    match w {
        Wire::Str(s) => write_json_str(out, s),
        Wire::Int(i) => out.extend_from_slice(i.to_string().as_bytes()),
        Wire::Json(v) => {
            let _ = serde_json::to_writer(&mut *out, v);
        }
    }
}
