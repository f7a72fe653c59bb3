//! JSON Schema (draft 2020-12) export of the unified schema, for the platform that consumes
//! the records and for departments that want to check their data before registering.
//!
//! The schemas describe the *wire* form produced by [`crate::schema::rules::check_field`]:
//! amounts are strings with exactly two decimals, years integers, dates `YYYY-MM-DD`, enums
//! their wire values. An absent optional field is left out of `data` (the wire carries only
//! strings, integers, arrays and objects), so optional properties are simply not `required`
//! and never `null`.
//!
//! Some rules depend on the day the record was checked (dates up to today + 1 year, years up to
//! the current year + 1, birth dates not in the future) or need arithmetic (check characters,
//! region containment); a schema cannot state those, so each property's `description` names
//! the full rule and the schema enforces the shape.

use serde_json::{Map, Value, json};

use crate::schema::{FieldDef, FieldKind, RecordType};

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";

/// The province part of region codes and ID numbers as a regular expression alternative.
const PROVINCE: &str = "(1[1-5]|2[1-3]|3[1-7]|4[1-6]|5[0-4]|6[1-5]|71|8[12])";

const SHA256_HEX: &str = "^[0-9a-f]{64}$";

/// JSON Schema (draft 2020-12) of the `data` object of one record type: one property per
/// field with its type and pattern or enum, `title` = the Chinese label, `description` = the
/// rule; `required` lists the required fields; no other properties are allowed.
pub fn data_schema(rt: RecordType) -> Value {
    let mut properties = Map::new();
    for def in rt.fields() {
        properties.insert(def.name.to_owned(), field_schema(def));
    }
    let required: Vec<&str> = rt
        .fields()
        .iter()
        .filter(|f| f.required)
        .map(|f| f.name)
        .collect();
    let mut description = format!(
        "The data object of a {} record (unified schema v1), fields in template column order.",
        rt.as_str()
    );
    if rt.restricted() {
        description.push_str(" Restricted: sent for comparison only, never published.");
    }
    json!({
        "$schema": DRAFT,
        "title": rt.label(),
        "description": description,
        "type": "object",
        "properties": properties,
        "required": required,
        "additionalProperties": false,
    })
}

/// One document holding every record type's data schema under `$defs` (keyed by wire name)
/// and the envelope of one `fep.batch/1` line under `$defs/envelope`. The document itself
/// validates one line: its root refers to the envelope, whose `data` is checked against the
/// schema of the line's `type` (and must be `null` for a delete).
pub fn all_schemas() -> Value {
    let mut defs = Map::new();
    for rt in RecordType::ALL {
        let mut schema = data_schema(rt);
        // `$schema` belongs to the document root only.
        if let Some(obj) = schema.as_object_mut() {
            obj.remove("$schema");
        }
        defs.insert(rt.as_str().to_owned(), schema);
    }
    defs.insert("envelope".to_owned(), envelope_schema());
    json!({
        "$schema": DRAFT,
        "title": "fep.batch/1 record line",
        "description": "One line of a fep.batch/1 message body (application/x-ndjson), with the data schema of every record type of the unified schema v1 under $defs.",
        "$ref": "#/$defs/envelope",
        "$defs": defs,
    })
}

fn envelope_schema() -> Value {
    let types: Vec<&str> = RecordType::ALL.iter().map(|rt| rt.as_str()).collect();
    let mut all_of = vec![json!({
        "if": { "properties": { "op": { "const": "delete" } }, "required": ["op"] },
        "then": { "properties": { "data": { "type": "null" } } },
        "else": { "properties": { "data": { "type": "object" } } },
    })];
    for rt in RecordType::ALL {
        all_of.push(json!({
            "if": { "properties": { "type": { "const": rt.as_str() } }, "required": ["type"] },
            "then": { "properties": { "data": {
                "anyOf": [ { "type": "null" }, { "$ref": format!("#/$defs/{}", rt.as_str()) } ]
            } } },
        }));
    }
    json!({
        "title": "fep.batch/1 envelope",
        "type": "object",
        "properties": {
            "seq": { "type": "integer", "minimum": 1,
                     "description": "per connector, starts at 1, no gaps, never reused" },
            "id": { "type": "string", "pattern": SHA256_HEX,
                    "description": "idempotency key: SHA-256 hex of agent|connector|type|source_key|content_hash" },
            "type": { "type": "string", "enum": types, "description": "record type" },
            "op": { "type": "string", "enum": ["upsert", "delete"] },
            "source_key": { "type": "string", "description": "the key of the row in its source" },
            "collected_at": { "type": "string", "format": "date-time" },
            "hash": { "type": "string", "pattern": SHA256_HEX,
                      "description": "SHA-256 hex of the previous line's hash bytes followed by the canonical (RFC 8785) JSON of this line without \"hash\"" },
            "data": { "type": ["object", "null"], "description": "the record; null for a delete" },
        },
        "required": ["seq", "id", "type", "op", "source_key", "collected_at", "hash", "data"],
        "additionalProperties": false,
        "allOf": all_of,
    })
}

