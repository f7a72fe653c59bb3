//! Helpers shared by the integration tests: a demo setup in a temporary directory, and
//! reading back what the dir sink delivered.

#![allow(dead_code)]

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
