//! The `postgres` and `mysql` drivers against the real PostgreSQL (127.0.0.1:5432) and
//! MariaDB (127.0.0.1:3306) of this machine: exact type decoding, and the cases where
//! extraction tools lose or repeat rows — late commits, many rows sharing a timestamp
//! across batches and restarts, snapshot diffs — plus GBK text.

mod common;

use common::{AgentDir, DbKind, TestDb, keys_of};
use fepd::value::Value;
use futures_util::StreamExt;

const FIELDS: &str = "unit_name = \"unit\"\nyear = \"yr\"\nresult = \"res\"";
const KINDS: [DbKind; 2] = [DbKind::Postgres, DbKind::Mysql];

async fn units_table(db: &TestDb) {
    let ts = db.timestamp_type();
    db.exec(&format!("CREATE TABLE t (id BIGINT PRIMARY KEY, unit VARCHAR(100), yr INTEGER, res VARCHAR(20), updated_at {ts} NOT NULL)")).await;
}

async fn insert_units(db: &TestDb, ids: std::ops::Range<i64>, ts: &str) {
    let values: Vec<String> = ids
        .map(|i| format!("({i}, '单位{i}', 2024, '好', '{ts}')"))
        .collect();
    for chunk in values.chunks(1000) {
        db.exec(&format!(
            "INSERT INTO t (id, unit, yr, res, updated_at) VALUES {}",
            chunk.join(", ")
        ))
        .await;
    }
}

