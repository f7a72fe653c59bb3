//! Configuration: every shipped example and catalogue profile parses (and previews against
//! a fixture), and every kind of mistake is refused at load with the file, the key and a
//! hint.

use std::path::{Path, PathBuf};

use fepd::config::{AgentConfig, load_connector};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

fn catalogue() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(repo("connectors"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "the catalogue holds profiles");
    files
}

/// The catalogue's profiles read their database passwords from these variables.
fn set_catalogue_passwords() {
    // SAFETY: the same constant values from every test; set before any reads them.
    unsafe {
        std::env::set_var("FEPD_ONECARD_DB_PASSWORD", "x");
        std::env::set_var("FEPD_VILLAGE_DB_PASSWORD", "x");
    }
}

#[test]
fn every_catalogue_profile_loads() {
    set_catalogue_passwords();
    for f in catalogue() {
        let c = load_connector(&f, false).unwrap_or_else(|e| panic!("{}: {e:?}", f.display()));
        assert!(!c.fields.is_empty());
    }
}

/// The example agent config, with its connectors directory pointed at the catalogue.
fn example_agent(dir: &Path) -> PathBuf {
    let cdir = dir.join("connectors.d");
    std::fs::create_dir_all(&cdir).unwrap();
    for f in catalogue() {
        std::fs::copy(&f, cdir.join(f.file_name().unwrap())).unwrap();
    }
    let text = std::fs::read_to_string(repo("config/fepd.example.toml")).unwrap();
    assert!(text.contains("connectors_dir = \"/etc/fepd/connectors.d\""));
    let config = dir.join("fepd.toml");
    std::fs::write(
        &config,
        text.replace("/etc/fepd/connectors.d", &cdir.display().to_string()),
    )
    .unwrap();
    config
}

#[test]
fn example_agent_config_loads() {
    set_catalogue_passwords();
    let dir = tempfile::tempdir().unwrap();
    let config = AgentConfig::load(&example_agent(dir.path())).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.region_code, "430124");
    assert_eq!(config.connectors.len(), catalogue().len());
}

#[test]
fn demo_configs_load() {
    let dir = tempfile::tempdir().unwrap();
    let path = fepd::demo::write_config(dir.path()).unwrap();
    let config = AgentConfig::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.connectors.len(), 2);
}

/// Each catalogue profile, pointed at a fixture database with its tables, previews a good
/// row as a record and a bad row as a reject with its reason.
#[tokio::test]
async fn catalogue_profiles_preview_against_fixtures() {
    set_catalogue_passwords();
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("fixture.db");
    let conn = rusqlite::Connection::open(&db).unwrap();
    conn.execute_batch(
        "CREATE TABLE BT_FFMX (FFBH TEXT, BTXMDM TEXT, XM TEXT, SFZH TEXT, CJQHDM TEXT, YKTZH TEXT, FFJE NUMERIC, FFRQ TEXT, FFQJ TEXT, BZBZ TEXT, GXSJ TEXT);
         INSERT INTO BT_FFMX VALUES ('FF001', 'xm-2024-01', '张三', '11010519491231002x', '430124101201', '6217 0000 1111 2222', '1200.50', '2024/03/05', '202403', '每人每月100元', '2024-03-05 10:00:00');
         INSERT INTO BT_FFMX VALUES ('FF002', 'XM-2024-01', '李四', '110105194912310021', '430124101201', '6217000011112222', '100.505', '2024-03-05', '2024-03', NULL, '2024-03-05 10:00:01');
         CREATE TABLE CW_JZPZ (CUNDM TEXT, KJND INTEGER, PZH TEXT, FLH INTEGER, JZRQ TEXT, SZFX TEXT, KMDM TEXT, ZY TEXT, JE REAL, DFDW TEXT);
         INSERT INTO CW_JZPZ VALUES ('430124101201', 2024, '记-012', 1, '2024-05-06', '支出', '541', '办公费用', 1234.5, '某建材店');
         INSERT INTO CW_JZPZ VALUES ('430124101201', 2024, '记-012', 2, '2024-05-06', '支出', '999', '办公费用', 10, NULL);",
    )
    .unwrap();
    drop(conn);
    let agent_config = example_agent(dir.path());
    for f in std::fs::read_dir(dir.path().join("connectors.d")).unwrap() {
        let f = f.unwrap().path();
        let text = std::fs::read_to_string(&f).unwrap();
        // Only the SQLite profiles; the server ones are previewed in tests/databases.rs.
        let Some(start) = text.find("\npath = \"").map(|i| i + 9) else {
            continue;
        };
        let end = start + text[start..].find('"').unwrap();
        std::fs::write(
            &f,
            format!("{}{}{}", &text[..start], db.display(), &text[end..]),
        )
        .unwrap();
    }
    let config = AgentConfig::load(&agent_config).unwrap_or_else(|e| panic!("{e}"));
    for c in config
        .connectors
        .iter()
        .filter(|c| c.source.driver_name() == "sqlite")
    {
        let results = fepd::pipeline::preview(&config, c, 10)
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", c.name));
        assert_eq!(results.len(), 2, "{}", c.name);
        let good = results[0]
            .as_ref()
            .unwrap_or_else(|r| panic!("{}: first row rejected: {:?}", c.name, r.reasons));
        let data: serde_json::Value = serde_json::from_slice(&good.data).unwrap();
        let bad = results[1].as_ref().expect_err("second row is bad");
        match c.record_type.as_str() {
            "individual_subsidy" => {
                assert_eq!(data["id_number"], "11010519491231002X");
                assert_eq!(data["amount"], "1200.50");
                assert_eq!(data["paid_date"], "2024-03-05");
                assert_eq!(data["period"], "2024-03");
                assert_eq!(data["bank_account"], "6217000011112222");
                assert_eq!(data["project_code"], "XM-2024-01");
                let rules: Vec<&str> = bad.reasons.iter().map(|r| r.rule.as_str()).collect();
                assert_eq!(
                    rules,
                    ["amount.scale", "idcard.check_char"],
                    "{:?}",
                    bad.reasons
                );
            }
            "village_finance" => {
                assert_eq!(data["amount"], "1234.50");
                assert_eq!(data["direction"], "expense");
                assert_eq!(data["subject_code"], "5401");
                assert_eq!(data["fiscal_year"], 2024);
                assert_eq!(good.source_key, "430124101201|2024|记-012|1");
                assert_eq!(
                    bad.reasons[0].rule, "code_table.unknown",
                    "{:?}",
                    bad.reasons
                );
            }
            other => panic!("unexpected record type {other}"),
        }
    }
}

