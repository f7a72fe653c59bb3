//! SQL text that comes from config: identifier validation and the read-only check for
//! connector queries and field expressions.
//!
//! Values are never spliced into SQL; they are always bound. What *is* spliced is what the
//! department wrote in the connector file (table, column names, a query, expressions), so it
//! is checked here once at load: identifiers are validated and later quoted by the dialect,
//! and a query or expression that could write is refused.

/// Checks a table or column name. Any printable characters are allowed (legacy schemas use
/// Chinese column names); quoting is the dialect's job.
pub fn validate_identifier(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("empty identifier".into());
    }
    if name.chars().count() > 128 {
        return Err(format!("identifier `{name}` is longer than 128 characters"));
    }
    if name.chars().any(|c| c.is_control()) {
        return Err(format!("identifier {name:?} contains a control character"));
    }
    Ok(())
}

/// Words that make a statement write, change the schema, or escape the statement.
/// (`REPLACE` is not here: it is also a string function; `REPLACE INTO` is caught by `INTO`.)
const FORBIDDEN: &[&str] = &[
    "INSERT",
    "UPDATE",
    "DELETE",
    "MERGE",
    "UPSERT",
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "RENAME",
    "GRANT",
    "REVOKE",
    "EXEC",
    "EXECUTE",
    "CALL",
    "DO",
    "COPY",
    "ATTACH",
    "DETACH",
    "PRAGMA",
    "VACUUM",
    "LOCK",
    "UNLOCK",
    "SET",
    "DECLARE",
    "BEGIN",
    "COMMIT",
    "ROLLBACK",
    "SAVEPOINT",
    "INTO",
    "LOAD",
    "HANDLER",
    "OUTFILE",
    "DUMPFILE",
    "SHUTDOWN",
    "KILL",
    "REINDEX",
    "ANALYZE",
    "CLUSTER",
    "COMMENT",
    "REFRESH",
    "LISTEN",
    "NOTIFY",
];

/// Refuses anything but one read-only `SELECT` (or `WITH … SELECT`).
pub fn check_read_only_query(sql: &str) -> Result<(), String> {
    let words = code_words(sql)?;
    match words.first().map(String::as_str) {
        Some("SELECT") | Some("WITH") => {}
        Some(w) => {
            return Err(format!(
                "the query starts with {w}; only SELECT or WITH … SELECT is allowed"
            ));
        }
        None => return Err("the query is empty".into()),
    }
    check_words(&words)
}

/// Refuses an expression that could write or end the statement.
pub fn check_read_only_expr(sql: &str) -> Result<(), String> {
    let words = code_words(sql)?;
    if words.is_empty() {
        return Err("the expression is empty".into());
    }
    if words.iter().any(|w| w == "SELECT") {
        return Err(
            "a field expression cannot contain a sub-query; put it in `extract.query`".into(),
        );
    }
    check_words(&words)
}

fn check_words(words: &[String]) -> Result<(), String> {
    if let Some(w) = words.iter().find(|w| FORBIDDEN.contains(&w.as_str())) {
        return Err(format!(
            "`{w}` is not allowed: connector SQL must only read"
        ));
    }
    Ok(())
}

/// The upper-cased words of the SQL outside string literals, quoted identifiers and
/// comments. A `;` anywhere but at the very end is refused (several statements).
fn code_words(sql: &str) -> Result<Vec<String>, String> {
    let trimmed = sql.trim().trim_end_matches(';').trim_end();
    let chars: Vec<char> = trimmed.chars().collect();
    let mut words = Vec::new();
    let mut word = String::new();
    let mut i = 0;
    let flush = |word: &mut String, words: &mut Vec<String>| {
        if !word.is_empty() {
            words.push(word.to_uppercase());
            word.clear();
        }
    };
    while i < chars.len() {
        let c = chars[i];
        match c {
            '\'' | '"' | '`' => {
                flush(&mut word, &mut words);
                let close = c;
                i += 1;
                loop {
                    match chars.get(i) {
                        None => return Err(format!("unterminated {close} quote")),
                        Some(&q) if q == close => {
                            if chars.get(i + 1) == Some(&close) {
                                i += 2;
                                continue;
                            }
                            break;
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            '[' => {
                flush(&mut word, &mut words);
                while i < chars.len() && chars[i] != ']' {
                    i += 1;
                }
            }
            '-' if chars.get(i + 1) == Some(&'-') => {
                flush(&mut word, &mut words);
                while i < chars.len() && chars[i] != '\n' {
                    i += 1;
                }
            }
            '/' if chars.get(i + 1) == Some(&'*') => {
                flush(&mut word, &mut words);
                i += 2;
                while i + 1 < chars.len() && !(chars[i] == '*' && chars[i + 1] == '/') {
                    i += 1;
                }
                i += 1;
            }
            ';' => return Err("several statements (`;`) are not allowed".into()),
            c if c.is_alphanumeric() || c == '_' => word.push(c),
            _ => flush(&mut word, &mut words),
        }
        i += 1;
    }
    flush(&mut word, &mut words);
    Ok(words)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_read_only_queries() {
        for q in [
            "SELECT a, b FROM t",
            "select * from t where note = 'please delete me'",
            "WITH x AS (SELECT 1 AS a) SELECT a FROM x;",
            "SELECT \"update\" FROM t -- insert here\n",
            "SELECT /* drop */ a FROM t",
        ] {
            assert!(
                check_read_only_query(q).is_ok(),
                "{q}: {:?}",
                check_read_only_query(q)
            );
        }
    }

    #[test]
    fn refuses_writes_and_several_statements() {
        for q in [
            "DELETE FROM t",
            "SELECT 1; DROP TABLE t",
            "SELECT * INTO t2 FROM t",
            "REPLACE INTO t VALUES (1)",
            "UPDATE t SET a = 1",
            "WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d",
            "INSERT INTO t VALUES (1)",
            "SELECT 'unterminated",
            "",
        ] {
            assert!(check_read_only_query(q).is_err(), "{q}");
        }
    }

    #[test]
    fn expressions() {
        assert!(check_read_only_expr("substr(village, 1, 12)").is_ok());
        assert!(check_read_only_expr("coalesce(a, 'x')").is_ok());
        assert!(check_read_only_expr("replace(a, '-', '')").is_ok());
        assert!(check_read_only_expr("(SELECT max(a) FROM t)").is_err());
        assert!(check_read_only_expr("a); DROP TABLE t; --").is_err());
    }

    #[test]
    fn identifiers() {
        assert!(validate_identifier("pay_id").is_ok());
        assert!(validate_identifier("姓名").is_ok());
        assert!(validate_identifier("").is_err());
        assert!(validate_identifier("a\nb").is_err());
    }
}
