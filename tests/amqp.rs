//! The `amqp` sink against the machine's RabbitMQ (127.0.0.1:5672, guest/guest): every
//! spooled batch arrives as one persistent message with the contract's properties and
//! headers, verifiable record by record; an unroutable message is a failure that leaves the
//! batch in the spool; a broker that cannot be reached only makes the spool grow.

mod common;

use lapin::options::{BasicAckOptions, BasicGetOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};

const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// A demo agent whose sink is the broker, on its own exchange.
async fn amqp_demo(rows: usize, urls: &str, exchange: &str) -> common::DemoDir {
    let demo = common::demo_dir(rows, 500).await;
    let text = std::fs::read_to_string(&demo.config).unwrap();
    let text = text.replace(
        "[sink]\ntype = \"dir\"\npath = \"outbox\"",
        &format!("[sink]\ntype = \"amqp\"\nurls = [{urls}]\nuser = \"guest\"\npassword = {{ env = \"FEPD_TEST_AMQP_PASSWORD\" }}\nexchange = \"{exchange}\"\nconnect_timeout = \"3s\""),
    );
    assert!(text.contains("type = \"amqp\""));
    std::fs::write(&demo.config, text).unwrap();
    demo
}

async fn queue_for(exchange: &str) -> (Connection, lapin::Channel, String) {
    let conn = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (scripts/test starts it)");
    let ch = conn.create_channel().await.unwrap();
    ch.exchange_declare(
        exchange.into(),
        lapin::ExchangeKind::Topic,
        lapin::options::ExchangeDeclareOptions {
            durable: true,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    let queue = unique("fepd.test.q");
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions {
            auto_delete: false,
            ..Default::default()
        },
        FieldTable::default(),
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.as_str().into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
    (conn, ch, queue)
}

fn headers_json(props: &lapin::BasicProperties) -> serde_json::Map<String, serde_json::Value> {
    let mut map = serde_json::Map::new();
    if let Some(h) = props.headers() {
        for (k, v) in h.inner() {
            let v = match v {
                AMQPValue::LongString(s) => {
                    serde_json::Value::String(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                AMQPValue::LongLongInt(i) => serde_json::Value::from(*i),
                other => serde_json::Value::String(format!("{other:?}")),
            };
            map.insert(k.to_string(), v);
        }
    }
    map
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_arrive_as_confirmed_persistent_messages_and_verify() {
    // SAFETY: set before any config is loaded in this binary.
    unsafe { std::env::set_var("FEPD_TEST_AMQP_PASSWORD", "guest") };
    let exchange = unique("fep.records.test");
    let (_conn, ch, queue) = queue_for(&exchange).await;
    let demo = amqp_demo(3_000, "\"amqp://127.0.0.1:5672/%2f\"", &exchange).await;
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
        let headers = headers_json(props);
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
    // SAFETY: see above.
    unsafe { std::env::set_var("FEPD_TEST_AMQP_PASSWORD", "guest") };
    // No queue bound: mandatory messages come back, nothing is marked delivered.
    let exchange = unique("fep.records.unbound");
    let demo = amqp_demo(1_000, "\"amqp://127.0.0.1:5672/%2f\"", &exchange).await;
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
    let count = ch
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .unwrap()
        .message_count();
    assert!(count > 0);
    ch.queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();
}