const GOOD_CONNECTOR: &str = r#"
record_type = "individual_subsidy"
[source]
driver = "sqlite"
path = "x.db"
[extract]
table = "pay"
key = "id"
mode = "timestamp"
column = "updated_at"
[fields]
payment_code = "id"
project_code = "proj"
recipient_name = "name"
id_number = "idno"
region_code = "village"
amount = "amount"
paid_date = "paid"
"#;

fn connector_error(text: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(&path, text).unwrap();
    let errors = load_connector(&path, false).expect_err("must be refused");
    let joined: Vec<String> = errors.iter().map(|e| e.to_string()).collect();
    for e in &joined {
        assert!(
            e.starts_with(&path.display().to_string()),
            "error names the file: {e}"
        );
    }
    joined.join("\n")
}

#[test]
fn the_good_connector_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("good.toml");
    std::fs::write(&path, GOOD_CONNECTOR).unwrap();
    let c = load_connector(&path, false).unwrap();
    assert_eq!(c.name, "good", "name defaults to the file stem");
}

#[test]
fn mistakes_are_refused_with_file_key_and_hint() {
    let cases: &[(&str, &str, &[&str])] = &[
        (
            "mode = \"timestamp\"",
            "mode = \"timestamp\"\ncolum = \"x\"",
            &["unknown field `colum`"],
        ),
        (
            "amount = \"amount\"\n",
            "",
            &["fields", "not mapped: amount"],
        ),
        (
            "paid_date = \"paid\"",
            "paid_date = \"paid\"\nsalary = \"s\"",
            &[
                "fields.salary",
                "not a field of individual_subsidy",
                "hint: fields of individual_subsidy",
            ],
        ),
        (
            "table = \"pay\"",
            "query = \"SELECT * FROM pay; DELETE FROM pay\"",
            &["extract.query", "several statements"],
        ),
        (
            "table = \"pay\"",
            "query = \"UPDATE pay SET amount = 0\"",
            &["extract.query", "only SELECT"],
        ),
        (
            "region_code = \"village\"",
            "region_code = { expr = \"(SELECT max(v) FROM t)\" }",
            &["fields.region_code.expr", "sub-query"],
        ),
        (
            "amount = \"amount\"",
            "amount = { column = \"amount\", transforms = [\"drop\"] }",
            &["fields.amount.transforms", "cannot be dropped"],
        ),
        (
            "id_number = \"idno\"",
            "id_number = { column = \"idno\", transforms = [\"hmac\"] }",
            &[
                "fields.id_number.transforms",
                "needs a key",
                "hint: set hmac_key",
            ],
        ),
        (
            "id_number = \"idno\"",
            "id_number = { column = \"idno\", transforms = [\"rot13\"] }",
            &["unknown transform"],
        ),
        (
            "region_code = \"village\"",
            "region_code = { column = \"village\", code_table = \"nope\" }",
            &["no code table `nope`", "[code_tables.nope]"],
        ),
        (
            "mode = \"timestamp\"",
            "mode = \"sometimes\"",
            &[
                "extract.mode",
                "hint: use \"incrementing\", \"timestamp\" or \"snapshot\"",
            ],
        ),
        (
            "column = \"updated_at\"",
            "",
            &["extract.column", "needs the cursor column"],
        ),
        (
            "column = \"updated_at\"",
            "column = \"updated_at\"\nlag = \"5 minutes\"",
            &["extract.lag"],
        ),
        (
            "mode = \"timestamp\"\ncolumn = \"updated_at\"",
            "mode = \"snapshot\"\nstart_from = \"2017-01-01\"",
            &["extract.start_from"],
        ),
        (
            "column = \"updated_at\"",
            "column = \"updated_at\"\nstart_from = \"2017/01/01\"",
            &["extract.start_from", "YYYY-MM-DD"],
        ),
        (
            "record_type = \"individual_subsidy\"",
            "record_type = \"subsidy\"",
            &["record_type", "individual_subsidy", "village_finance"],
        ),
        (
            "column = \"updated_at\"",
            "column = \"updated_at\"\nencoding = \"klingon\"",
            &["extract.encoding", "gbk"],
        ),
        (
            "column = \"updated_at\"",
            "column = \"updated_at\"\ntime_zone = \"Mars/Olympus\"",
            &["extract.time_zone", "Asia/Shanghai"],
        ),
        (
            "driver = \"sqlite\"",
            "driver = \"db2\"",
            &["unknown variant `db2`"],
        ),
        (
            "amount = \"amount\"",
            "amount = { value = 12.5 }",
            &["fields.amount.value", "not exact"],
        ),
    ];
    for (from, to, expected) in cases {
        assert!(GOOD_CONNECTOR.contains(from), "{from}");
        let text = GOOD_CONNECTOR.replacen(from, to, 1);
        let err = connector_error(&text);
        for e in *expected {
            assert!(
                err.contains(e),
                "replacing {from:?} by {to:?}: expected {e:?} in:\n{err}"
            );
        }
    }
}

