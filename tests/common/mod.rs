//! Helpers shared by the integration tests: a demo setup in a temporary directory, and
//! reading back what the dir sink delivered.

#![allow(dead_code)]

pub mod broker;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fepd::config::AgentConfig;
use fepd::demo;
use fepd::pipeline::Agent;

/// A delivered record as the platform sees it (without `collected_at` and `hash`, which
/// legitimately differ between two runs over the same data).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Delivered {
    pub seq: i64,
    pub id: String,
    pub op: String,
    pub source_key: String,
    pub data: String,
}

/// A demo in a temporary directory: legacy database, config, signing key.
pub struct DemoDir {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub generated: demo::Generated,
}

impl DemoDir {
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn db(&self) -> PathBuf {
        self.dir.path().join("legacy.db")
    }

    pub fn outbox(&self) -> PathBuf {
        self.dir.path().join("outbox")
    }

    pub fn load(&self) -> AgentConfig {
        AgentConfig::load(&self.config).expect("demo config loads")
    }

    pub async fn agent(&self) -> Agent {
        Agent::open(self.load()).await.expect("agent opens")
    }

    pub fn public_key(&self) -> ed25519_dalek::VerifyingKey {
        fepd::keys::load_signing_key(&self.dir.path().join("signing.key"))
            .expect("key")
            .verifying_key()
    }
}

/// Generates a demo with `rows` subsidy rows; `batch_size` overrides the spool's.
pub async fn demo_dir(rows: usize, batch_size: usize) -> DemoDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let generated = demo::generate(&dir.path().join("legacy.db"), rows)
        .await
        .expect("generate");
    let config = demo::write_config(dir.path()).expect("config");
    let text = std::fs::read_to_string(&config).expect("read config");
    std::fs::write(
        &config,
        text.replace("batch_size = 1000", &format!("batch_size = {batch_size}")),
    )
    .expect("write config");
    fepd::keys::generate_signing_key(&dir.path().join("signing.key")).expect("key");
    DemoDir {
        dir,
        config,
        generated,
    }
}

/// Another agent directory reading the same legacy database (its own state and outbox).
pub fn sibling_agent(demo: &DemoDir) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    let cdir = dir.path().join("connectors.d");
    std::fs::create_dir_all(&cdir).expect("mkdir");
    std::fs::copy(&demo.config, dir.path().join("fepd.toml")).expect("copy config");
    let db = demo.db();
    for f in ["subsidy.toml", "ledger.toml"] {
        let text = std::fs::read_to_string(demo.path().join("connectors.d").join(f)).expect("read");
        std::fs::write(
            cdir.join(f),
            text.replace("../legacy.db", &db.display().to_string()),
        )
        .expect("write");
    }
    std::fs::copy(
        demo.path().join("signing.key"),
        dir.path().join("signing.key"),
    )
    .expect("copy key");
    dir
}

/// Every record in a dir-sink outbox, per connector, in seq order.
pub fn read_outbox(outbox: &Path) -> BTreeMap<String, Vec<Delivered>> {
    let mut out: BTreeMap<String, Vec<Delivered>> = BTreeMap::new();
    let mut entries: Vec<PathBuf> = std::fs::read_dir(outbox)
        .expect("outbox")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.to_string_lossy().ends_with(".ndjson.gz")
                && !p.file_name().unwrap().to_string_lossy().starts_with('.')
        })
        .collect();
    entries.sort();
    for p in entries {
        let body = fepd::envelope::decode_body(&std::fs::read(&p).expect("read")).expect("gunzip");
        for line in body.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            let v: serde_json::Value = serde_json::from_slice(line).expect("json line");
            let connector = p
                .file_name()
                .unwrap()
                .to_string_lossy()
                .rsplit_once('-')
                .unwrap()
                .0
                .to_string();
            out.entry(connector).or_default().push(Delivered {
                seq: v["seq"].as_i64().unwrap(),
                id: v["id"].as_str().unwrap().to_string(),
                op: v["op"].as_str().unwrap().to_string(),
                source_key: v["source_key"].as_str().unwrap().to_string(),
                data: v["data"].to_string(),
            });
        }
    }
    for records in out.values_mut() {
        records.sort();
    }
    out
}

