//! Outages of the machine's RabbitMQ itself, while fepd delivers: the broker application
//! stopped and started (`rabbitmqctl stop_app` / `start_app`), and a memory alarm that
//! blocks publishers. These touch the whole broker, so this binary's tests run one at a
//! time (cargo runs test binaries one after another). In both, an independent consumer
//! (Python's pika) then receives every record, verifies the chain, and sees duplicates
//! only as whole re-sent batches.

mod common;

use std::time::Duration;

use common::broker::{self, amqp_demo, queue_for, rabbitmqctl, unique};

/// One outage at a time: they act on the shared broker.
static BROKER_LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// Undoes an outage even when the test fails half-way.
struct Restore(&'static [&'static str]);

impl Drop for Restore {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(self.0)
            .output();
    }
}

fn broker_running() -> bool {
    std::process::Command::new("rabbitmq-diagnostics")
        .args(["-q", "check_running"])
        .output()
        .is_ok_and(|o| o.status.success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_stopped_and_started_during_a_200k_record_delivery() {
    let _one_at_a_time = BROKER_LOCK.lock().await;
    let exchange = unique("fep.records.restart");
    let (conn, _ch, queue) = queue_for(&exchange).await;
    drop(conn);
    let demo = amqp_demo(
        200_000,
        "\"amqp://127.0.0.1:5672/%2f\"",
        &exchange,
        "confirm_timeout = \"5s\"\nretry_timeout = \"120s\"",
    )
    .await;
    // Paced, so that the outage falls in the middle of the stream.
    let subsidy = demo.path().join("connectors.d/subsidy.toml");
    let text = std::fs::read_to_string(&subsidy).unwrap();
    std::fs::write(
        &subsidy,
        text.replace("lag = \"5m\"", "lag = \"5m\"\nmax_rows_per_second = 25000"),
    )
    .unwrap();
    let log = demo.path().join("fepd.log");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_fepd"))
        .args(["run", "--once", "-c", demo.config.to_str().unwrap()])
        .env("FEPD_TEST_AMQP_PASSWORD", "guest")
        .env_remove("FEPD_CRASH_AT")
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();

    broker::wait_for("batches flowing", Duration::from_secs(120), || async {
        broker::queue_depth(&queue).await.unwrap_or(0) >= 20
    })
    .await;
    let restore = Restore(&["start_app"]);
    rabbitmqctl(&["stop_app"]);
    broker::wait_for(
        "fepd to notice the outage",
        Duration::from_secs(60),
        || async { std::fs::read_to_string(&log).is_ok_and(|l| l.contains("delivery failed")) },
    )
    .await;
    let depth_during: Option<u32> = broker::queue_depth(&queue).await;
    assert!(depth_during.is_none(), "the broker is down");
    rabbitmqctl(&["start_app"]);
    drop(restore);
    broker::wait_for("the broker back", Duration::from_secs(60), || async {
        broker_running()
    })
    .await;
    let mut status = None;
    broker::wait_for("fepd to finish", Duration::from_secs(240), || {
        status = child.try_wait().unwrap();
        let done = status.is_some();
        async move { done }
    })
    .await;
    let log_text = std::fs::read_to_string(&log).unwrap();
    assert!(status.unwrap().success(), "{log_text}");
    assert!(log_text.contains("delivery recovered"), "{log_text}");

    let agent = demo.agent().await;
    let states = agent.spool.connector_states().await.unwrap();
    let expected: i64 = states.iter().map(|s| s.1).sum();
    assert_eq!(agent.spool.stats().await.unwrap().pending_batches, 0);
    drop(agent);
    let report = broker::pika_consume(&queue, expected as usize, &broker::pubkey_file(&demo));
    assert_eq!(report["records"], expected, "{report}");
    assert!(expected > 200_000);
    broker::delete_queue(&queue).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_alarm_blocks_publishing_then_delivery_resumes() {
    let _one_at_a_time = BROKER_LOCK.lock().await;
    let exchange = unique("fep.records.alarm");
    let (_conn, _ch, queue) = queue_for(&exchange).await;
    let demo = amqp_demo(
        20_000,
        "\"amqp://127.0.0.1:5672/%2f\"",
        &exchange,
        "confirm_timeout = \"2s\"\nretry_timeout = \"120s\"",
    )
    .await;
    let expected = 20_000 - demo.generated.planted.len() + 5_000;
    // The broker thinks it is out of memory: every publishing connection is blocked.
    let restore = Restore(&["set_vm_memory_high_watermark", "0.4"]);
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.0001"]);
    let agent = std::sync::Arc::new(demo.agent().await);
    let run = {
        let agent = agent.clone();
        tokio::spawn(async move { fepd::pipeline::run_once(&agent).await })
    };
    broker::wait_for(
        "fepd's connection blocked by the alarm",
        Duration::from_secs(60),
        || async {
            rabbitmqctl(&["list_connections", "state"])
                .lines()
                .any(|l| l.trim() == "blocked")
        },
    )
    .await;
    assert_eq!(
        agent.spool.stats().await.unwrap().delivered_batches,
        0,
        "nothing counts as delivered while the broker blocks"
    );
    rabbitmqctl(&["set_vm_memory_high_watermark", "0.4"]);
    drop(restore);
    let summary = tokio::time::timeout(Duration::from_secs(180), run)
        .await
        .expect("delivery resumes after the alarm")
        .unwrap()
        .expect("run");
    assert_eq!(summary.delivered.records as usize, expected);
    let report = broker::pika_consume(&queue, expected, &broker::pubkey_file(&demo));
    assert_eq!(report["records"], expected as u64, "{report}");
    broker::delete_queue(&queue).await;
}