fn agent_dir(agent_toml: &str) -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("connectors.d")).unwrap();
    std::fs::write(dir.path().join("connectors.d/a.toml"), GOOD_CONNECTOR).unwrap();
    let path = dir.path().join("fepd.toml");
    std::fs::write(&path, agent_toml).unwrap();
    (dir, path)
}

const GOOD_AGENT: &str = r#"
agent_id = "a1"
region_code = "430124"
state_dir = "state"
signing_key = "k"
[sink]
type = "dir"
path = "out"
"#;

#[test]
fn agent_config_mistakes_are_refused() {
    let (_d, p) = agent_dir(GOOD_AGENT);
    AgentConfig::load(&p).unwrap();
    let cases: &[(&str, &str, &str)] = &[
        (
            "region_code = \"430124\"",
            "region_code = \"4301\"",
            "region_code",
        ),
        ("agent_id = \"a1\"", "agent_id = \"a 1\"", "agent_id"),
        ("type = \"dir\"", "type = \"ftp\"", "unknown variant `ftp`"),
        (
            "path = \"out\"",
            "path = \"out\"\nfsync = false",
            "unknown field `fsync`",
        ),
        (
            "signing_key = \"k\"",
            "signing_key = \"k\"\nhmac_key = { env = \"FEPD_TEST_NO_SUCH_VAR\" }",
            "FEPD_TEST_NO_SUCH_VAR",
        ),
        (
            "state_dir = \"state\"",
            "state_dir = \"state\"\nconnectors_dir = \"nowhere\"",
            "connectors_dir",
        ),
    ];
    for (from, to, expected) in cases {
        let (_d, p) = agent_dir(&GOOD_AGENT.replacen(from, to, 1));
        let err = AgentConfig::load(&p).expect_err(to).to_string();
        assert!(
            err.contains(expected),
            "{to}: expected {expected:?} in {err}"
        );
        assert!(err.contains("fepd.toml"), "{err}");
    }
    // Two files claiming the same connector name.
    let (d, p) = agent_dir(GOOD_AGENT);
    std::fs::write(
        d.path().join("connectors.d/b.toml"),
        format!("name = \"a\"\n{GOOD_CONNECTOR}"),
    )
    .unwrap();
    let err = AgentConfig::load(&p).expect_err("duplicate").to_string();
    assert!(err.contains("already used by"), "{err}");
}

