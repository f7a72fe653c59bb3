//! The per-value steps of the mapper: text decoding, transforms, code tables.

use std::borrow::Cow;
use std::collections::HashMap;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::config::{Secret, Transform};
use crate::schema::rules::Wire;
use crate::value::Value;

type StepError = (&'static str, String);

/// Decodes legacy text bytes with the connector's encoding. Other values pass unchanged.
pub fn decode_text<'a>(
    v: &'a Value,
    encoding: &'static encoding_rs::Encoding,
) -> Result<Cow<'a, Value>, StepError> {
    let Value::Bytes(bytes) = v else {
        return Ok(Cow::Borrowed(v));
    };
    match encoding.decode_without_bom_handling_and_without_replacement(bytes) {
        Some(text) => Ok(Cow::Owned(Value::Text(text.into_owned()))),
        None if encoding == encoding_rs::UTF_8 => {
            let looks_gbk = encoding_rs::GBK
                .decode_without_bom_handling_and_without_replacement(bytes)
                .is_some();
            let hint = if looks_gbk {
                "; the bytes decode as GBK: if the source is GBK, set encoding = \"gbk\" in [extract]"
            } else {
                ""
            };
            Err((
                "text.encoding",
                format!("not valid UTF-8 ({} bytes){hint}", bytes.len()),
            ))
        }
        None => Err((
            "text.encoding",
            format!("not valid {} ({} bytes)", encoding.name(), bytes.len()),
        )),
    }
}

/// `trim` and `upper`, which run before the type rule.
pub fn apply_before(t: Transform, v: Cow<'_, Value>) -> Cow<'_, Value> {
    match (t, v.as_ref()) {
        (Transform::Trim, Value::Text(s)) if s.trim() != s => {
            Cow::Owned(Value::Text(s.trim().to_string()))
        }
        (Transform::Upper, Value::Text(s)) if s.chars().any(|c| c.is_lowercase()) => {
            Cow::Owned(Value::Text(s.to_uppercase()))
        }
        _ => v,
    }
}

/// Replaces a local code by the platform code from a code table.
pub fn lookup_code<'a>(
    name: &str,
    table: &HashMap<String, String>,
    v: Cow<'a, Value>,
) -> Result<Cow<'a, Value>, StepError> {
    let local = match v.as_ref() {
        Value::Null => return Ok(v),
        Value::Text(s) => s.trim().to_string(),
        Value::Int(i) => i.to_string(),
        Value::Decimal(d) => d.normalize().to_string(),
        other => {
            return Err((
                "code_table.type",
                format!(
                    "a {} cannot be looked up in code table `{name}`",
                    other.kind_name()
                ),
            ));
        }
    };
    if local.is_empty() {
        return Ok(Cow::Owned(Value::Null));
    }
    match table.get(&local) {
        Some(platform) => Ok(Cow::Owned(Value::Text(platform.clone()))),
        None => Err((
            "code_table.unknown",
            format!(
                "local code `{local}` is not in code table `{name}`; add it to [code_tables.{name}]"
            ),
        )),
    }
}

/// `mask`, `hmac` and `drop`, which run after the type rule. `None` drops the field.
pub fn apply_after(t: Transform, w: Wire, hmac_key: Option<&Secret>) -> Option<Wire> {
    match (t, w) {
        (Transform::Drop, _) => None,
        (Transform::Mask, Wire::Str(s)) => Some(Wire::Str(mask(&s))),
        // The config loader refuses `hmac` without a key; without one the field is dropped,
        // never sent in clear.
        (Transform::Hmac, Wire::Str(s)) => hmac_key.map(|key| Wire::Str(hmac_hex(key, &s))),
        (_, w) => Some(w),
    }
}

/// Keeps the first 6 and last 4 characters of long values (the area code and tail of an ID
/// number or account), the first and last of short ones, and stars the rest (all of a value
/// of one or two characters).
pub fn mask(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let (head, tail) = if chars.len() > 10 {
        (6, 4)
    } else if chars.len() > 2 {
        (1, 1)
    } else {
        (0, 0)
    };
    chars
        .iter()
        .enumerate()
        .map(|(i, c)| {
            if i < head || i >= chars.len() - tail {
                *c
            } else {
                '*'
            }
        })
        .collect()
}

