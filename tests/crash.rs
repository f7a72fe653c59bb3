//! Crash safety: the agent is SIGKILLed at chosen instants of a pass (between the spool
//! commit and the sink write, between the sink write and marking it delivered, with a
//! half-renamed file…) and at moments chosen by the clock, then started again. What is
//! delivered in the end must be identical to an uninterrupted run: no record lost, no seq
//! repeated or skipped, the chain intact.

mod common;

use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

fn fepd(dir: &Path, crash_at: Option<&str>) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_fepd"));
    cmd.arg("--config")
        .arg(dir.join("fepd.toml"))
        .args(["run", "--once", "--log", "error"]);
    cmd.env_remove("FEPD_CRASH_AT").stdout(Stdio::null());
    if let Some(spec) = crash_at {
        cmd.env("FEPD_CRASH_AT", spec);
    }
    cmd
}

fn run(dir: &Path, crash_at: Option<&str>) -> ExitStatus {
    fepd(dir, crash_at).status().expect("fepd runs")
}

fn manifests(outbox: &Path) -> usize {
    std::fs::read_dir(outbox)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_name().to_string_lossy().ends_with(".json"))
                .count()
        })
        .unwrap_or(0)
}

fn assert_same_as_reference(
    dir: &Path,
    reference: &std::collections::BTreeMap<String, Vec<common::Delivered>>,
    key: &ed25519_dalek::VerifyingKey,
    what: &str,
) {
    let got = common::read_outbox(&dir.join("outbox"));
    for (connector, want) in reference {
        let have = got
            .get(connector)
            .unwrap_or_else(|| panic!("{what}: nothing delivered for {connector}"));
        assert_eq!(have.len(), want.len(), "{what}: {connector} record count");
        common::assert_contiguous(have);
        assert!(
            have == want,
            "{what}: {connector} differs from the uninterrupted run"
        );
    }
    let report = fepd::verify::verify_dir(&dir.join("outbox"), key).unwrap();
    assert!(report.ok(), "{what}: {:?}", report.breaks);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_any_point_then_restart_delivers_exactly_the_uninterrupted_set() {
    let demo = common::demo_dir(10_000, 500).await;
    let key = demo.public_key();
    assert!(run(demo.path(), None).success());
    let reference = common::read_outbox(&demo.outbox());
    assert_eq!(
        reference["subsidy"].len(),
        10_000 - demo.generated.planted.len()
    );
    assert_eq!(reference["ledger"].len(), 5_000);

    // Deterministic crash points: (first run's crash, second run's crash).
    let scenarios: &[&[&str]] = &[
        &["after_spool_commit:1"],
        &["after_spool_commit:9"],
        // in the ledger's snapshot scan (subsidy takes 20 commits of 500 rows, the ledger 10 + 2)
        &["after_spool_commit:26"],
        // the snapshot's last commits (scan done, deletes phase, done)
        &["after_spool_commit:31"],
        &["after_spool_commit:32"],
        &["after_sink_write:1"],
        &["after_sink_write:17"],
        &["dir_before_rename:6"],
        // crashed twice before a run completes
        &["after_spool_commit:5", "after_sink_write:4"],
    ];
    for crashes in scenarios {
        let agent = common::sibling_agent(&demo);
        for spec in *crashes {
            let status = run(agent.path(), Some(spec));
            assert_eq!(
                status.signal(),
                Some(libc::SIGKILL),
                "{spec}: the crash point was not reached ({status:?})"
            );
        }
        assert!(
            run(agent.path(), None).success(),
            "{crashes:?}: restart failed"
        );
        assert_same_as_reference(agent.path(), &reference, &key, &format!("{crashes:?}"));
        // And a pass after that adds nothing.
        assert!(run(agent.path(), None).success());
        assert_same_as_reference(
            agent.path(),
            &reference,
            &key,
            &format!("{crashes:?} + one more pass"),
        );
    }

    // Kills at moments chosen by the clock: once the outbox holds n batches.
    for n in [0usize, 3, 11, 24] {
        let agent = common::sibling_agent(&demo);
        let outbox = agent.path().join("outbox");
        let mut child = fepd(agent.path(), None).spawn().expect("spawn");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if manifests(&outbox) >= n || Instant::now() > deadline {
                break;
            }
            if child.try_wait().expect("try_wait").is_some() {
                break;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = child.kill();
        let _ = child.wait();
        assert!(
            run(agent.path(), None).success(),
            "restart after kill at {n} batches"
        );
        assert_same_as_reference(
            agent.path(),
            &reference,
            &key,
            &format!("kill at {n} batches"),
        );
    }
}