#[test]
fn secrets_never_reach_debug_output_or_errors() {
    // SAFETY: set_var before any thread of this test reads the environment.
    unsafe { std::env::set_var("FEPD_TEST_HMAC_SECRET", "SUPERSECRET-VALUE-123") };
    let agent = GOOD_AGENT.replacen(
        "signing_key = \"k\"",
        "signing_key = \"k\"\nhmac_key = { env = \"FEPD_TEST_HMAC_SECRET\" }",
        1,
    );
    let (_d, p) = agent_dir(&agent);
    let config = AgentConfig::load(&p).unwrap();
    assert!(config.hmac_key.is_some());
    let shown = format!("{config:?}");
    assert!(!shown.contains("SUPERSECRET"), "{shown}");
    assert!(shown.contains("***"));
    let inspect = AgentConfig::load_for_inspection(&p).unwrap();
    assert!(
        inspect.hmac_key.is_none(),
        "inspection commands do not read secrets"
    );
}

#[test]
fn the_example_amqp_sink_loads_and_its_mistakes_are_refused() {
    // The example config's commented amqp sink, with its files present.
    let text = std::fs::read_to_string(repo("config/fepd.example.toml")).unwrap();
    let start = text
        .find("# [sink]\n# type = \"amqp\"")
        .expect("the amqp example");
    let example: String = text[start..]
        .lines()
        .take_while(|l| l.starts_with("# "))
        .map(|l| format!("{}\n", &l[2..]))
        .collect();
    let (d, _) = agent_dir(GOOD_AGENT);
    for f in ["extranet-ca.pem", "client.pem", "client.key"] {
        std::fs::write(d.path().join(f), "-----BEGIN CERTIFICATE-----\n").unwrap();
    }
    let sink = example.replace("/etc/fepd/", &format!("{}/", d.path().display()));
    let amqp = GOOD_AGENT.replace("[sink]\ntype = \"dir\"\npath = \"out\"\n", &sink);
    let p = d.path().join("fepd.toml");
    std::fs::write(&p, &amqp).unwrap();
    let config = AgentConfig::load(&p).unwrap_or_else(|e| panic!("{e}"));
    match config.sink {
        fepd::config::SinkConfig::Amqp(a) => {
            assert!(a.external_auth && a.client_cert.is_some() && a.urls.len() == 2);
            assert_eq!((a.window, a.exchange.as_str()), (16, "fep.records"));
        }
        other => panic!("{other:?}"),
    }
    let cases: &[(&str, &str, &str)] = &[
        ("ca_file = ", "# ca_file = ", "amqps:// needs the CA"),
        (
            "client_cert = ",
            "# client_cert = ",
            "client_cert and client_key go together",
        ),
        (
            "auth = \"external\"",
            "auth = \"external\"\nuser = \"u\"",
            "remove user and password",
        ),
        (
            "auth = \"external\"",
            "auth = \"kerberos\"",
            "unknown auth `kerberos`",
        ),
        (
            "auth = \"external\"",
            "auth = \"external\"\nwindow = 0",
            "sink.window",
        ),
        (
            "auth = \"external\"",
            "auth = \"external\"\nconfirm_timeout = \"soon\"",
            "sink.confirm_timeout",
        ),
        (
            "urls = [",
            "urls = [\"amqp://u:p@mq:5672/\", ",
            "carries credentials",
        ),
    ];
    for (from, to, expected) in cases {
        std::fs::write(&p, amqp.replacen(from, to, 1)).unwrap();
        let err = AgentConfig::load(&p).expect_err(to).to_string();
        assert!(
            err.contains(expected),
            "{to}: expected {expected:?} in {err}"
        );
        assert!(!err.contains("u:p@"), "no credentials echoed: {err}");
    }
    // The spool cap.
    let capped = GOOD_AGENT.to_string() + "[spool]\nmax_bytes = \"512MiB\"\n";
    std::fs::write(&p, &capped).unwrap();
    assert_eq!(AgentConfig::load(&p).unwrap().spool.max_bytes, 512 << 20);
    std::fs::write(&p, capped.replace("512MiB", "a lot")).unwrap();
    let err = AgentConfig::load(&p).expect_err("bad size").to_string();
    assert!(err.contains("spool.max_bytes"), "{err}");
}