/// HMAC-SHA256 of the value, lower-case hex: equal inputs compare equal, the value itself
/// cannot be read back without the key.
pub fn hmac_hex(key: &Secret, s: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose()) else {
        return String::new();
    };
    mac.update(s.as_bytes());
    hex::encode(mac.finalize().into_bytes())
}

/// The text of a key cell, as it appears in `source_key`.
pub fn key_text(v: &Value, encoding: &'static encoding_rs::Encoding) -> Option<String> {
    Some(match v {
        Value::Null => return None,
        Value::Bool(b) => b.to_string(),
        Value::Int(i) => i.to_string(),
        Value::Float(f) => format!("{f}"),
        Value::Decimal(d) => d.normalize().to_string(),
        Value::Text(s) => s.trim_end().to_string(),
        Value::Bytes(b) => encoding
            .decode_without_bom_handling_and_without_replacement(b)?
            .trim_end()
            .to_string(),
        Value::Date(d) => d.to_string(),
        Value::DateTime(d) => d.format("%Y-%m-%d %H:%M:%S%.f").to_string(),
        Value::DateTimeTz(d) => d.to_rfc3339(),
    })
}

/// A cell as JSON for the reject store. Exact values stay exact (decimals as strings);
/// undecodable bytes are shown as hex.
pub fn raw_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::Null => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::Float(f) => J::String(format!("{f}")),
        Value::Decimal(d) => J::String(d.to_string()),
        Value::Text(s) => J::String(s.clone()),
        Value::Bytes(b) => match std::str::from_utf8(b) {
            Ok(s) => J::String(s.to_string()),
            Err(_) => J::String(format!("0x{}", hex::encode(b))),
        },
        Value::Date(d) => J::String(d.to_string()),
        Value::DateTime(d) => J::String(d.format("%Y-%m-%d %H:%M:%S%.f").to_string()),
        Value::DateTimeTz(d) => J::String(d.to_rfc3339()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gbk_bytes_decode_with_gbk_and_are_refused_as_utf8() {
        let (bytes, _, _) = encoding_rs::GBK.encode("张三");
        let v = Value::Bytes(bytes.into_owned());
        assert_eq!(
            decode_text(&v, encoding_rs::GBK).unwrap().into_owned(),
            Value::Text("张三".into())
        );
        let (rule, msg) = decode_text(&v, encoding_rs::UTF_8).unwrap_err();
        assert_eq!(rule, "text.encoding");
        assert!(msg.contains("gbk"), "{msg}");
    }

    #[test]
    fn mask_keeps_head_and_tail() {
        assert_eq!(mask("43012419900101123X"), "430124********123X");
        assert_eq!(mask("张三丰"), "张*丰");
        assert_eq!(mask("ab"), "**");
    }

    #[test]
    fn hmac_is_keyed_and_stable() {
        let k1 = Secret::new(b"k1".to_vec());
        let k2 = Secret::new(b"k2".to_vec());
        assert_eq!(hmac_hex(&k1, "x"), hmac_hex(&k1, "x"));
        assert_ne!(hmac_hex(&k1, "x"), hmac_hex(&k2, "x"));
        assert_eq!(hmac_hex(&k1, "x").len(), 64);
    }

    #[test]
    fn code_tables_map_or_refuse() {
        let t: HashMap<String, String> = [("01".to_string(), "A01".to_string())].into();
        let ok = lookup_code("cat", &t, Cow::Owned(Value::Text(" 01 ".into()))).unwrap();
        assert_eq!(ok.into_owned(), Value::Text("A01".into()));
        let (rule, msg) = lookup_code("cat", &t, Cow::Owned(Value::Text("02".into()))).unwrap_err();
        assert_eq!(rule, "code_table.unknown");
        assert!(
            msg.contains("`02`") && msg.contains("[code_tables.cat]"),
            "{msg}"
        );
    }
}