/// Asserts a connector's records run 1..=n without gap or duplicate.
pub fn assert_contiguous(records: &[Delivered]) {
    for (i, r) in records.iter().enumerate() {
        assert_eq!(r.seq, i as i64 + 1, "seq gap or duplicate near {:?}", r);
    }
}

/// An agent directory with one connector named `units` (record type poverty_assessment)
/// over any source: `source` is the `[source]` body, `extract` the `[extract]` body.
pub struct AgentDir {
    pub dir: tempfile::TempDir,
}

impl AgentDir {
    pub fn new(source: &str, extract: &str, fields: &str, batch_size: usize) -> AgentDir {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::create_dir_all(dir.path().join("connectors.d")).unwrap();
        std::fs::write(
            dir.path().join("fepd.toml"),
            format!(
                "agent_id = \"t\"\nregion_code = \"430124\"\nstate_dir = \"state\"\nsigning_key = \"key\"\n\
                 [sink]\ntype = \"dir\"\npath = \"outbox\"\n[spool]\nbatch_size = {batch_size}\n"
            ),
        )
        .unwrap();
        std::fs::write(
            dir.path().join("connectors.d/units.toml"),
            format!("record_type = \"poverty_assessment\"\n[source]\n{source}\n[extract]\n{extract}\n[fields]\n{fields}\n"),
        )
        .unwrap();
        fepd::keys::generate_signing_key(&dir.path().join("key")).unwrap();
        AgentDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("fepd.toml")
    }

    pub fn load(&self) -> AgentConfig {
        AgentConfig::load(&self.config_path()).unwrap_or_else(|e| panic!("{e}"))
    }

    pub async fn agent(&self) -> Agent {
        Agent::open(self.load()).await.expect("agent opens")
    }

    /// One pass with a fresh agent (as after a restart); returns what it delivered.
    pub async fn pass(&self) -> (fepd::pipeline::RunSummary, Vec<Delivered>) {
        let before = self.delivered().len();
        let agent = self.agent().await;
        let summary = fepd::pipeline::run_once(&agent).await.expect("run");
        assert!(summary.failures.is_empty(), "{:?}", summary.failures);
        let all = self.delivered();
        (summary, all[before..].to_vec())
    }

    /// A pass asked to stop before it starts: it reads one chunk, commits it and returns.
    pub async fn interrupted_pass(&self) -> fepd::pipeline::PassStats {
        let agent = self.agent().await;
        agent.stop.request();
        let notify = std::sync::Arc::new(tokio::sync::Notify::new());
        fepd::pipeline::run_pass(&agent, &agent.config.connectors[0], &notify)
            .await
            .expect("pass")
    }

    pub fn delivered(&self) -> Vec<Delivered> {
        let outbox = self.dir.path().join("outbox");
        if !outbox.exists() {
            return Vec::new();
        }
        let all = read_outbox(&outbox).remove("units").unwrap_or_default();
        assert_contiguous(&all);
        all
    }

    pub fn verify(&self) {
        let key = fepd::keys::load_signing_key(&self.dir.path().join("key"))
            .unwrap()
            .verifying_key();
        let report = fepd::verify::verify_dir(&self.dir.path().join("outbox"), &key).unwrap();
        assert!(report.ok(), "{:?}", report.breaks);
    }
}

pub fn keys_of(records: &[Delivered]) -> Vec<String> {
    let mut k: Vec<String> = records.iter().map(|r| r.source_key.clone()).collect();
    k.sort();
    k
}

