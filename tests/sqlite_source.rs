//! The cursor modes on a real SQLite source: incrementing, timestamp (lag window for late
//! commits, many rows sharing one timestamp across batches and restarts), snapshot
//! (inserts, updates, deletes; resuming a composite-key scan), and legacy GBK text.

mod common;

use std::ops::Deref;

use common::AgentDir;
use fepd::config::AgentConfig;
use fepd::pipeline::run_once;
use rusqlite::Connection;

/// An agent directory (see [`AgentDir`]) over a legacy SQLite database created by `schema`.
struct Fixture {
    agent: AgentDir,
}

impl Deref for Fixture {
    type Target = AgentDir;

    fn deref(&self) -> &AgentDir {
        &self.agent
    }
}

impl Fixture {
    fn new(schema: &str, extract: &str, fields: &str, batch_size: usize) -> Fixture {
        let agent = AgentDir::new(
            "driver = \"sqlite\"\npath = \"../legacy.db\"",
            extract,
            fields,
            batch_size,
        );
        Connection::open(agent.path().join("legacy.db"))
            .unwrap()
            .execute_batch(schema)
            .unwrap();
        Fixture { agent }
    }

    fn db(&self) -> Connection {
        Connection::open(self.agent.path().join("legacy.db")).unwrap()
    }

    fn config(&self) -> std::path::PathBuf {
        self.agent.config_path()
    }

    fn outbox(&self) -> std::path::PathBuf {
        self.agent.path().join("outbox")
    }
}

const FIELDS: &str = "unit_name = \"unit\"\nyear = \"yr\"\nresult = \"res\"";

use common::keys_of as keys;

