//! The source database restarted in the middle of a backfill (the real server, stopped and
//! started), and the agent SIGKILLed in the middle of a backfill from PostgreSQL: in both
//! cases the delivered set equals an uninterrupted run. This file restarts the machine's
//! PostgreSQL and MariaDB, so it is its own test binary (cargo runs binaries one at a time).

mod common;

use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{AgentDir, DbKind, TestDb};

const FIELDS: &str = "unit_name = \"unit\"\nyear = \"yr\"\nresult = \"res\"";

async fn filled(kind: DbKind, rows: i64) -> TestDb {
    let db = TestDb::create(kind).await;
    let ts = db.timestamp_type();
    db.exec(&format!("CREATE TABLE t (id BIGINT PRIMARY KEY, unit VARCHAR(100), yr INTEGER, res VARCHAR(20), updated_at {ts} NOT NULL)")).await;
    let values: Vec<String> = (1..=rows)
        .map(|i| {
            format!(
                "({i}, '单位{i}', 2024, '好', '2024-06-01 10:{:02}:{:02}')",
                (i / 60) % 60,
                i % 60
            )
        })
        .collect();
    for chunk in values.chunks(2000) {
        db.exec(&format!(
            "INSERT INTO t (id, unit, yr, res, updated_at) VALUES {}",
            chunk.join(", ")
        ))
        .await;
    }
    db
}

fn sh(cmd: &str) -> bool {
    Command::new("bash")
        .args(["-c", cmd])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

fn wait_until(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ready() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn restart(kind: DbKind) {
    match kind {
        DbKind::Postgres => {
            let cluster = std::fs::read_dir("/etc/postgresql")
                .unwrap()
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .max()
                .unwrap();
            assert!(
                sh(&format!(
                    "pg_ctlcluster --skip-systemctl-redirect {cluster} main restart -m fast"
                )),
                "PostgreSQL restart"
            );
            wait_until("PostgreSQL", Duration::from_secs(60), || {
                sh("psql -h 127.0.0.1 -U postgres -d postgres -Atc 'select 1'")
            });
        }
        DbKind::Mysql => {
            assert!(
                sh("mariadb-admin -h 127.0.0.1 -u root shutdown"),
                "MariaDB shutdown"
            );
            // start-stop-daemon --oknodo does nothing while the old process is still exiting.
            wait_until("MariaDB to exit", Duration::from_secs(60), || {
                !sh("pgrep -x mariadbd")
            });
            assert!(
                sh("start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd"),
                "MariaDB start"
            );
            wait_until("MariaDB", Duration::from_secs(60), || {
                sh("mariadb -h 127.0.0.1 -u root -e 'select 1'")
            });
        }
    }
}

fn batches_in(dir: &std::path::Path) -> usize {
    std::fs::read_dir(dir.join("outbox"))
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

#[test]
fn source_restarted_mid_backfill_retries_and_loses_nothing() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    for kind in [DbKind::Postgres, DbKind::Mysql] {
        let rows = 12_000;
        let db = rt.block_on(filled(kind, rows));
        // Throttled so the backfill lasts a few seconds: time to restart the server under it.
        let agent = AgentDir::new(
            &db.source_toml(),
            "table = \"t\"\nkey = \"id\"\nmode = \"timestamp\"\ncolumn = \"updated_at\"\nfetch_size = 200\nmax_rows_per_second = 3000",
            FIELDS,
            300,
        );
        let path = agent.path().to_path_buf();
        let handle = rt.spawn(async move {
            let a = agent.agent().await;
            let summary = fepd::pipeline::run_once(&a).await.unwrap();
            (agent, summary)
        });
        wait_until("the first batches", Duration::from_secs(30), || {
            batches_in(&path) >= 3
        });
        restart(kind);
        let (agent, summary) = rt.block_on(handle).unwrap();
        assert!(
            summary.failures.is_empty(),
            "{kind:?}: {:?}",
            summary.failures
        );
        let all = agent.delivered();
        assert_eq!(all.len() as i64, rows, "{kind:?}: every row, once");
        let unique: std::collections::BTreeSet<_> =
            all.iter().map(|r| r.source_key.clone()).collect();
        assert_eq!(unique.len() as i64, rows, "{kind:?}");
        agent.verify();
        rt.block_on(db.drop_db());
    }
}

#[test]
fn sigkill_mid_backfill_from_postgres_then_restart_equals_uninterrupted() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let db = rt.block_on(filled(DbKind::Postgres, 8_000));
    let extract = "table = \"t\"\nkey = \"id\"\nmode = \"timestamp\"\ncolumn = \"updated_at\"\nfetch_size = 500";
    let run = |agent: &AgentDir, crash: Option<&str>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_fepd"));
        cmd.arg("--config")
            .arg(agent.config_path())
            .args(["run", "--once", "--log", "error"])
            .stdout(Stdio::null())
            .env_remove("FEPD_CRASH_AT");
        if let Some(c) = crash {
            cmd.env("FEPD_CRASH_AT", c);
        }
        cmd.status().unwrap()
    };
    let reference = AgentDir::new(&db.source_toml(), extract, FIELDS, 400);
    assert!(run(&reference, None).success());
    let want = reference.delivered();
    assert_eq!(want.len(), 8_000);
    for crashes in [
        &["after_spool_commit:4"][..],
        &["after_sink_write:7"],
        &["after_spool_commit:2", "after_sink_write:3"],
    ] {
        let agent = AgentDir::new(&db.source_toml(), extract, FIELDS, 400);
        for c in crashes {
            assert_eq!(run(&agent, Some(c)).signal(), Some(libc::SIGKILL), "{c}");
        }
        assert!(run(&agent, None).success());
        assert!(
            agent.delivered() == want,
            "{crashes:?}: differs from the uninterrupted run"
        );
        agent.verify();
    }
    rt.block_on(db.drop_db());
}
