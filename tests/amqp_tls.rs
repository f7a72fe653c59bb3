//! TLS to the broker, against a private RabbitMQ node with a TLS listener that requires a
//! client certificate (`tests/support/rabbitmq-tls-node.sh`: a CA, a server and a client
//! certificate generated for the test, free ports, its own data directory — the machine's
//! main broker is not touched). Shown: verification against the configured CA with the
//! host name succeeds and mTLS with SASL EXTERNAL logs in; a server certificate from
//! another CA, or for another name, is refused with a clear error; a missing client
//! certificate is refused.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

/// The private node; stopped on drop, also when the test fails.
struct TlsNode {
    dir: tempfile::TempDir,
    tls_port: u16,
    amqp_port: u16,
}

fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/rabbitmq-tls-node.sh")
}

impl TlsNode {
    fn start() -> TlsNode {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("bash")
            .arg(script())
            .arg("start")
            .arg(dir.path())
            .output()
            .expect("bash");
        assert!(
            out.status.success(),
            "the TLS node did not start: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let env = String::from_utf8_lossy(&out.stdout).into_owned();
        let port = |key: &str| -> u16 {
            env.lines()
                .find_map(|l| l.strip_prefix(&format!("{key}=")))
                .unwrap_or_else(|| panic!("{key} in {env}"))
                .parse()
                .unwrap()
        };
        TlsNode {
            tls_port: port("tls_port"),
            amqp_port: port("amqp_port"),
            dir,
        }
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

impl Drop for TlsNode {
    fn drop(&mut self) {
        let _ = std::process::Command::new("bash")
            .arg(script())
            .arg("stop")
            .arg(self.dir.path())
            .output();
    }
}

/// A demo agent whose sink is the given `[sink]` table.
async fn demo_with_sink(sink: &str) -> common::DemoDir {
    let demo = common::demo_dir(1_000, 500).await;
    let text = std::fs::read_to_string(&demo.config).unwrap();
    std::fs::write(
        &demo.config,
        text.replace("[sink]\ntype = \"dir\"\npath = \"outbox\"", sink),
    )
    .unwrap();
    demo
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_verifies_the_broker_and_client_certificates_are_required() {
    // SAFETY: set before any config is loaded in this binary.
    unsafe { std::env::set_var("FEPD_TEST_AMQP_PASSWORD", "guest") };
    let node = TlsNode::start();
    let exchange = common::broker::unique("fep.records.tls");

    // A queue on the private node, declared over its plain listener.
    let conn = lapin::Connection::connect(
        &format!("amqp://guest:guest@127.0.0.1:{}/%2f", node.amqp_port),
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap();
    let ch = conn.create_channel().await.unwrap();
    let queue = common::broker::unique("fepd.test.tls");
    common::broker::bind_queue(&ch, &exchange, &queue).await;

    // mTLS with SASL EXTERNAL: the broker's certificate verified against the test CA and
    // the host name, the agent known by its certificate.
    let sink = format!(
        "[sink]\ntype = \"amqp\"\nurls = [\"amqps://localhost:{port}/%2f\"]\nexchange = \"{exchange}\"\n\
         ca_file = \"{ca}\"\nclient_cert = \"{cert}\"\nclient_key = \"{key}\"\nauth = \"external\"\n\
         connect_timeout = \"5s\"\nretry_timeout = \"1s\"",
        port = node.tls_port,
        ca = node.file("ca.pem"),
        cert = node.file("client.pem"),
        key = node.file("client.key"),
    );
    let demo = demo_with_sink(&sink).await;
    let agent = demo.agent().await;
    let summary = fepd::pipeline::run_once(&agent)
        .await
        .expect("delivers over mTLS");
    assert!(summary.delivered.records > 0);
    let depth = common::broker::message_count(&ch, &queue).await.unwrap();
    assert_eq!(u64::from(depth), summary.delivered.batches);
    drop(agent);

    // A broker certificate from another CA: refused at once, and said so.
    let other = sink.replace(&node.file("ca.pem"), &node.file("other-ca.pem"));
    let demo = demo_with_sink(&other).await;
    let agent = demo.agent().await;
    let started = std::time::Instant::now();
    let err = fepd::pipeline::run_once(&agent)
        .await
        .expect_err("an unknown CA is refused");
    let said = err.to_string();
    assert!(!err.is_retryable(), "{said}");
    assert!(
        said.contains("certificate") || said.contains("UnknownIssuer"),
        "{said}"
    );
    assert!(said.contains("check ca_file"), "tells what to do: {said}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "no retrying a refusal"
    );
    drop(agent);

    // The right CA, the wrong name: the broker reached as 127.0.0.2 (through a proxy) has
    // no certificate for that address.
    let target: &'static str = Box::leak(format!("127.0.0.1:{}", node.tls_port).into_boxed_str());
    let proxy = common::broker::Proxy::start_on("127.0.0.2", target).await;
    let renamed = sink.replace(
        &format!("amqps://localhost:{}/", node.tls_port),
        &format!("amqps://127.0.0.2:{}/", proxy.port),
    );
    let demo = demo_with_sink(&renamed).await;
    let agent = demo.agent().await;
    let err = fepd::pipeline::run_once(&agent)
        .await
        .expect_err("a certificate for another name is refused");
    let said = err.to_string();
    assert!(!err.is_retryable(), "{said}");
    assert!(said.contains("not valid for name \"127.0.0.2\""), "{said}");
    drop(agent);

    // No client certificate where the broker requires one (user and password alone).
    let sink = format!(
        "[sink]\ntype = \"amqp\"\nurls = [\"amqps://localhost:{port}/%2f\"]\nexchange = \"{exchange}\"\n\
         ca_file = \"{ca}\"\nuser = \"guest\"\npassword = {{ env = \"FEPD_TEST_AMQP_PASSWORD\" }}\n\
         connect_timeout = \"5s\"\nretry_timeout = \"1s\"",
        port = node.tls_port,
        ca = node.file("ca.pem"),
    );
    let demo = demo_with_sink(&sink).await;
    let agent = demo.agent().await;
    let err = fepd::pipeline::run_once(&agent)
        .await
        .expect_err("no client certificate is refused");
    let said = err.to_string();
    assert!(said.to_lowercase().contains("certificate"), "{said}");
    assert!(!said.contains("guest\""), "{said}");
    let _ = conn.close(200, "".into()).await;
}