fn field_schema(def: &FieldDef) -> Value {
    let (mut schema, rule) = kind_schema(def.kind);
    schema.insert("title".to_owned(), Value::from(def.label));
    schema.insert("description".to_owned(), Value::from(rule));
    Value::Object(schema)
}

/// The JSON Schema keywords of a kind and the human statement of its rule.
fn kind_schema(kind: FieldKind) -> (Map<String, Value>, String) {
    let (schema, rule) = match kind {
        FieldKind::Code => (
            json!({ "type": "string", "minLength": 1, "maxLength": 64,
                    "pattern": r"^[^\u0000-\u001F\u007F-\u009F]+$" }),
            "code: 1 to 64 characters, no control characters, no surrounding spaces".to_owned(),
        ),
        FieldKind::Text { max_chars } => (
            json!({ "type": "string", "minLength": 1, "maxLength": max_chars, "pattern": r"^[^\u0000]*$" }),
            format!("text: at most {max_chars} characters, no NUL, no surrounding spaces"),
        ),
        FieldKind::Year => (
            json!({ "type": "integer", "minimum": 1949 }),
            "year: 1949 to the current year + 1".to_owned(),
        ),
        FieldKind::Date => (
            json!({ "type": "string", "format": "date", "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$" }),
            "date: YYYY-MM-DD, a real calendar date from 1949-10-01 to today + 1 year".to_owned(),
        ),
        FieldKind::Amount => (
            json!({ "type": "string", "pattern": r"^(0|[1-9][0-9]{0,11})\.[0-9]{2}$" }),
            "amount: yuan as a string with exactly 2 decimals, 0.00 to 999999999999.99; more decimals are an error, never rounded".to_owned(),
        ),
        FieldKind::Region { twelve_digits: true } => (
            json!({ "type": "string", "pattern": format!("^{PROVINCE}[0-9]{{10}}$") }),
            "region: 12-digit village-level division code with a valid province part, inside the agent's region".to_owned(),
        ),
        FieldKind::Region { twelve_digits: false } => (
            json!({ "type": "string", "pattern": format!("^{PROVINCE}[0-9]{{4}}([0-9]{{6}})?$") }),
            "region: 6- or 12-digit division code with a valid province part, inside the agent's region".to_owned(),
        ),
        FieldKind::Uscc => (
            json!({ "type": "string", "pattern": "^[0-9A-HJ-NP-RTUW-Y]{18}$" }),
            "uscc: unified social credit code, GB 32100-2015, 18 characters with a valid check character".to_owned(),
        ),
        FieldKind::Idcard => (
            json!({ "type": "string", "pattern": format!("^{PROVINCE}[0-9]{{15}}[0-9X]$") }),
            "idcard: resident identity card number, GB 11643-1999, 18 characters: valid province, real birth date, ISO 7064 MOD 11-2 check character".to_owned(),
        ),
        FieldKind::Account => (
            json!({ "type": "string", "pattern": "^[0-9]{8,32}$" }),
            "account: 8 to 32 digits (spaces and dashes removed)".to_owned(),
        ),
        FieldKind::Enum(values) => {
            let wires: Vec<&str> = values.iter().map(|v| v.wire).collect();
            let labels: Vec<String> = values.iter().map(|v| format!("{} = {}", v.wire, v.label)).collect();
            (
                json!({ "type": "string", "enum": wires }),
                format!("enum: one of {}", labels.join(", ")),
            )
        }
        FieldKind::SubjectCode => (
            json!({ "type": "string", "pattern": "^([0-9]{3}|[0-9]{5}|[0-9]{7})$" }),
            "functional classification subject: 3, 5 or 7 digits".to_owned(),
        ),
        FieldKind::Period => (
            json!({ "type": "string", "pattern": "^[0-9]{4}(-(0[1-9]|1[0-2]))?$" }),
            "period: YYYY or YYYY-MM, year 1949 to the current year + 1".to_owned(),
        ),
        FieldKind::Attachments => (
            json!({
                "type": "array",
                "minItems": 1,
                "items": {
                    "type": "object",
                    "properties": {
                        "sha256": { "type": "string", "pattern": SHA256_HEX },
                        "file_name": { "type": "string", "minLength": 1, "maxLength": 255 },
                        "media_type": { "type": "string",
                                        "pattern": r"^[a-z0-9][a-z0-9!#$&^_.+-]*/[a-z0-9][a-z0-9!#$&^_.+-]*$" },
                        "size": { "type": "integer", "minimum": 0 },
                    },
                    "required": ["sha256", "file_name", "media_type", "size"],
                    "additionalProperties": false,
                },
            }),
            "attachments: the voucher files, each {sha256, file_name, media_type, size}; the files travel as separate content-addressed messages".to_owned(),
        ),
    };
    match schema {
        Value::Object(map) => (map, rule),
        // Every arm above builds an object literal.
        _ => (Map::new(), rule),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::schema::rules::{RuleContext, Wire, check_field};
    use crate::value::Value as Cell;

    #[test]
    fn required_lists_match_the_fields() {
        for rt in RecordType::ALL {
            let schema = data_schema(rt);
            let required: Vec<&str> = schema["required"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v.as_str().unwrap())
                .collect();
            let expected: Vec<&str> = rt
                .fields()
                .iter()
                .filter(|f| f.required)
                .map(|f| f.name)
                .collect();
            assert_eq!(required, expected, "{rt}");
            let props = schema["properties"].as_object().unwrap();
            assert_eq!(props.len(), rt.fields().len(), "{rt}");
            for def in rt.fields() {
                assert_eq!(props[def.name]["title"], def.label, "{rt}.{}", def.name);
                assert!(
                    props[def.name]["description"]
                        .as_str()
                        .is_some_and(|d| !d.is_empty())
                );
            }
            assert_eq!(schema["additionalProperties"], false);
            assert_eq!(schema["type"], "object");
            assert_eq!(schema["title"], rt.label());
            assert_eq!(schema["$schema"], DRAFT);
        }
    }

    #[test]
    fn kinds_map_to_the_documented_wire_types() {
        let subsidy = data_schema(RecordType::IndividualSubsidy);
        let p = &subsidy["properties"];
        assert_eq!(
            p["amount"],
            json!({
                "type": "string",
                "pattern": "^(0|[1-9][0-9]{0,11})\\.[0-9]{2}$",
                "title": "发放金额",
                "description": p["amount"]["description"],
            })
        );
        assert_eq!(p["paid_date"]["format"], "date");
        assert_eq!(
            p["region_code"]["pattern"],
            format!("^{PROVINCE}[0-9]{{10}}$")
        );
        assert_eq!(
            data_schema(RecordType::FundProject)["properties"]["fiscal_year"]["type"],
            "integer"
        );
        assert_eq!(
            data_schema(RecordType::FundProject)["properties"]["disclosure"]["enum"],
            json!(["public", "restricted"])
        );
        assert_eq!(
            data_schema(RecordType::FundProject)["properties"]["project_name"]["maxLength"],
            200
        );
        assert!(
            data_schema(RecordType::PovertyTarget)["description"]
                .as_str()
                .unwrap()
                .contains("Restricted")
        );
    }

    /// The JSON type of each property agrees with the wire value check_field produces for a
    /// valid sample of that kind.
    #[test]
    fn schema_types_agree_with_rule_output() {
        let ctx = RuleContext {
            today: chrono::NaiveDate::from_ymd_opt(2026, 12, 4).unwrap(),
            agent_region: None,
            time_zone: chrono_tz::Asia::Shanghai,
        };
        for rt in RecordType::ALL {
            let schema = data_schema(rt);
            for def in rt.fields() {
                let sample = match def.kind {
                    FieldKind::Code | FieldKind::Text { .. } => "X1".to_owned(),
                    FieldKind::Year => "2024".to_owned(),
                    FieldKind::Date => "2024-01-05".to_owned(),
                    FieldKind::Amount => "12.5".to_owned(),
                    FieldKind::Region { .. } => "430124101001".to_owned(),
                    FieldKind::Uscc => "91350100M000100Y43".to_owned(),
                    FieldKind::Idcard => "11010519491231002X".to_owned(),
                    FieldKind::Account => "6228480123456789012".to_owned(),
                    FieldKind::Enum(values) => values[0].label.to_owned(),
                    FieldKind::SubjectCode => "20802".to_owned(),
                    FieldKind::Period => "2024-03".to_owned(),
                    FieldKind::Attachments => format!(
                        r#"[{{"sha256":"{}","file_name":"a.jpg","media_type":"image/jpeg","size":1}}]"#,
                        "0".repeat(64)
                    ),
                };
                let wire = check_field(def, &Cell::Text(sample), &ctx)
                    .unwrap()
                    .unwrap();
                let json_type = match wire {
                    Wire::Str(_) => "string",
                    Wire::Int(_) => "integer",
                    Wire::Json(_) => "array",
                };
                assert_eq!(
                    schema["properties"][def.name]["type"], json_type,
                    "{rt}.{}",
                    def.name
                );
            }
        }
    }

    #[test]
    fn document_holds_every_type_and_the_envelope() {
        let doc = all_schemas();
        assert_eq!(doc["$schema"], DRAFT);
        assert_eq!(doc["$ref"], "#/$defs/envelope");
        let defs = doc["$defs"].as_object().unwrap();
        assert_eq!(defs.len(), RecordType::ALL.len() + 1);
        for rt in RecordType::ALL {
            let def = &defs[rt.as_str()];
            assert!(def.get("$schema").is_none(), "{rt}: nested $schema");
            let mut standalone = data_schema(rt);
            standalone.as_object_mut().unwrap().remove("$schema");
            assert_eq!(def, &standalone);
        }
        let env = &defs["envelope"];
        let names: Vec<&str> = RecordType::ALL.iter().map(|rt| rt.as_str()).collect();
        assert_eq!(env["properties"]["type"]["enum"], json!(names));
        assert_eq!(env["properties"]["op"]["enum"], json!(["upsert", "delete"]));
        assert_eq!(
            env["properties"]["seq"],
            json!({
                "type": "integer", "minimum": 1, "description": env["properties"]["seq"]["description"]
            })
        );
        assert_eq!(env["properties"]["id"]["pattern"], SHA256_HEX);
        assert_eq!(env["properties"]["hash"]["pattern"], SHA256_HEX);
        assert_eq!(env["properties"]["collected_at"]["format"], "date-time");
        assert_eq!(env["properties"]["data"]["type"], json!(["object", "null"]));
        assert_eq!(env["required"].as_array().unwrap().len(), 8);
        assert_eq!(env["additionalProperties"], false);

        // Every $ref points at an existing definition.
        let mut refs = Vec::new();
        collect_refs(&doc, &mut refs);
        assert_eq!(refs.len(), RecordType::ALL.len() + 1);
        for r in refs {
            let name = r.strip_prefix("#/$defs/").unwrap();
            assert!(defs.contains_key(name), "{r}");
        }
    }

    fn collect_refs(v: &Value, out: &mut Vec<String>) {
        match v {
            Value::Object(map) => {
                for (k, v) in map {
                    if k == "$ref" {
                        out.push(v.as_str().unwrap().to_owned());
                    } else {
                        collect_refs(v, out);
                    }
                }
            }
            Value::Array(items) => items.iter().for_each(|v| collect_refs(v, out)),
            _ => {}
        }
    }
}
