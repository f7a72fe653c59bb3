//! The demo end to end, through the library: exactly the planted rows are rejected, each
//! with its reason; every valid row is delivered once; a second pass delivers nothing; a
//! change delivers exactly the change; any altered character is caught by `verify`.

mod common;

use std::collections::BTreeSet;

use fepd::pipeline::run_once;
use fepd::spool::RejectFilter;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_pass_rejects_exactly_the_planted_rows_and_delivers_the_rest_once() {
    let demo = common::demo_dir(12_000, 500).await;
    let agent = demo.agent().await;
    let summary = run_once(&agent).await.expect("pass");
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);

    // Rejects: exactly the planted keys, each with exactly the planted field and rule.
    let rejects = agent
        .spool
        .rejects(&RejectFilter::default())
        .await
        .expect("rejects");
    let got: BTreeSet<(String, String, String)> = rejects
        .iter()
        .flat_map(|r| {
            r.reasons
                .iter()
                .map(move |x| (r.source_key.clone(), x.field.clone(), x.rule.clone()))
        })
        .collect();
    let want: BTreeSet<(String, String, String)> = demo
        .generated
        .planted
        .iter()
        .map(|p| {
            (
                p.source_key.clone(),
                p.field.to_string(),
                p.rule.to_string(),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(
        rejects.len(),
        demo.generated.planted.len(),
        "one reject per planted row"
    );
    assert!(rejects.iter().all(|r| r.connector == "subsidy"));
    // Every reason message is readable and names the problem, not just a code.
    assert!(
        rejects
            .iter()
            .flat_map(|r| &r.reasons)
            .all(|x| x.message.len() > 10)
    );

    // Delivered: every valid row once, chains contiguous from 1.
    let delivered = common::read_outbox(&demo.outbox());
    let subsidy = &delivered["subsidy"];
    let ledger = &delivered["ledger"];
    assert_eq!(
        subsidy.len(),
        demo.generated.subsidy_rows - demo.generated.planted.len()
    );
    assert_eq!(ledger.len(), demo.generated.ledger_rows);
    common::assert_contiguous(subsidy);
    common::assert_contiguous(ledger);
    let planted: BTreeSet<&str> = demo
        .generated
        .planted
        .iter()
        .map(|p| p.source_key.as_str())
        .collect();
    let keys: BTreeSet<&str> = subsidy.iter().map(|r| r.source_key.as_str()).collect();
    assert_eq!(keys.len(), subsidy.len(), "no key delivered twice");
    assert!(keys.is_disjoint(&planted));
    // Amounts are strings with exactly two decimals; the ledger's REAL amounts too.
    for r in subsidy.iter().chain(ledger.iter()).take(2000) {
        let data: serde_json::Value = serde_json::from_str(&r.data).unwrap();
        let amount = data["amount"].as_str().expect("amount is a string");
        assert_eq!(
            amount.split_once('.').map(|(_, f)| f.len()),
            Some(2),
            "{amount}"
        );
    }
    let report = fepd::verify::verify_dir(&demo.outbox(), &demo.public_key()).unwrap();
    assert!(report.ok(), "{:?}", report.breaks);

    // Second pass: nothing new, no new rejects.
    let before = agent.spool.max_reject_id().await.unwrap();
    let again = run_once(&agent).await.expect("second pass");
    assert_eq!(again.delivered.records, 0);
    assert_eq!(again.passes.iter().map(|p| p.records).sum::<u64>(), 0);
    assert_eq!(
        agent.spool.max_reject_id().await.unwrap(),
        before,
        "known rejects are not stored again"
    );

    // A change: exactly the updated rows (upserts) and deleted entries (deletes).
    let m = fepd::demo::mutate(&demo.db(), 0).await.unwrap();
    let third = run_once(&agent).await.expect("third pass");
    assert_eq!(
        third.delivered.records as usize,
        m.subsidy_updated.len() + m.ledger_updated.len() + m.ledger_deleted.len()
    );
    let after = common::read_outbox(&demo.outbox());
    let new_subsidy: Vec<_> = after["subsidy"][subsidy.len()..].to_vec();
    let new_ledger: Vec<_> = after["ledger"][ledger.len()..].to_vec();
    let upserted: BTreeSet<String> = new_subsidy
        .iter()
        .filter(|r| r.op == "upsert")
        .map(|r| r.source_key.clone())
        .collect();
    assert_eq!(upserted, m.subsidy_updated.iter().cloned().collect());
    assert!(
        new_subsidy
            .iter()
            .all(|r| r.data.contains("\"amount\":\"9999.00\""))
    );
    let ledger_up: BTreeSet<String> = new_ledger
        .iter()
        .filter(|r| r.op == "upsert")
        .map(|r| r.source_key.clone())
        .collect();
    let ledger_del: BTreeSet<String> = new_ledger
        .iter()
        .filter(|r| r.op == "delete")
        .map(|r| r.source_key.clone())
        .collect();
    assert_eq!(ledger_up, m.ledger_updated.iter().cloned().collect());
    assert_eq!(ledger_del, m.ledger_deleted.iter().cloned().collect());
    assert!(
        new_ledger
            .iter()
            .filter(|r| r.op == "delete")
            .all(|r| r.data == "null")
    );
    common::assert_contiguous(&after["subsidy"]);
    common::assert_contiguous(&after["ledger"]);
    let report = fepd::verify::verify_dir(&demo.outbox(), &demo.public_key()).unwrap();
    assert!(report.ok(), "{:?}", report.breaks);

    // And a fourth pass after the change: nothing again (the deletes are not repeated).
    let fourth = run_once(&agent).await.expect("fourth pass");
    assert_eq!(fourth.delivered.records, 0);
}

/// Altering one character of any record in any delivered batch (decompress, edit,
/// recompress) makes verify fail, naming that batch file and the record's seq.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_names_the_batch_and_seq_of_any_altered_character() {
    let demo = common::demo_dir(3_000, 400).await;
    let agent = demo.agent().await;
    run_once(&agent).await.expect("pass");
    let key = demo.public_key();
    assert!(fepd::verify::verify_dir(&demo.outbox(), &key).unwrap().ok());

    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(demo.outbox())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .collect();
    files.sort();
    let mut rng = 0x2545_F491_4F6C_DD1Du64;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    let mut tried = 0;
    while tried < 120 {
        let file = &files[(next() % files.len() as u64) as usize];
        let original = std::fs::read(file).unwrap();
        let plain = fepd::envelope::decode_body(&original).unwrap();
        let pos = (next() % plain.len() as u64) as usize;
        let byte = plain[pos];
        if !byte.is_ascii() || byte == b'\n' {
            continue;
        }
        tried += 1;
        // The seq of the altered line: first_seq of the file + its line index.
        let line_index = plain[..pos].iter().filter(|b| **b == b'\n').count() as i64;
        let first_seq: i64 = file
            .file_name()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches(".ndjson.gz")
            .rsplit_once('-')
            .unwrap()
            .1
            .parse()
            .unwrap();
        let mut altered = plain.clone();
        altered[pos] = if byte == b'0' {
            b'1'
        } else if byte.is_ascii_digit() {
            b'0'
        } else if byte == b'a' {
            b'b'
        } else {
            b'a'
        };
        std::fs::write(file, fepd::envelope::gzip(&altered).unwrap()).unwrap();

        let report = fepd::verify::verify_dir(&demo.outbox(), &key).unwrap();
        std::fs::write(file, &original).unwrap();
        assert!(
            !report.ok(),
            "altering byte {pos} of {} went unnoticed",
            file.display()
        );
        let b = &report.breaks[0];
        assert_eq!(&b.file, file, "{b}");
        assert_eq!(
            b.seq,
            Some(first_seq + line_index),
            "altered line {line_index} of {}: {b}",
            file.display()
        );
    }
    assert!(
        fepd::verify::verify_dir(&demo.outbox(), &key).unwrap().ok(),
        "restored files verify again"
    );
}

/// A batch removed from the outbox (lost in transit) and a wrong public key are both
/// reported.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_reports_a_missing_batch_and_a_foreign_key() {
    let demo = common::demo_dir(2_000, 300).await;
    run_once(&demo.agent().await).await.expect("pass");
    let key = demo.public_key();
    let other = ed25519_dalek::SigningKey::from_bytes(&[9u8; 32]).verifying_key();
    let report = fepd::verify::verify_dir(&demo.outbox(), &other).unwrap();
    assert!(
        report
            .breaks
            .iter()
            .any(|b| b.message.contains("signature")),
        "{:?}",
        report.breaks
    );

    // Remove the second subsidy batch.
    let mut firsts: Vec<i64> = std::fs::read_dir(demo.outbox())
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            name.strip_prefix("subsidy-")?
                .strip_suffix(".json")?
                .parse()
                .ok()
        })
        .collect();
    firsts.sort();
    let (second, third) = (firsts[1], firsts[2]);
    std::fs::remove_file(demo.outbox().join(format!("subsidy-{second}.json"))).unwrap();
    let report = fepd::verify::verify_dir(&demo.outbox(), &key).unwrap();
    let b = report
        .breaks
        .iter()
        .find(|b| b.connector == "subsidy")
        .expect("subsidy break");
    assert!(
        b.message
            .contains(&format!("gap: seq {second} .. {} missing", third - 1)),
        "{b}"
    );
    assert_eq!(b.seq, Some(second));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_batches_are_kept_for_retention_then_pruned() {
    // Default retention (7 days): everything delivered stays, replayable.
    let demo = common::demo_dir(1_000, 500).await;
    let agent = demo.agent().await;
    fepd::pipeline::run_once(&agent).await.expect("run");
    let stats = agent.spool.stats().await.unwrap();
    assert!(
        stats.delivered_batches > 0 && stats.pending_batches == 0,
        "{stats:?}"
    );
    assert_eq!(
        agent.spool.first_retained_seq("subsidy").await.unwrap(),
        Some(1)
    );
    let (batches, _) = agent.spool.replay("subsidy", 1).await.unwrap();
    assert!(batches > 0, "retained batches can be replayed");
    drop(agent);

    // Retention over: the run prunes what was delivered, never what waits.
    let text = std::fs::read_to_string(&demo.config).unwrap();
    std::fs::write(
        &demo.config,
        text.replace("[spool]\n", "[spool]\nretention = \"0s\"\n"),
    )
    .unwrap();
    let agent = demo.agent().await;
    fepd::pipeline::run_once(&agent).await.expect("run");
    let stats = agent.spool.stats().await.unwrap();
    assert_eq!(
        (stats.delivered_batches, stats.pending_batches),
        (0, 0),
        "{stats:?}"
    );
    assert_eq!(
        agent.spool.first_retained_seq("subsidy").await.unwrap(),
        None
    );
    assert_eq!(agent.spool.replay("subsidy", 1).await.unwrap(), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reject_report_cut_off_is_sent_again_unchanged() {
    let demo = common::demo_dir(2_000, 500).await;
    // The outbox cannot take control messages (a file where their directory goes).
    std::fs::create_dir_all(demo.outbox()).unwrap();
    std::fs::write(demo.outbox().join("control"), b"in the way").unwrap();
    let agent = demo.agent().await;
    run_once(&agent).await.expect("records still delivered");
    let planted = demo.generated.planted.len() as i64;

    // Meanwhile a new bad row arrives: an amount with three decimals.
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", demo.db().display()))
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO subsidy_payment SELECT 99999999, project_code, name, id_card, village_code, bank_account, \
         '12.345', pay_date, period, '2099-01-01 00:00:00' FROM subsidy_payment WHERE amount NOT LIKE '-%' LIMIT 1",
    )
    .execute(&pool)
    .await
    .unwrap();
    pool.close().await;

    std::fs::remove_file(demo.outbox().join("control")).unwrap();
    run_once(&agent).await.expect("second run");
    let mut reports: Vec<String> = std::fs::read_dir(demo.outbox().join("control"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("rejects-"))
        .collect();
    reports.sort();
    // The cut-off report again with its own content and id, then the new reject alone.
    let first = format!("rejects-demo-430124-1-{planted}.json");
    let second = format!("rejects-demo-430124-{}-{}.json", planted + 1, planted + 1);
    assert_eq!(reports, vec![first, second]);
}