/// Reads every row of a query through the driver, as the pipeline would.
async fn read_all(agent: &AgentDir, sql_table: &str) -> Vec<Vec<Value>> {
    let config = agent.load();
    let c = &config.connectors[0];
    let driver = fepd::source::open(c)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let q = fepd::source::SelectQuery {
        sql: format!("SELECT * FROM {sql_table} ORDER BY id"),
        binds: vec![],
    };
    let rows: Vec<_> = driver.rows(&q).collect().await;
    rows.into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("{e}")))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_decode_exactly() {
    for kind in KINDS {
        let db = TestDb::create(kind).await;
        let (numeric, ts, tstz, boolean) = match kind {
            DbKind::Postgres => ("NUMERIC(38,10)", "TIMESTAMP(6)", "TIMESTAMPTZ", "BOOLEAN"),
            DbKind::Mysql => (
                "DECIMAL(38,10)",
                "DATETIME(6)",
                "TIMESTAMP(6) NULL",
                "BOOLEAN",
            ),
        };
        db.exec(&format!(
            "CREATE TABLE ty (id INTEGER PRIMARY KEY, big {numeric}, money DECIMAL(19,4), d DATE, ts {ts}, tz {tstz}, c CHAR(10), v VARCHAR(20), tx TEXT, b {boolean}, s SMALLINT, i INTEGER, l BIGINT, n INTEGER)"
        ))
        .await;
        let tz_literal = match kind {
            DbKind::Postgres => "'2024-03-05 01:02:03.123456+08'",
            // MySQL TIMESTAMP literals are in the session zone (UTC here).
            DbKind::Mysql => "'2024-03-04 17:02:03.123456'",
        };
        db.exec(&format!(
            "INSERT INTO ty VALUES (1, 1234567890123456789012345678.1234567891, 1234.5600, '2024-02-29', '2024-03-05 23:59:59.999999', {tz_literal}, 'ab', '中文 ', '长文本', TRUE, -32768, 2147483647, 9223372036854775807, NULL)"
        ))
        .await;
        let agent = AgentDir::new(
            &db.source_toml(),
            "table = \"ty\"\nkey = \"id\"\nmode = \"snapshot\"",
            "unit_name = \"v\"\nyear = { value = 2024 }\nresult = { value = \"good\" }",
            10,
        );
        let rows = read_all(&agent, "ty").await;
        let r = &rows[0];
        assert_eq!(r[0], Value::Int(1), "{kind:?}");
        // 38 digits do not fit rust_decimal: kept as exact text.
        assert_eq!(
            r[1],
            Value::Text("1234567890123456789012345678.1234567891".into()),
            "{kind:?}"
        );
        assert_eq!(
            r[2],
            Value::Decimal("1234.5600".parse().unwrap()),
            "{kind:?}"
        );
        assert_eq!(
            r[3],
            Value::Date(chrono::NaiveDate::from_ymd_opt(2024, 2, 29).unwrap()),
            "{kind:?}"
        );
        assert_eq!(
            r[4],
            Value::DateTime(
                chrono::NaiveDate::from_ymd_opt(2024, 3, 5)
                    .unwrap()
                    .and_hms_micro_opt(23, 59, 59, 999_999)
                    .unwrap()
            ),
            "{kind:?}"
        );
        let Value::DateTimeTz(tz) = &r[5] else {
            panic!("{kind:?}: {:?}", r[5])
        };
        assert_eq!(
            tz.naive_utc(),
            chrono::NaiveDate::from_ymd_opt(2024, 3, 4)
                .unwrap()
                .and_hms_micro_opt(17, 2, 3, 123_456)
                .unwrap(),
            "{kind:?}"
        );
        assert_eq!(
            r[6],
            Value::Text("ab".into()),
            "{kind:?}: CHAR padding is not data"
        );
        assert_eq!(
            r[7],
            Value::Text("中文 ".into()),
            "{kind:?}: VARCHAR keeps its spaces"
        );
        assert_eq!(r[8], Value::Text("长文本".into()), "{kind:?}");
        assert!(
            matches!(r[9], Value::Bool(true) | Value::Int(1)),
            "{kind:?}: {:?}",
            r[9]
        );
        assert_eq!(r[10], Value::Int(-32768), "{kind:?}");
        assert_eq!(r[11], Value::Int(2147483647), "{kind:?}");
        assert_eq!(r[12], Value::Int(9223372036854775807), "{kind:?}");
        assert_eq!(r[13], Value::Null, "{kind:?}");
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_commit_is_delivered_and_nothing_twice() {
    for kind in KINDS {
        let db = TestDb::create(kind).await;
        units_table(&db).await;
        let agent = AgentDir::new(
            &db.source_toml(),
            "table = \"t\"\nkey = \"id\"\nmode = \"timestamp\"\ncolumn = \"updated_at\"\nlag = \"5m\"",
            FIELDS,
            100,
        );
        insert_units(&db, 1..3, "2024-06-01 10:00:00").await;

        // Transaction 1 takes its timestamp t1 first but commits last.
        let (mut tx1, mut tx2) = (open_tx(&db).await, open_tx(&db).await);
        tx1.insert(10, "2024-06-01 10:01:00.000001").await;
        tx2.insert(11, "2024-06-01 10:02:00").await;
        tx2.commit().await;
        let (_, first) = agent.pass().await;
        assert_eq!(keys_of(&first), ["1", "11", "2"], "{kind:?}");
        tx1.commit().await;
        let (summary, second) = agent.pass().await;
        assert_eq!(
            keys_of(&second),
            ["10"],
            "{kind:?}: the late row is delivered, nothing else"
        );
        assert!(
            summary.passes[0].unchanged >= 1,
            "{kind:?}: the lag window was re-read and suppressed"
        );
        let (_, third) = agent.pass().await;
        assert!(third.is_empty(), "{kind:?}");
        agent.verify();
        db.drop_db().await;
    }
}

/// A transaction left open by the test.
enum Tx {
    Pg(sqlx::Transaction<'static, sqlx::Postgres>),
    My(sqlx::Transaction<'static, sqlx::MySql>),
}

async fn open_tx(db: &TestDb) -> Tx {
    match db.kind {
        DbKind::Postgres => Tx::Pg(
            sqlx::PgPool::connect(&db.url())
                .await
                .unwrap()
                .begin()
                .await
                .unwrap(),
        ),
        DbKind::Mysql => Tx::My(
            sqlx::MySqlPool::connect(&db.url())
                .await
                .unwrap()
                .begin()
                .await
                .unwrap(),
        ),
    }
}

impl Tx {
    async fn insert(&mut self, id: i64, ts: &str) {
        let sql = format!(
            "INSERT INTO t (id, unit, yr, res, updated_at) VALUES ({id}, '单位{id}', 2024, '好', '{ts}')"
        );
        match self {
            Tx::Pg(tx) => {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut **tx)
                    .await
                    .unwrap();
            }
            Tx::My(tx) => {
                sqlx::query(sqlx::AssertSqlSafe(sql))
                    .execute(&mut **tx)
                    .await
                    .unwrap();
            }
        }
    }

    async fn commit(self) {
        match self {
            Tx::Pg(tx) => tx.commit().await.unwrap(),
            Tx::My(tx) => tx.commit().await.unwrap(),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thousands_sharing_one_timestamp_across_batches_and_a_restart() {
    for kind in KINDS {
        let db = TestDb::create(kind).await;
        units_table(&db).await;
        insert_units(&db, 1..3001, "2024-06-01 10:00:00.5").await;
        let agent = AgentDir::new(
            &db.source_toml(),
            "table = \"t\"\nkey = \"id\"\nmode = \"timestamp\"\ncolumn = \"updated_at\"\nfetch_size = 500",
            FIELDS,
            700,
        );
        let first = agent.interrupted_pass().await.records;
        assert!(first > 0 && first < 3000, "{kind:?}: {first}");
        let (summary, delivered) = agent.pass().await;
        assert_eq!(first + summary.passes[0].records, 3000, "{kind:?}");
        assert_eq!(delivered.len(), 3000, "{kind:?}");
        insert_units(&db, 3001..3011, "2024-06-01 10:00:00.5").await;
        let (_, late) = agent.pass().await;
        assert_eq!(late.len(), 10, "{kind:?}");
        let (_, none) = agent.pass().await;
        assert!(none.is_empty(), "{kind:?}");
        let unique: std::collections::BTreeSet<_> = agent
            .delivered()
            .into_iter()
            .map(|r| r.source_key)
            .collect();
        assert_eq!(unique.len(), 3010, "{kind:?}: no row twice");
        agent.verify();
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_without_timestamp_delivers_inserts_updates_deletes_only() {
    for kind in KINDS {
        let db = TestDb::create(kind).await;
        db.exec("CREATE TABLE s (a VARCHAR(10) NOT NULL, b INTEGER NOT NULL, unit VARCHAR(50), yr INTEGER, res VARCHAR(10), PRIMARY KEY (a, b))").await;
        let values: Vec<String> = (0..1200)
            .map(|i| format!("('v{}', {i}, '单位{i}', 2023, 'fair')", i % 7))
            .collect();
        db.exec(&format!("INSERT INTO s VALUES {}", values.join(", ")))
            .await;
        let agent = AgentDir::new(
            &db.source_toml(),
            "table = \"s\"\nkey = [\"a\", \"b\"]\nmode = \"snapshot\"",
            FIELDS,
            400,
        );
        let (_, first) = agent.pass().await;
        assert_eq!(first.len(), 1200, "{kind:?}");
        db.exec("UPDATE s SET res = 'poor' WHERE b IN (3, 500); DELETE FROM s WHERE b IN (10, 11); INSERT INTO s VALUES ('zz', 5000, '新', 2023, 'good')").await;
        let (_, second) = agent.pass().await;
        let ups: Vec<_> = second
            .iter()
            .filter(|r| r.op == "upsert")
            .cloned()
            .collect();
        let dels: Vec<_> = second
            .iter()
            .filter(|r| r.op == "delete")
            .cloned()
            .collect();
        assert_eq!(keys_of(&ups), ["v3|3", "v3|500", "zz|5000"], "{kind:?}");
        assert_eq!(keys_of(&dels), ["v3|10", "v4|11"], "{kind:?}");
        let (_, third) = agent.pass().await;
        assert!(third.is_empty(), "{kind:?}");
        agent.verify();
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_gbk_table_and_gbk_bytes_in_latin1() {
    let db = TestDb::create(DbKind::Mysql).await;
    db.exec("CREATE TABLE g (id INTEGER PRIMARY KEY, unit VARCHAR(50), yr INTEGER, res VARCHAR(10)) CHARACTER SET gbk").await;
    db.exec("INSERT INTO g VALUES (1, '长沙县民政局（扶贫办）', 2024, '较好')")
        .await;
    let agent = AgentDir::new(
        &db.source_toml(),
        "table = \"g\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"",
        FIELDS,
        10,
    );
    let (_, records) = agent.pass().await;
    let data: serde_json::Value = serde_json::from_str(&records[0].data).unwrap();
    assert_eq!(data["unit_name"], "长沙县民政局（扶贫办）");
    assert_eq!(data["result"], "good");

    // A legacy program wrote GBK bytes into latin1 columns.
    db.exec("CREATE TABLE l (id INTEGER PRIMARY KEY, unit VARCHAR(50), yr INTEGER, res VARCHAR(10)) CHARACTER SET latin1").await;
    let (unit, _, _) = encoding_rs::GBK.encode("浏阳市财政局");
    let (res, _, _) = encoding_rs::GBK.encode("一般");
    db.exec(&format!("INSERT INTO l VALUES (1, CAST(x'{}' AS CHAR CHARACTER SET latin1), 2024, CAST(x'{}' AS CHAR CHARACTER SET latin1))", hex::encode(&unit), hex::encode(&res))).await;
    let agent = AgentDir::new(
        &db.source_toml(),
        "table = \"l\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"\nencoding = \"gbk\"",
        FIELDS,
        10,
    );
    let (_, records) = agent.pass().await;
    let data: serde_json::Value = serde_json::from_str(&records[0].data).unwrap();
    assert_eq!(data["unit_name"], "浏阳市财政局");
    assert_eq!(data["result"], "fair");
    db.drop_db().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_warns_about_a_writable_account_and_refuses_nothing_it_should_not() {
    for kind in KINDS {
        let db = TestDb::create(kind).await;
        units_table(&db).await;
        let agent = AgentDir::new(
            &db.source_toml(),
            "table = \"t\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"",
            FIELDS,
            10,
        );
        let config = agent.load();
        let check = fepd::pipeline::check_connector(&config.connectors[0])
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        // The test accounts (postgres, root) can write: check must say so.
        assert_eq!(check.can_write, Some(true), "{kind:?}");
        db.drop_db().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_password_and_unreachable_server_are_clear_errors() {
    let db = TestDb::create(DbKind::Mysql).await;
    units_table(&db).await;
    // SAFETY: set before the connector reads it, in this test only.
    unsafe { std::env::set_var("FEPD_TEST_WRONG_PW", "definitely-wrong") };
    let src = format!(
        "driver = \"mysql\"\nhost = \"127.0.0.1\"\ndatabase = \"{}\"\nuser = \"fepd_no_such_user\"\npassword = {{ env = \"FEPD_TEST_WRONG_PW\" }}\ntls = \"disable\"",
        db.name
    );
    let agent = AgentDir::new(
        &src,
        "table = \"t\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"",
        FIELDS,
        10,
    );
    let config = agent.load();
    assert!(!format!("{config:?}").contains("definitely-wrong"));
    let err = fepd::pipeline::check_connector(&config.connectors[0])
        .await
        .unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("connector units") && text.contains("fepd_no_such_user@127.0.0.1:3306"),
        "{text}"
    );
    assert!(
        !text.contains("definitely-wrong"),
        "no secret in errors: {text}"
    );
    assert!(
        !err.is_retryable(),
        "a refused login is not retried: {text}"
    );

    let src = "driver = \"postgres\"\nhost = \"127.0.0.1\"\nport = 1\ndatabase = \"x\"\nuser = \"postgres\"\ntls = \"disable\"\nconnect_timeout = \"2s\"";
    let agent = AgentDir::new(
        src,
        "table = \"t\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"",
        FIELDS,
        10,
    );
    let err = fepd::pipeline::check_connector(&agent.load().connectors[0])
        .await
        .unwrap_err();
    assert!(
        err.is_retryable(),
        "an unreachable server is retried: {err}"
    );
    db.drop_db().await;
}

/// `fepd backfill`: progress lines when not on a terminal, Ctrl-C (SIGINT) stops it
/// cleanly, running it again resumes; every row exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_command_reports_progress_stops_on_sigint_and_resumes() {
    let db = TestDb::create(DbKind::Postgres).await;
    units_table(&db).await;
    insert_units(&db, 1..6001, "2016-12-31 23:59:59").await;
    db.exec("UPDATE t SET updated_at = updated_at + (id || ' seconds')::interval")
        .await;
    let agent = AgentDir::new(
        &db.source_toml(),
        "table = \"t\"\nkey = \"id\"\nmode = \"timestamp\"\ncolumn = \"updated_at\"\nstart_from = \"2017-01-01\"\nfetch_size = 100\nmax_rows_per_second = 1000",
        FIELDS,
        100,
    );
    let bin = env!("CARGO_BIN_EXE_fepd");
    let child = std::process::Command::new(bin)
        .arg("--config")
        .arg(agent.config_path())
        .args(["backfill", "units", "--log", "error"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Let it run a while (throttled to 1,000 rows/s), then Ctrl-C.
    let outbox = agent.path().join("outbox");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while std::fs::read_dir(&outbox).map(|d| d.count()).unwrap_or(0) < 8 {
        assert!(
            std::time::Instant::now() < deadline,
            "backfill made no progress"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // SAFETY: signalling our own child process.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("interrupted: run `fepd backfill units` again"),
        "{stdout}"
    );
    let first = agent.delivered().len();
    assert!(first > 0 && first < 6000, "{first}");

    let out = std::process::Command::new(bin)
        .arg("--config")
        .arg(agent.config_path())
        .args(["backfill", "units", "--log", "error"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}{stderr}");
    assert!(
        stderr.contains("backfill units:") && stderr.contains("rows/s"),
        "progress lines: {stderr}"
    );
    let all = agent.delivered();
    assert_eq!(all.len(), 6000, "every row once across the interruption");
    agent.verify();
    db.drop_db().await;
}

async fn pg_ssl_in_use(agent: &AgentDir) -> Result<Option<i64>, fepd::source::SourceError> {
    let config = agent.load();
    let driver = fepd::source::open(&config.connectors[0]).await?;
    let q = fepd::source::SelectQuery {
        sql: "SELECT CASE WHEN ssl THEN 1 ELSE 0 END::bigint FROM pg_stat_ssl WHERE pid = pg_backend_pid()".into(),
        binds: vec![],
    };
    driver.scalar_i64(&q).await
}

/// TLS to PostgreSQL (the server's own snakeoil certificate: CN and SAN `localhost`):
/// `disable` is plain, `require` encrypts, a CA file is verified, `verify-full` checks the
/// host name too, and a certificate from another CA is refused with a clear error.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_tls_modes_and_verification() {
    let snakeoil = std::path::Path::new("/etc/ssl/certs/ssl-cert-snakeoil.pem");
    let admin = sqlx::PgPool::connect(common::PG_ADMIN).await.unwrap();
    let ssl: (String,) = sqlx::query_as("SHOW ssl").fetch_one(&admin).await.unwrap();
    if ssl.0 != "on" || !snakeoil.exists() {
        eprintln!(
            "PostgreSQL has no TLS here (ssl = {}); TLS modes not exercised",
            ssl.0
        );
        return;
    }
    let db = TestDb::create(DbKind::Postgres).await;
    units_table(&db).await;
    let extract = "table = \"t\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"";
    let source = |host: &str, tls: &str, ca: Option<&std::path::Path>| {
        let ca = ca
            .map(|p| format!("\nca_file = \"{}\"", p.display()))
            .unwrap_or_default();
        format!(
            "driver = \"postgres\"\nhost = \"{host}\"\ndatabase = \"{}\"\nuser = \"postgres\"\ntls = \"{tls}\"{ca}",
            db.name
        )
    };
    let plain = AgentDir::new(&source("127.0.0.1", "disable", None), extract, FIELDS, 10);
    assert_eq!(pg_ssl_in_use(&plain).await.unwrap(), Some(0));
    let required = AgentDir::new(&source("127.0.0.1", "require", None), extract, FIELDS, 10);
    assert_eq!(pg_ssl_in_use(&required).await.unwrap(), Some(1));
    let verified_ca = AgentDir::new(
        &source("127.0.0.1", "require", Some(snakeoil)),
        extract,
        FIELDS,
        10,
    );
    assert_eq!(pg_ssl_in_use(&verified_ca).await.unwrap(), Some(1));
    let full = AgentDir::new(
        &source("localhost", "verify-full", Some(snakeoil)),
        extract,
        FIELDS,
        10,
    );
    assert_eq!(pg_ssl_in_use(&full).await.unwrap(), Some(1));

    // verify-full to an address the certificate does not name.
    let wrong_host = AgentDir::new(
        &source("127.0.0.1", "verify-full", Some(snakeoil)),
        extract,
        FIELDS,
        10,
    );
    let e = pg_ssl_in_use(&wrong_host).await.unwrap_err().to_string();
    assert!(
        e.contains("connector units") && e.contains("cannot open source"),
        "{e}"
    );

    // A CA that did not sign the server's certificate.
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other-ca.pem");
    let made = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=other extranet CA",
        ])
        .arg("-keyout")
        .arg(dir.path().join("k.pem"))
        .arg("-out")
        .arg(&other_ca)
        .output()
        .unwrap();
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let foreign = AgentDir::new(
        &source("localhost", "verify-full", Some(&other_ca)),
        extract,
        FIELDS,
        10,
    );
    let e = pg_ssl_in_use(&foreign).await.unwrap_err();
    let text = e.to_string();
    assert!(
        text.to_lowercase().contains("certificate") || text.contains("UnknownIssuer"),
        "{text}"
    );
    assert!(
        !e.is_retryable(),
        "an untrusted certificate is not retried: {text}"
    );
    db.drop_db().await;
}

/// `query_timeout` cancels a query that runs too long, with an error naming the connector;
/// outside its `window` a connector is skipped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn query_timeout_and_window() {
    for kind in KINDS {
        let db = TestDb::create(kind).await;
        units_table(&db).await;
        insert_units(&db, 1..3, "2024-06-01 10:00:00").await;
        let sleep = match kind {
            DbKind::Postgres => "SELECT t.*, pg_sleep(3) AS z FROM t",
            // (SLEEP() interrupted by max_statement_time just returns 1; a real long query
            // is cancelled with an error.)
            DbKind::Mysql => {
                "SELECT t.* FROM t WHERE (SELECT count(*) FROM information_schema.columns a, information_schema.columns b, information_schema.columns c) > 0"
            }
        };
        let agent = AgentDir::new(
            &db.source_toml(),
            &format!(
                "query = \"{sleep}\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"\nquery_timeout = \"1s\""
            ),
            FIELDS,
            10,
        );
        let started = std::time::Instant::now();
        let a = agent.agent().await;
        let summary = fepd::pipeline::run_once(&a).await.unwrap();
        assert_eq!(
            summary.failures.len(),
            1,
            "{kind:?}: the slow query must fail"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "{kind:?}: cancelled after about 1 s"
        );
        let text = summary.failures[0].1.to_string();
        assert!(text.contains("connector units"), "{kind:?}: {text}");

        // A window that is not now: skipped, nothing read.
        let now = chrono::Utc::now()
            .with_timezone(&chrono_tz::Asia::Shanghai)
            .time();
        let start = now + chrono::Duration::hours(2);
        let end = now + chrono::Duration::hours(3);
        let window = format!("{}-{}", start.format("%H:%M"), end.format("%H:%M"));
        let agent = AgentDir::new(
            &db.source_toml(),
            &format!(
                "table = \"t\"\nkey = \"id\"\nmode = \"incrementing\"\ncolumn = \"id\"\nwindow = \"{window}\""
            ),
            FIELDS,
            10,
        );
        let (summary, delivered) = agent.pass().await;
        assert!(
            summary.passes.is_empty() && delivered.is_empty(),
            "{kind:?}: outside its window"
        );
        db.drop_db().await;
    }
}

/// Replaces a catalogue profile's `[source]` section by one for a test database.
fn profile_on(profile: &str, db: &TestDb) -> String {
    let text = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("connectors")
            .join(profile),
    )
    .unwrap();
    let start = text.find("[source]\n").unwrap();
    let end = start + text[start..].find("\n[extract]").unwrap();
    format!(
        "{}[source]\n{}\n{}",
        &text[..start],
        db.source_toml(),
        &text[end..]
    )
}

/// The PostgreSQL and MySQL profiles of the catalogue, each previewed against a fixture
/// schema shaped like the system it is for: a good row maps, a bad one is rejected with
/// its reasons.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_catalogue_profiles_preview_against_fixture_schemas() {
    let pg = TestDb::create(DbKind::Postgres).await;
    pg.exec(
        "CREATE SCHEMA yktxt;
         CREATE TABLE yktxt.bt_ffmx (ffbh VARCHAR(20) PRIMARY KEY, btxmdm VARCHAR(20), xm VARCHAR(40), sfzh CHAR(18), cjqhdm VARCHAR(12),
           yktzh VARCHAR(32), ffje NUMERIC(14,2), ffrq DATE, ffqj VARCHAR(7), bzbz VARCHAR(100), gxsj TIMESTAMP(6) NOT NULL);
         INSERT INTO yktxt.bt_ffmx VALUES
           ('FF2024000001', ' xm-2024-01', '张三', '11010519491231002x', '430124101201', '6217-0000-1111-2222', 1200.50, '2024-03-05', '2024-03', '每人每月100元', '2024-03-05 10:00:00'),
           ('FF2024000002', 'XM-2024-01', '', '110105194912310021', '430225101201', '6217000011112222', 100.00, '2024-03-05', '2024-03', NULL, '2024-03-05 10:00:01')",
    )
    .await;
    let my = TestDb::create(DbKind::Mysql).await;
    my.exec(
        "CREATE TABLE cw_pzfl (id INTEGER PRIMARY KEY, cun_dm VARCHAR(12), kjnd INTEGER, pzh VARCHAR(20), jzrq DATE, szfx VARCHAR(4),
           kmdm VARCHAR(10), zy VARCHAR(200), je DECIMAL(14,2), dfdw VARCHAR(100), xgsj DATETIME(6) NOT NULL);
         INSERT INTO cw_pzfl VALUES
           (1, '430124101201', 2024, '记-012', '2024-05-06', '支出', '541', '办公费用', 1234.50, '某建材店', '2024-05-06 09:00:00'),
           (2, '430124101201', 2024, '记-013', '2024-05-07', '转账', '999', '办公费用', 10.00, NULL, '2024-05-06 09:00:01')",
    )
    .await;
    // SAFETY: constant values, set before the profiles are loaded.
    unsafe {
        std::env::set_var("FEPD_ONECARD_DB_PASSWORD", "unused");
        std::env::set_var("FEPD_VILLAGE_DB_PASSWORD", "unused");
    }
    for (profile, db) in [
        ("postgres-onecard-subsidy.toml", &pg),
        ("mysql-village-accounting.toml", &my),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(profile);
        std::fs::write(&path, profile_on(profile, db)).unwrap();
        let c = fepd::config::load_connector(&path, false)
            .unwrap_or_else(|e| panic!("{profile}: {e:?}"));
        let agent = AgentDir::new(
            &db.source_toml(),
            "table = \"x\"\nkey = \"id\"\nmode = \"snapshot\"",
            FIELDS,
            10,
        );
        let config = agent.load();
        let results = fepd::pipeline::preview(&config, &c, 10)
            .await
            .unwrap_or_else(|e| panic!("{profile}: {e}"));
        assert_eq!(results.len(), 2, "{profile}");
        let good = results[0]
            .as_ref()
            .unwrap_or_else(|r| panic!("{profile}: {:?}", r.reasons));
        let data: serde_json::Value = serde_json::from_slice(&good.data).unwrap();
        let bad = results[1].as_ref().expect_err("second row is bad");
        let rules: Vec<&str> = bad.reasons.iter().map(|r| r.rule.as_str()).collect();
        match c.record_type.as_str() {
            "individual_subsidy" => {
                assert_eq!(data["project_code"], "XM-2024-01");
                assert_eq!(data["id_number"], "11010519491231002X");
                assert_eq!(data["bank_account"], "6217000011112222");
                assert_eq!(data["amount"], "1200.50");
                assert_eq!(
                    rules,
                    [
                        "idcard.check_char",
                        "required.missing",
                        "region.outside_agent"
                    ],
                    "{:?}",
                    bad.reasons
                );
            }
            "village_finance" => {
                assert_eq!(data["entry_code"], "430124101201-2024-1");
                assert_eq!(data["direction"], "expense");
                assert_eq!(data["subject_code"], "5401");
                assert_eq!(data["amount"], "1234.50");
                assert_eq!(
                    rules,
                    ["enum.unknown", "code_table.unknown"],
                    "{:?}",
                    bad.reasons
                );
            }
            other => panic!("{other}"),
        }
    }
    pg.drop_db().await;
    my.drop_db().await;
}
