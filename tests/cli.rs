//! The `fepd` command line as ops and departments use it: demo, verify (and its exit
//! code), keygen, schema, check, preview, status and rejects export.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command, Output};

fn fepd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fepd"))
        .args(args)
        .env_remove("FEPD_CRASH_AT")
        .env_remove("FEPD_CONFIG")
        .output()
        .expect("fepd runs")
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn demo_then_inspect_then_tamper() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("demo");
    let d = dir.to_str().unwrap();
    let config = dir.join("fepd.toml");
    let c = config.to_str().unwrap();

    let first = fepd(&["demo", "--dir", d, "--rows", "4000"]);
    assert!(
        first.status.success(),
        "{}{}",
        stdout(&first),
        stderr(&first)
    );
    let out = stdout(&first);
    for expected in [
        "rows read           9000",
        "records delivered   8700",
        "rows rejected       300",
        "idcard.check_char",
        "verify              OK",
        "records/s",
    ] {
        assert!(out.contains(expected), "missing {expected:?} in:\n{out}");
    }
    let again = fepd(&["demo", "--dir", d]);
    assert!(again.status.success());
    assert!(
        stdout(&again).contains("records delivered   0 in 0 batch(es)"),
        "{}",
        stdout(&again)
    );
    let mutate = fepd(&["demo", "--dir", d, "--mutate"]);
    assert!(
        stdout(&mutate).contains("records delivered   7 in"),
        "{}",
        stdout(&mutate)
    );

    // check, status, preview, rejects
    let check = fepd(&["--config", c, "check"]);
    assert!(check.status.success(), "{}", stdout(&check));
    let check_out = stdout(&check);
    assert!(
        check_out.contains("connector ledger: OK") && check_out.contains("connector subsidy: OK"),
        "{check_out}"
    );
    let pubkey = check_out
        .split("public key ")
        .nth(1)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string();

    let status = fepd(&["--config", c, "status"]);
    assert!(
        stdout(&status).contains("pending    0 batch(es)"),
        "{}",
        stdout(&status)
    );
    let status_json: serde_json::Value =
        serde_json::from_slice(&fepd(&["--config", c, "status", "--json"]).stdout).unwrap();
    assert_eq!(status_json["spool"]["rejects"], 300);

    let preview = fepd(&["--config", c, "preview", "subsidy", "--limit", "500"]);
    let p = stdout(&preview);
    assert!(p.contains("REJECT") && p.contains("ok     1  {"), "{p}");
    assert!(p.contains("500 row(s):"), "{p}");

    let list = fepd(&[
        "--config",
        c,
        "rejects",
        "list",
        "--rule",
        "amount.scale",
        "--limit",
        "1000",
    ]);
    assert!(
        stdout(&list).contains("50 reject(s) shown"),
        "{}",
        stdout(&list)
    );
    let csv_path = tmp.path().join("rejects.csv");
    let export = fepd(&[
        "--config",
        c,
        "rejects",
        "export",
        "--out",
        csv_path.to_str().unwrap(),
    ]);
    assert!(export.status.success(), "{}", stderr(&export));
    let csv = std::fs::read_to_string(&csv_path).unwrap();
    assert!(csv.starts_with('\u{feff}'), "BOM for Excel");
    assert_eq!(csv.lines().count(), 301, "header + 300 rejects");
    assert!(csv.contains("text.encoding") && csv.contains("region.outside_agent"));

    // verify: OK, then an altered record makes it exit non-zero naming the file and seq.
    let outbox = dir.join("outbox");
    let ok = fepd(&["verify", outbox.to_str().unwrap(), "--pubkey", &pubkey]);
    assert!(ok.status.success(), "{}", stdout(&ok));
    let victim = outbox.join("subsidy-1.ndjson.gz");
    let plain = fepd::envelope::decode_body(&std::fs::read(&victim).unwrap()).unwrap();
    let text = String::from_utf8(plain).unwrap();
    let third_line_start = text.match_indices('\n').nth(1).unwrap().0 + 1;
    let altered = format!(
        "{}{}",
        &text[..third_line_start],
        text[third_line_start..].replacen("\"amount\":\"", "\"amount\":\"1", 1)
    );
    std::fs::write(&victim, fepd::envelope::gzip(altered.as_bytes()).unwrap()).unwrap();
    let broken = fepd(&["verify", outbox.to_str().unwrap(), "--pubkey", &pubkey]);
    assert!(!broken.status.success());
    let b = stdout(&broken);
    assert!(
        b.contains("BROKEN") && b.contains("subsidy-1.ndjson.gz") && b.contains("seq 3:"),
        "{b}"
    );
}

#[test]
fn keygen_writes_a_private_key_and_prints_the_public_one() {
    let tmp = tempfile::tempdir().unwrap();
    let key = tmp.path().join("keys/signing.key");
    let o = fepd(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let public = stdout(&o).trim().to_string();
    assert!(fepd::keys::parse_public_key(&public).is_ok(), "{public}");
    let again = fepd(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!again.status.success(), "never overwrites a key");
}

#[test]
fn schema_prints_json_schema() {
    let one: serde_json::Value =
        serde_json::from_slice(&fepd(&["schema", "individual_subsidy"]).stdout).unwrap();
    let required: Vec<&str> = one["required"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(required.contains(&"id_number") && required.contains(&"amount"));
    let all: serde_json::Value = serde_json::from_slice(&fepd(&["schema"]).stdout).unwrap();
    assert!(all["$defs"].as_object().unwrap().len() >= 10);
    let bad = fepd(&["schema", "subsidy"]);
    assert!(
        !bad.status.success() && stderr(&bad).contains("individual_subsidy"),
        "{}",
        stderr(&bad)
    );
}

#[test]
fn a_bad_config_is_refused_at_start_with_the_reason() {
    let tmp = tempfile::tempdir().unwrap();
    let config = tmp.path().join("fepd.toml");
    std::fs::write(&config, "agent_id = \"a\"\nregion_code = \"430124\"\nstate_dir = \"s\"\nsigning_key = \"k\"\nsink = { type = \"dir\", path = \"o\" }\nbogus = 1\n").unwrap();
    let o = fepd(&["--config", config.to_str().unwrap(), "run", "--once"]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(
        e.contains("fepd.toml") && e.contains("unknown field `bogus`"),
        "{e}"
    );
    let missing = fepd(&[
        "--config",
        Path::new("/nonexistent/fepd.toml").to_str().unwrap(),
        "check",
    ]);
    assert!(
        stderr(&missing).contains("cannot read") && stderr(&missing).contains("--config"),
        "{}",
        stderr(&missing)
    );
}
