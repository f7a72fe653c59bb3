//! The `amqp` sink against the machine's RabbitMQ (127.0.0.1:5672, guest/guest): every
//! spooled batch arrives as one persistent message with the contract's properties and
//! headers, verifiable record by record; an unroutable message is a failure that leaves the
//! batch in the spool; a broker that cannot be reached only makes the spool grow.

mod common;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::FieldTable;

use common::broker::{self, BROKER, amqp_demo, queue_for, unique};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_as_confirmed_persistent_messages_and_verify() {
    let exchange = unique("fep.records.test");
    let (_conn, ch, queue) = queue_for(&exchange).await;
    let demo = amqp_demo(3_000, "\"amqp://127.0.0.1:5672/%2f\"", &exchange, "").await;
    let agent = demo.agent().await;
    let summary = fepd::pipeline::run_once(&agent).await.expect("run");
    assert!(summary.failures.is_empty(), "{:?}", summary.failures);
    let expected = (3_000 - demo.generated.planted.len()) + 5_000;
    assert_eq!(summary.delivered.records as usize, expected);
    assert_eq!(agent.spool.stats().await.unwrap().pending_batches, 0);

    let key = demo.public_key();
    let mut chains: std::collections::BTreeMap<String, fepd::verify::ChainCursor> =
        Default::default();
    let mut records = 0usize;
    while let Some(msg) = ch
        .basic_get(queue.as_str().into(), BasicGetOptions::default())
        .await
        .unwrap()
    {
        let props = &msg.delivery.properties;
        assert_eq!(props.delivery_mode(), &Some(2));
        assert_eq!(
            props.content_type().as_ref().map(|s| s.as_str()),
            Some("application/x-ndjson")
        );
        assert_eq!(
            props.content_encoding().as_ref().map(|s| s.as_str()),
            Some("gzip")
        );
        let headers = fepd::verify::queue::headers_json(props.headers().as_ref());
        let connector = headers["fep-connector"].as_str().unwrap().to_string();
        let first = headers["fep-first-seq"].as_i64().unwrap();
        assert_eq!(
            props.message_id().as_ref().map(|s| s.to_string()),
            Some(format!("demo-430124/{connector}/{first}"))
        );
        assert!(
            msg.delivery.routing_key.as_str().ends_with(".430124"),
            "{}",
            msg.delivery.routing_key
        );
        let next = fepd::verify::verify_batch(
            &fepd::verify::BatchView {
                headers: &headers,
                body: &msg.delivery.data,
            },
            &key,
            chains.get(&connector),
        )
        .unwrap_or_else(|(seq, m)| panic!("{connector} seq {seq:?}: {m}"));
        records += (next.next_seq - first) as usize;
        chains.insert(connector, next);
        msg.delivery.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(records, expected, "every record, in order, chain intact");
    assert_eq!(chains.len(), 2);
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_or_unreachable_leaves_the_batches_in_the_spool() {
    // No queue bound: mandatory messages come back, nothing is marked delivered.
    let exchange = unique("fep.records.unbound");
    let demo = amqp_demo(1_000, "\"amqp://127.0.0.1:5672/%2f\"", &exchange, "").await;
    let agent = demo.agent().await;
    let err = fepd::pipeline::run_once(&agent)
        .await
        .expect_err("returned messages are failures")
        .to_string();
    assert!(err.contains("no queue is bound"), "{err}");
    let stats = agent.spool.stats().await.unwrap();
    assert!(
        stats.pending_batches > 0 && stats.delivered_batches == 0,
        "{stats:?}"
    );
    drop(agent);

    // A broker that is down: extraction still spools everything, delivery reports why.
    let exchange = unique("fep.records.down");
    let demo = amqp_demo(
        1_000,
        "\"amqp://127.0.0.1:1/%2f\", \"amqp://127.0.0.1:2/%2f\"",
        &exchange,
        "",
    )
    .await;
    let agent = demo.agent().await;
    let err = fepd::pipeline::run_once(&agent)
        .await
        .expect_err("no broker")
        .to_string();
    assert!(
        err.contains("no broker reachable")
            && err.contains("127.0.0.1:1")
            && err.contains("127.0.0.1:2"),
        "{err}"
    );
    assert!(!err.contains("guest"), "no credentials in errors: {err}");
    let stats = agent.spool.stats().await.unwrap();
    assert_eq!(
        stats.pending_records as usize,
        1_000 - demo.generated.planted.len() + 5_000,
        "everything waits in the spool"
    );
    drop(agent);

    // The broker is back (the config now points at it): the spool drains, in order.
    let (_conn, ch, queue) = queue_for(&exchange).await;
    let text = std::fs::read_to_string(&demo.config).unwrap().replace(
        "\"amqp://127.0.0.1:1/%2f\", \"amqp://127.0.0.1:2/%2f\"",
        "\"amqp://127.0.0.1:1/%2f\", \"amqp://127.0.0.1:5672/%2f\"",
    );
    std::fs::write(&demo.config, text).unwrap();
    let agent = demo.agent().await;
    let summary = fepd::pipeline::run_once(&agent)
        .await
        .expect("delivers after recovery");
    assert_eq!(
        summary.passes.iter().map(|p| p.records).sum::<u64>(),
        0,
        "nothing extracted twice"
    );
    assert_eq!(
        summary.delivered.records as usize,
        1_000 - demo.generated.planted.len() + 5_000
    );
    assert!(broker::queue_depth(&queue).await.unwrap() > 0);
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
}

fn fepd(args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_fepd"))
        .args(args)
        .env("FEPD_TEST_AMQP_PASSWORD", "guest")
        .env_remove("FEPD_CRASH_AT")
        .env_remove("FEPD_CONFIG")
        .output()
        .expect("fepd runs")
}

/// `fepd verify --amqp` on `queue` until it is idle: the outcome and what it said.
fn verify_queue(queue: &str, pubkey: &std::path::Path) -> (std::process::Output, String) {
    let out = fepd(&[
        "verify",
        "--amqp",
        BROKER,
        "--queue",
        queue,
        "--pubkey",
        pubkey.to_str().unwrap(),
        "--idle",
        "3s",
    ]);
    let said = text(&out);
    (out, said)
}

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_cut_mid_publish_resends_only_whole_unconfirmed_batches() {
    // The extranet link fails silently: packets vanish, no reset. Confirms stop coming;
    // after confirm_timeout the agent drops the link, reconnects once the link is back
    // and re-sends what was not confirmed.
    let proxy = broker::Proxy::start("127.0.0.1:5672").await;
    let exchange = unique("fep.records.cut");
    let (_conn, _ch, queue) = queue_for(&exchange).await;
    let demo = amqp_demo(
        20_000,
        &format!("\"amqp://127.0.0.1:{}/%2f\"", proxy.port),
        &exchange,
        "confirm_timeout = \"2s\"\nheartbeat = \"2s\"\nwindow = 8\nretry_timeout = \"60s\"",
    )
    .await;
    let expected = 20_000 - demo.generated.planted.len() + 5_000;
    let agent = std::sync::Arc::new(demo.agent().await);
    let run = {
        let agent = agent.clone();
        tokio::spawn(async move { fepd::pipeline::run_once(&agent).await })
    };
    // Cut while batches are flowing.
    broker::wait_for(
        "the first batches on the queue",
        std::time::Duration::from_secs(60),
        || async { broker::queue_depth(&queue).await.unwrap_or(0) >= 3 },
    )
    .await;
    proxy.cut();
    // The outage lasts 4 s — twice the confirm timeout (the scenario's length, not a
    // synchronisation) — then the link is back.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    proxy.restore();
    let summary = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the run ends after the link is back")
        .unwrap()
        .expect("run succeeds after recovery");
    assert_eq!(summary.delivered.records as usize, expected);
    assert_eq!(agent.spool.stats().await.unwrap().pending_batches, 0);
    let report = broker::pika_consume(&queue, expected, &broker::pubkey_file(&demo));
    assert_eq!(report["records"], expected as u64, "{report}");
    broker::delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_delivery_then_restart_delivers_everything_once_per_batch() {
    let exchange = unique("fep.records.kill");
    let (_conn, _ch, queue) = queue_for(&exchange).await;
    let demo = amqp_demo(
        30_000,
        "\"amqp://127.0.0.1:5672/%2f\"",
        &exchange,
        "window = 16",
    )
    .await;
    let expected = 30_000 - demo.generated.planted.len() + 5_000;
    let config = demo.config.to_str().unwrap().to_string();
    // Killed by itself right after handing the 20th batch to the broker (batches in
    // flight, none of them marked), then by a real SIGKILL at a clock-chosen moment.
    let crashed = std::process::Command::new(env!("CARGO_BIN_EXE_fepd"))
        .args(["run", "--once", "-c", &config])
        .env("FEPD_TEST_AMQP_PASSWORD", "guest")
        .env("FEPD_CRASH_AT", "after_sink_write:20")
        .output()
        .unwrap();
    assert!(!crashed.status.success(), "the crash point fired");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fepd"))
        .args(["run", "--once", "-c", &config])
        .env("FEPD_TEST_AMQP_PASSWORD", "guest")
        .env_remove("FEPD_CRASH_AT")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let before = broker::queue_depth(&queue).await.unwrap();
    broker::wait_for(
        "more batches on the queue",
        std::time::Duration::from_secs(60),
        || async { broker::queue_depth(&queue).await.unwrap_or(0) >= before + 5 },
    )
    .await;
    child.kill().unwrap();
    child.wait().unwrap();
    let done = fepd(&["run", "--once", "-c", &config]);
    assert!(done.status.success(), "{}", text(&done));
    let report = broker::pika_consume(&queue, expected, &broker::pubkey_file(&demo));
    assert_eq!(report["records"], expected as u64, "{report}");
    assert!(
        report["duplicate_batches"].as_u64().unwrap() > 0,
        "batches in flight at the kill were re-sent whole: {report}"
    );
    broker::delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_and_reject_reports_go_to_the_control_exchange() {
    use futures_util::StreamExt as _;
    let exchange = unique("fep.records.ctl");
    let (_conn, ch, queue) = queue_for(&exchange).await;
    let control_queue = unique("fepd.test.control");
    broker::bind_queue(&ch, &format!("{exchange}.control"), &control_queue).await;
    let demo = amqp_demo(2_000, "\"amqp://127.0.0.1:5672/%2f\"", &exchange, "").await;
    let agent = demo.agent().await;
    fepd::pipeline::run_once(&agent).await.expect("run");
    // A second run reports no reject twice.
    fepd::pipeline::run_once(&agent).await.expect("second run");

    let mut consumer = ch
        .basic_consume(
            control_queue.as_str().into(),
            "t".into(),
            Default::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut heartbeats = Vec::new();
    let mut rejects = Vec::new();
    while heartbeats.len() < 2 {
        let d = tokio::time::timeout(std::time::Duration::from_secs(10), consumer.next())
            .await
            .expect("control messages arrive")
            .unwrap()
            .unwrap();
        let body: serde_json::Value = serde_json::from_slice(&d.data).unwrap();
        match body["schema"].as_str() {
            Some("fep.heartbeat/1") => {
                assert_eq!(d.routing_key.as_str(), "heartbeat.demo-430124");
                heartbeats.push(body)
            }
            Some("fep.rejects/1") => {
                assert_eq!(d.routing_key.as_str(), "rejects.demo-430124");
                rejects.extend(body["rejects"].as_array().unwrap().clone())
            }
            other => panic!("unexpected control message {other:?}"),
        }
        d.ack(BasicAckOptions::default()).await.unwrap();
    }
    assert_eq!(
        rejects.len(),
        demo.generated.planted.len(),
        "each reject reported once"
    );
    for r in &rejects {
        assert!(r["reasons"][0]["rule"].is_string(), "{r}");
        assert!(
            r["reasons"][0].get("message").is_none(),
            "messages may quote values: {r}"
        );
        assert!(r.get("raw").is_none(), "raw values stay local: {r}");
    }
    let hb = &heartbeats[1];
    assert_eq!(hb["agent"], "demo-430124");
    assert_eq!(hb["version"], env!("CARGO_PKG_VERSION"));
    assert!(
        hb["drivers"]
            .as_array()
            .unwrap()
            .contains(&"postgres".into())
    );
    assert_eq!(hb["spool"]["pending_batches"], 0);
    let connectors = hb["connectors"].as_array().unwrap();
    assert_eq!(connectors.len(), 2);
    assert!(
        connectors
            .iter()
            .all(|c| c["last_seq"].as_i64().unwrap() > 0 && c["delivery_lag_seconds"] == 0),
        "{hb}"
    );
    broker::delete_queue(&queue).await;
    broker::delete_queue(&control_queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_publishes_dir_files_idempotently_and_verify_amqp_checks_the_queue() {
    // Agent side of the gateway: a dir sink.
    let demo = common::demo_dir(3_000, 500).await;
    let out = fepd(&["run", "--once", "-c", demo.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let expected = 3_000 - demo.generated.planted.len() + 5_000;

    // Platform side: a relay whose sink is the broker.
    let exchange = unique("fep.records.relay");
    let (_conn, ch, queue) = queue_for(&exchange).await;
    // The platform listens on the control exchange too: reject reports must be routable.
    let control_queue = unique("fepd.test.control");
    broker::bind_queue(&ch, &format!("{exchange}.control"), &control_queue).await;
    let relay = amqp_demo(10, "\"amqp://127.0.0.1:5672/%2f\"", &exchange, "").await;
    let relay_config = relay.config.to_str().unwrap().to_string();
    let outbox = demo.outbox();
    let first = fepd(&["relay", outbox.to_str().unwrap(), "-c", &relay_config]);
    assert!(first.status.success(), "{}", text(&first));
    assert!(
        text(&first).contains(&format!("({expected} record(s)) and 2 control message(s)")),
        "{}",
        text(&first)
    );
    let again = fepd(&["relay", outbox.to_str().unwrap(), "-c", &relay_config]);
    assert!(
        text(&again).contains("relayed 0 batch(es)"),
        "{}",
        text(&again)
    );
    // The relay log lost: the same files go again, as the same messages.
    std::fs::remove_file(outbox.join(".relayed")).unwrap();
    let third = fepd(&["relay", outbox.to_str().unwrap(), "-c", &relay_config]);
    assert!(third.status.success(), "{}", text(&third));

    let pubkey = broker::pubkey_file(&demo);
    let (verified, said) = verify_queue(&queue, &pubkey);
    assert!(verified.status.success(), "{said}");
    assert!(said.contains("OK: every hash"), "{said}");
    // The third relay's copies are whole re-sent batches, identical to the first copies.
    let batches = said
        .lines()
        .filter(|l| l.contains("batch(es),"))
        .map(|l| {
            l.split(": ")
                .nth(1)
                .unwrap()
                .split(' ')
                .next()
                .unwrap()
                .parse::<u64>()
                .unwrap()
        })
        .sum::<u64>();
    assert!(
        said.contains(&format!(
            "{} message(s): {batches} re-sent batch(es)",
            2 * batches
        )),
        "{said}"
    );

    // A file damaged in transit is refused by the relay.
    let body = std::fs::read_dir(&outbox)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.to_string_lossy().ends_with(".ndjson.gz"))
        .unwrap();
    let mut bytes = std::fs::read(&body).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&body, bytes).unwrap();
    std::fs::remove_file(outbox.join(".relayed")).unwrap();
    let tampered = fepd(&["relay", outbox.to_str().unwrap(), "-c", &relay_config]);
    assert!(!tampered.status.success());
    assert!(
        text(&tampered).contains("NOT RELAYED"),
        "{}",
        text(&tampered)
    );
    broker::delete_queue(&queue).await;
    broker::delete_queue(&control_queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spool_replay_resends_retained_batches_with_the_same_ids() {
    let exchange = unique("fep.records.replay");
    let (_conn, _ch, queue) = queue_for(&exchange).await;
    let demo = amqp_demo(3_000, "\"amqp://127.0.0.1:5672/%2f\"", &exchange, "").await;
    let config = demo.config.to_str().unwrap().to_string();
    let out = fepd(&["run", "--once", "-c", &config]);
    assert!(out.status.success(), "{}", text(&out));
    let replay = fepd(&[
        "spool",
        "replay",
        "subsidy",
        "--from-seq",
        "1001",
        "-c",
        &config,
    ]);
    let said = text(&replay);
    assert!(replay.status.success(), "{said}");
    let status = fepd(&["status", "--json", "-c", &config]);
    let status: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let last_seq = |name: &str| {
        status["connectors"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["connector"] == name)
            .unwrap()["last_seq"]
            .as_u64()
            .unwrap() as usize
    };
    let subsidy = last_seq("subsidy");
    let resent = said
        .lines()
        .find_map(|l| l.strip_prefix("re-sent "))
        .unwrap_or_else(|| panic!("{said}"));
    let number = |text: &str, after: &str| -> usize {
        text.split(after)
            .nth(1)
            .unwrap()
            .trim_start_matches(' ')
            .split(|c: char| !c.is_ascii_digit())
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    let batches = number(&format!(" {resent}"), " ");
    let records = number(resent, " (");
    // The batch holding seq 1001 and every later one: from 1001 on, plus the head of
    // that batch.
    assert!(
        records >= subsidy - 1000
            && records < subsidy - 1000 + 500
            && batches >= (subsidy - 1000) / 500,
        "{said}"
    );
    let expected = subsidy + last_seq("ledger");
    let report = broker::pika_consume(&queue, expected, &broker::pubkey_file(&demo));
    assert_eq!(report["duplicate_batches"], batches as u64, "{report}");
    assert_eq!(report["duplicate_records"], records as u64, "{report}");
    let unknown = fepd(&["spool", "replay", "nope", "--from-seq", "1", "-c", &config]);
    assert!(!unknown.status.success());
    broker::delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_pauses_extraction_with_an_alarm_and_drops_nothing() {
    // The broker is unreachable (the link is cut) and the spool is capped at 2 MiB:
    // extraction stops at the cap with the alarm raised; when the link is back, delivery
    // makes room and extraction finishes. Every record arrives.
    let proxy = broker::Proxy::start("127.0.0.1:5672").await;
    proxy.cut();
    let exchange = unique("fep.records.full");
    let (_conn, _ch, queue) = queue_for(&exchange).await;
    let demo = amqp_demo(
        80_000,
        &format!("\"amqp://127.0.0.1:{}/%2f\"", proxy.port),
        &exchange,
        "connect_timeout = \"1s\"\nretry_timeout = \"60s\"",
    )
    .await;
    let config = std::fs::read_to_string(&demo.config).unwrap();
    std::fs::write(
        &demo.config,
        config.replace("[spool]\n", "[spool]\nmax_bytes = \"2MiB\"\n"),
    )
    .unwrap();
    let expected = 80_000 - demo.generated.planted.len() + 5_000;
    let agent = std::sync::Arc::new(demo.agent().await);
    let run = {
        let agent = agent.clone();
        tokio::spawn(async move { fepd::pipeline::run_once(&agent).await })
    };
    broker::wait_for(
        "the spool-full alarm",
        std::time::Duration::from_secs(120),
        || async { agent.spool.stats().await.unwrap().full_since.is_some() },
    )
    .await;
    let stats = agent.spool.stats().await.unwrap();
    assert!(
        (stats.pending_records as usize) < expected / 2,
        "extraction paused well before the end: {stats:?}"
    );
    let status = fepd(&["status", "-c", demo.config.to_str().unwrap()]);
    assert!(text(&status).contains("SPOOL FULL"), "{}", text(&status));
    proxy.restore();
    let summary = tokio::time::timeout(std::time::Duration::from_secs(180), run)
        .await
        .expect("the run ends once delivery makes room")
        .unwrap()
        .expect("run");
    assert_eq!(summary.delivered.records as usize, expected);
    assert!(
        agent.spool.stats().await.unwrap().full_since.is_none(),
        "alarm cleared"
    );
    let report = broker::pika_consume(&queue, expected, &broker::pubkey_file(&demo));
    assert_eq!(report["records"], expected as u64, "{report}");
    broker::delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_given_by_ip_address_is_the_one_connected_to() {
    // Ops often give brokers by address on the extranet. On 127.0.0.2 only the proxy
    // listens, so delivering proves the address (not a default host) was used.
    let proxy = broker::Proxy::start_on("127.0.0.2", "127.0.0.1:5672").await;
    let exchange = unique("fep.records.ip");
    let (_conn, _ch, queue) = queue_for(&exchange).await;
    let demo = amqp_demo(
        1_000,
        &format!("\"amqp://127.0.0.2:{}/%2f\"", proxy.port),
        &exchange,
        "",
    )
    .await;
    let agent = demo.agent().await;
    let summary = fepd::pipeline::run_once(&agent)
        .await
        .expect("delivers via 127.0.0.2");
    assert!(summary.delivered.records > 0);
    assert!(
        proxy
            .upstream_bytes
            .load(std::sync::atomic::Ordering::SeqCst)
            > 0
    );
    broker::delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_waits_for_a_file_that_has_not_crossed_yet() {
    let demo = common::demo_dir(3_000, 500).await;
    let out = fepd(&["run", "--once", "-c", demo.config.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out));
    let outbox = demo.outbox();
    // The gateway has delivered everything but subsidy's second batch (its manifest comes
    // last, so without it the batch is not there yet).
    let mut subsidy: Vec<(i64, String)> = std::fs::read_dir(&outbox)
        .unwrap()
        .filter_map(|e| {
            let name = e.unwrap().file_name().to_string_lossy().into_owned();
            let seq = name
                .strip_prefix("subsidy-")?
                .strip_suffix(".json")?
                .parse()
                .ok()?;
            Some((seq, name))
        })
        .collect();
    subsidy.sort();
    let (second_seq, second) = subsidy[1].clone();
    let third_seq = subsidy[2].0;
    let held = tempfile::tempdir().unwrap();
    std::fs::rename(outbox.join(&second), held.path().join(&second)).unwrap();

    let exchange = unique("fep.records.gap");
    let (_conn, ch, queue) = queue_for(&exchange).await;
    let control_queue = unique("fepd.test.control");
    broker::bind_queue(&ch, &format!("{exchange}.control"), &control_queue).await;
    let relay = amqp_demo(10, "\"amqp://127.0.0.1:5672/%2f\"", &exchange, "").await;
    let relay_config = relay.config.to_str().unwrap().to_string();
    let dir = outbox.to_str().unwrap();

    let first = fepd(&["relay", dir, "-c", &relay_config]);
    let said = text(&first);
    assert!(!first.status.success(), "{said}");
    let waiting = format!(
        "seq {second_seq}..{} of subsidy has not arrived yet",
        third_seq - 1
    );
    assert!(said.contains(&waiting), "{said}");

    std::fs::rename(held.path().join(&second), outbox.join(&second)).unwrap();
    let again = fepd(&["relay", dir, "-c", &relay_config]);
    assert!(again.status.success(), "{}", text(&again));

    let pubkey = broker::pubkey_file(&demo);
    let (verified, said) = verify_queue(&queue, &pubkey);
    assert!(verified.status.success(), "in order, no gap: {said}");
    assert!(said.contains(" 0 re-sent batch(es)"), "{said}");
    broker::delete_queue(&queue).await;
    broker::delete_queue(&control_queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_spool_with_delivery_refused_ends_the_pass_instead_of_waiting_forever() {
    // The platform forbids declaring and the exchange does not exist: delivery is refused
    // for good, so a pass paused on the full spool must end (and keep what it committed).
    let exchange = unique("fep.records.missing");
    let demo = amqp_demo(
        80_000,
        "\"amqp://127.0.0.1:5672/%2f\"",
        &exchange,
        "passive = true",
    )
    .await;
    let config = std::fs::read_to_string(&demo.config).unwrap();
    std::fs::write(
        &demo.config,
        config.replace("[spool]\n", "[spool]\nmax_bytes = \"1MiB\"\n"),
    )
    .unwrap();
    let agent = demo.agent().await;
    let result = tokio::time::timeout(
        std::time::Duration::from_secs(120),
        fepd::pipeline::run_once(&agent),
    )
    .await
    .expect("the run ends");
    let err = result.expect_err("delivery refused").to_string();
    assert!(err.contains("exchange"), "{err}");
    let stats = agent.spool.stats().await.unwrap();
    assert!(
        stats.pending_records > 0,
        "what was read stays spooled: {stats:?}"
    );
    assert!(
        (stats.pending_records as usize) < 80_000,
        "extraction stopped at the cap: {stats:?}"
    );
}