fn insert_units(db: &Connection, ids: std::ops::Range<i64>, ts: &str) {
    let tx = db.unchecked_transaction().unwrap();
    for i in ids {
        tx.execute(
            "INSERT INTO t (id, unit, yr, res, updated_at) VALUES (?1, ?2, 2024, '好', ?3)",
            rusqlite::params![i, format!("单位{i}"), ts],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

const TABLE: &str =
    "CREATE TABLE t (id INTEGER PRIMARY KEY, unit TEXT, yr INTEGER, res TEXT, updated_at TEXT);";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn incrementing_mode_delivers_only_new_rows() {
    let f = Fixture::new(
        TABLE,
        "table = \"t\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"",
        FIELDS,
        1000,
    );
    insert_units(&f.db(), 1..2501, "2024-01-01 00:00:00");
    let (_, first) = f.pass().await;
    assert_eq!(first.len(), 2500);
    insert_units(&f.db(), 2501..2511, "2024-01-01 00:00:00");
    let (_, second) = f.pass().await;
    assert_eq!(
        keys(&second),
        (2501..2511)
            .map(|i| i.to_string())
            .collect::<Vec<_>>()
            .iter()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>()
            .into_iter()
            .collect::<Vec<_>>()
    );
    let (_, third) = f.pass().await;
    assert!(third.is_empty());
    let data: serde_json::Value = serde_json::from_str(&first[0].data).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"result": "excellent", "unit_name": "单位1", "year": 2024})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn timestamp_mode_catches_a_late_commit_inside_the_lag_window_and_repeats_nothing() {
    let f = Fixture::new(
        TABLE,
        "table = \"t\"\nkey = \"id\"\nmode = \"timestamp\"\ncolumn = \"updated_at\"\nlag = \"5m\"",
        FIELDS,
        1000,
    );
    let db = f.db();
    insert_units(&db, 1..2, "2024-06-01 10:00:00");
    insert_units(&db, 2..3, "2024-06-01 10:02:00");
    let (_, first) = f.pass().await;
    assert_eq!(keys(&first), ["1", "2"]);

    // A transaction that took its timestamp (10:01) before row 2's but committed after the
    // pass that read row 2.
    insert_units(&db, 3..4, "2024-06-01 10:01:00");
    let (summary, second) = f.pass().await;
    assert_eq!(
        keys(&second),
        ["3"],
        "the late row is delivered, the others are not repeated"
    );
    assert_eq!(
        summary.passes[0].unchanged, 2,
        "rows 1 and 2 were re-read and suppressed by hash"
    );

    // A change that kept its timestamp (inside the window) is still seen: content differs.
    db.execute("UPDATE t SET res = '较好' WHERE id = 2", [])
        .unwrap();
    let (_, third) = f.pass().await;
    assert_eq!(keys(&third), ["2"]);
    assert!(third[0].data.contains("\"good\""));

    // Older than the lag window: by design not seen (lag is the bound on late commits).
    insert_units(&db, 4..5, "2024-06-01 09:50:00");
    let (_, fourth) = f.pass().await;
    assert!(fourth.is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_of_rows_sharing_one_timestamp_across_batches_and_a_restart() {
    let f = Fixture::new(
        TABLE,
        "table = \"t\"\nkey = \"id\"\nmode = \"timestamp\"\ncolumn = \"updated_at\"",
        FIELDS,
        700,
    );
    insert_units(&f.db(), 1..3001, "2024-06-01 10:00:00");
    // Stop after the first chunk, as a restart would.
    let first = f.interrupted_pass().await.records;
    assert!(first > 0 && first < 3000, "stopped part-way ({first})");
    let (summary, delivered) = f.pass().await;
    assert_eq!(
        delivered.len(),
        3000,
        "the stopped pass's batch and the rest"
    );
    assert_eq!(
        first + summary.passes[0].records,
        3000,
        "the restart spooled only what the stop had not"
    );
    let all = f.delivered();
    assert_eq!(all.len(), 3000);
    let unique: std::collections::BTreeSet<_> = all.iter().map(|r| r.source_key.clone()).collect();
    assert_eq!(unique.len(), 3000, "no row delivered twice");
    // More rows with the very same timestamp arrive later.
    insert_units(&f.db(), 3001..3011, "2024-06-01 10:00:00");
    let (_, late) = f.pass().await;
    assert_eq!(late.len(), 10);
    let (_, none) = f.pass().await;
    assert!(none.is_empty());
    let key = fepd::keys::load_signing_key(&f.agent.path().join("key"))
        .unwrap()
        .verifying_key();
    assert!(fepd::verify::verify_dir(&f.outbox(), &key).unwrap().ok());
}

const LEDGER: &str =
    "CREATE TABLE t (a TEXT, b INTEGER, unit TEXT, yr INTEGER, res TEXT, PRIMARY KEY (a, b));";

fn insert_ledger(db: &Connection, n: i64) {
    let tx = db.unchecked_transaction().unwrap();
    for i in 0..n {
        tx.execute(
            "INSERT INTO t VALUES (?1, ?2, ?3, 2023, 'fair')",
            rusqlite::params![format!("v{}", i % 7), i, format!("单位{i}")],
        )
        .unwrap();
    }
    tx.commit().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_mode_delivers_inserts_updates_and_deletes_and_nothing_else() {
    let f = Fixture::new(
        LEDGER,
        "table = \"t\"\nkey = [\"a\", \"b\"]\nmode = \"snapshot\"",
        FIELDS,
        400,
    );
    let db = f.db();
    insert_ledger(&db, 1500);
    let (_, first) = f.pass().await;
    assert_eq!(first.len(), 1500);
    assert!(first.iter().all(|r| r.op == "upsert"));

    db.execute_batch(
        "UPDATE t SET res = 'poor' WHERE b IN (3, 500, 1499);
         DELETE FROM t WHERE b IN (10, 11);
         INSERT INTO t VALUES ('v9', 5000, '新单位', 2023, 'good'), ('v9', 5001, '新单位', 2023, 'good'),
                              ('a0', 5002, '新单位', 2023, 'good'), ('zz', 5003, '新单位', 2023, 'good');",
    )
    .unwrap();
    let (_, second) = f.pass().await;
    let upserts: Vec<String> = keys(
        &second
            .iter()
            .filter(|r| r.op == "upsert")
            .cloned()
            .collect::<Vec<_>>(),
    );
    let deletes: Vec<String> = keys(
        &second
            .iter()
            .filter(|r| r.op == "delete")
            .cloned()
            .collect::<Vec<_>>(),
    );
    assert_eq!(
        upserts,
        [
            "a0|5002", "v1|1499", "v3|3", "v3|500", "v9|5000", "v9|5001", "zz|5003"
        ]
    );
    assert_eq!(deletes, ["v3|10", "v4|11"]);
    assert!(
        second
            .iter()
            .filter(|r| r.op == "delete")
            .all(|r| r.data == "null")
    );
    let (_, third) = f.pass().await;
    assert!(third.is_empty(), "{third:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_scan_resumes_after_a_stop_without_false_deletes() {
    let f = Fixture::new(
        LEDGER,
        "table = \"t\"\nkey = [\"a\", \"b\"]\nmode = \"snapshot\"",
        FIELDS,
        300,
    );
    insert_ledger(&f.db(), 2000);
    f.pass().await;
    f.db().execute("UPDATE t SET res = 'good'", []).unwrap();
    // Second generation, interrupted after its first chunk.
    let partial = f.interrupted_pass().await;
    assert_eq!(partial.deletes, 0);
    assert!(partial.records > 0 && partial.records < 2000);
    let (summary, delivered) = f.pass().await;
    assert_eq!(
        summary.passes[0].deletes, 0,
        "rows seen before the stop are not deleted"
    );
    assert_eq!(
        partial.records + summary.passes[0].records,
        2000,
        "every changed row spooled exactly once"
    );
    assert_eq!(delivered.len(), 2000);
    f.db().execute("DELETE FROM t WHERE b = 1234", []).unwrap();
    let (_, del) = f.pass().await;
    assert_eq!(del.len(), 1);
    assert_eq!(
        (del[0].op.as_str(), del[0].source_key.as_str()),
        ("delete", "v2|1234")
    );
}

fn gbk_fixture(encoding: &str) -> Fixture {
    let (bytes, _, _) = encoding_rs::GBK.encode("长沙县民政局（扶贫办）");
    let schema = format!(
        "CREATE TABLE t (id INTEGER PRIMARY KEY, unit TEXT, yr INTEGER, res TEXT);\
         INSERT INTO t VALUES (1, CAST(x'{}' AS TEXT), 2024, CAST(x'{}' AS TEXT));",
        hex::encode(&bytes),
        hex::encode(encoding_rs::GBK.encode("一般").0)
    );
    Fixture::new(
        &schema,
        &format!(
            "table = \"t\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"\n{encoding}"
        ),
        FIELDS,
        100,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gbk_text_round_trips_with_encoding_gbk_and_is_rejected_without() {
    let f = gbk_fixture("encoding = \"gbk\"");
    let (_, records) = f.pass().await;
    assert_eq!(records.len(), 1);
    let data: serde_json::Value = serde_json::from_str(&records[0].data).unwrap();
    assert_eq!(data["unit_name"], "长沙县民政局（扶贫办）");
    assert_eq!(data["result"], "fair");

    let f = gbk_fixture("");
    let config = AgentConfig::load(&f.config()).unwrap();
    let preview = fepd::pipeline::preview(&config, &config.connectors[0], 10)
        .await
        .unwrap();
    let rejected = preview[0].as_ref().expect_err("GBK bytes are not UTF-8");
    let fields: Vec<&str> = rejected.reasons.iter().map(|r| r.field.as_str()).collect();
    assert_eq!(fields, ["result", "unit_name"]);
    assert!(
        rejected
            .reasons
            .iter()
            .all(|r| r.rule == "text.encoding" && r.message.contains("gbk")),
        "{:?}",
        rejected.reasons
    );
    assert!(
        rejected.raw["unit"].as_str().unwrap().starts_with("0x"),
        "raw bytes kept as hex: {}",
        rejected.raw
    );
}

#[test]
fn missing_database_is_a_clear_error() {
    let f = Fixture::new(
        TABLE,
        "table = \"t\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"",
        FIELDS,
        10,
    );
    std::fs::remove_file(f.agent.path().join("legacy.db")).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let config = AgentConfig::load(&f.config()).unwrap();
    let err = rt
        .block_on(fepd::pipeline::check_connector(&config.connectors[0]))
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("connector units")
            && text.contains("does not exist")
            && text.contains("[source] path"),
        "{text}"
    );
}

/// A snapshot pass that fails (here: the table is gone) must not turn every key into a
/// delete; once the table is back, nothing at all is delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_snapshot_scan_deletes_nothing() {
    let f = Fixture::new(
        LEDGER,
        "table = \"t\"\nkey = [\"a\", \"b\"]\nmode = \"snapshot\"",
        FIELDS,
        300,
    );
    insert_ledger(&f.db(), 500);
    f.pass().await;
    f.db()
        .execute("ALTER TABLE t RENAME TO t_moved", [])
        .unwrap();
    let agent = f.agent().await;
    let summary = run_once(&agent).await.unwrap();
    assert_eq!(summary.failures.len(), 1);
    let message = summary.failures[0].1.to_string();
    assert!(
        message.contains("connector units") && message.contains("no such table"),
        "{message}"
    );
    assert_eq!(summary.delivered.records, 0);
    drop(agent);
    f.db()
        .execute("ALTER TABLE t_moved RENAME TO t", [])
        .unwrap();
    let (_, records) = f.pass().await;
    assert!(records.is_empty(), "{records:?}");
}