/// A uniquely named scratch database on the machine's PostgreSQL or MariaDB.
pub struct TestDb {
    pub kind: DbKind,
    pub name: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DbKind {
    Postgres,
    Mysql,
}

pub const PG_ADMIN: &str = "postgres://postgres@127.0.0.1:5432/postgres";
pub const MY_ADMIN: &str = "mysql://root@127.0.0.1:3306/test";

fn unique_name() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "fepd_t_{}_{}_{}",
        std::process::id(),
        nanos,
        N.fetch_add(1, Ordering::SeqCst)
    )
}

impl TestDb {
    pub async fn create(kind: DbKind) -> TestDb {
        let name = unique_name();
        match kind {
            DbKind::Postgres => {
                let admin = sqlx::PgPool::connect(PG_ADMIN)
                    .await
                    .expect("PostgreSQL on 127.0.0.1:5432 (scripts/test starts it)");
                sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
                    .execute(&admin)
                    .await
                    .unwrap();
            }
            DbKind::Mysql => {
                let admin = sqlx::MySqlPool::connect(MY_ADMIN)
                    .await
                    .expect("MariaDB on 127.0.0.1:3306 (scripts/test starts it)");
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "CREATE DATABASE {name} CHARACTER SET utf8mb4"
                )))
                .execute(&admin)
                .await
                .unwrap();
            }
        }
        TestDb { kind, name }
    }

    pub fn url(&self) -> String {
        match self.kind {
            DbKind::Postgres => format!("postgres://postgres@127.0.0.1:5432/{}", self.name),
            DbKind::Mysql => format!("mysql://root@127.0.0.1:3306/{}", self.name),
        }
    }

    /// The connector's `[source]` body for this database.
    pub fn source_toml(&self) -> String {
        match self.kind {
            DbKind::Postgres => format!(
                "driver = \"postgres\"\nhost = \"127.0.0.1\"\ndatabase = \"{}\"\nuser = \"postgres\"\ntls = \"disable\"",
                self.name
            ),
            DbKind::Mysql => format!(
                "driver = \"mysql\"\nhost = \"127.0.0.1\"\ndatabase = \"{}\"\nuser = \"root\"\ntls = \"disable\"",
                self.name
            ),
        }
    }

    /// Runs statements separated by `;` (no `;` inside them).
    pub async fn exec(&self, sql: &str) {
        match self.kind {
            DbKind::Postgres => {
                let pool = sqlx::PgPool::connect(&self.url()).await.unwrap();
                sqlx::raw_sql(sqlx::AssertSqlSafe(sql.to_string()))
                    .execute(&pool)
                    .await
                    .unwrap_or_else(|e| panic!("{sql}: {e}"));
                pool.close().await;
            }
            DbKind::Mysql => {
                let pool = sqlx::MySqlPool::connect(&self.url()).await.unwrap();
                for stmt in sql.split(';').filter(|s| !s.trim().is_empty()) {
                    sqlx::raw_sql(sqlx::AssertSqlSafe(stmt.to_string()))
                        .execute(&pool)
                        .await
                        .unwrap_or_else(|e| panic!("{stmt}: {e}"));
                }
                pool.close().await;
            }
        }
    }

    pub fn timestamp_type(&self) -> &'static str {
        match self.kind {
            DbKind::Postgres => "TIMESTAMP(6)",
            DbKind::Mysql => "DATETIME(6)",
        }
    }
}

impl TestDb {
    /// Drops the database (at the end of a test that passed).
    pub async fn drop_db(self) {
        match self.kind {
            DbKind::Postgres => {
                if let Ok(admin) = sqlx::PgPool::connect(PG_ADMIN).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                        self.name
                    )))
                    .execute(&admin)
                    .await;
                }
            }
            DbKind::Mysql => {
                if let Ok(admin) = sqlx::MySqlPool::connect(MY_ADMIN).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {}",
                        self.name
                    )))
                    .execute(&admin)
                    .await;
                }
            }
        }
    }
}
