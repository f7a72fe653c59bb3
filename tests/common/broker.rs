//! Helpers for the tests against the machine's RabbitMQ (127.0.0.1:5672, guest/guest):
//! demo agents whose sink is the broker, queues bound to a test's own exchange, the
//! independent `pika` consumer, `rabbitmqctl`, and a TCP proxy that can cut the network.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use lapin::options::{QueueBindOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties};

pub const BROKER: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

pub fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}.{}.{nanos}", std::process::id())
}

/// Waits until `check` holds, polling every 50 ms, or panics after `timeout` saying what
/// was awaited.
pub async fn wait_for<F, Fut>(what: &str, timeout: Duration, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Turns a demo's dir sink into an amqp sink on `exchange`; `extra` adds sink settings.
pub async fn amqp_demo(rows: usize, urls: &str, exchange: &str, extra: &str) -> super::DemoDir {
    // SAFETY: every test of a binary sets the same value before loading a config.
    unsafe { std::env::set_var("FEPD_TEST_AMQP_PASSWORD", "guest") };
    let demo = super::demo_dir(rows, 500).await;
    // Short timeouts unless the test sets its own.
    let defaults: String = [("connect_timeout", "3s"), ("retry_timeout", "1s")]
        .iter()
        .filter(|(k, _)| !extra.contains(k))
        .map(|(k, v)| format!("{k} = \"{v}\"\n"))
        .collect();
    let text = std::fs::read_to_string(&demo.config).unwrap();
    let text = text.replace(
        "[sink]\ntype = \"dir\"\npath = \"outbox\"",
        &format!("[sink]\ntype = \"amqp\"\nurls = [{urls}]\nuser = \"guest\"\npassword = {{ env = \"FEPD_TEST_AMQP_PASSWORD\" }}\nexchange = \"{exchange}\"\ncontrol_exchange = \"{exchange}.control\"\n{extra}\n{defaults}"),
    );
    assert!(text.contains("type = \"amqp\""));
    std::fs::write(&demo.config, text).unwrap();
    demo
}

/// Writes the demo's public key to a file (for `--pubkey`).
pub fn pubkey_file(demo: &super::DemoDir) -> std::path::PathBuf {
    use base64::Engine as _;
    let path = demo.path().join("public.key");
    let key = base64::engine::general_purpose::STANDARD.encode(demo.public_key().as_bytes());
    std::fs::write(&path, key).unwrap();
    path
}

pub async fn connect() -> Connection {
    Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .expect("RabbitMQ on 127.0.0.1:5672 (scripts/test starts it)")
}

/// Declares `exchange` and a durable queue bound to it with `#`.
pub async fn queue_for(exchange: &str) -> (Connection, lapin::Channel, String) {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let queue = unique("fepd.test.q");
    bind_queue(&ch, exchange, &queue).await;
    (conn, ch, queue)
}

pub async fn bind_queue(ch: &lapin::Channel, exchange: &str, queue: &str) {
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
    // A queue a failed test leaves behind goes away by itself after ten idle minutes.
    let mut args = FieldTable::default();
    args.insert(
        "x-expires".into(),
        lapin::types::AMQPValue::LongInt(600_000),
    );
    ch.queue_declare(
        queue.into(),
        QueueDeclareOptions {
            durable: true,
            ..Default::default()
        },
        args,
    )
    .await
    .unwrap();
    ch.queue_bind(
        queue.into(),
        exchange.into(),
        "#".into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await
    .unwrap();
}

/// Messages in `queue` now (a fresh connection each time: the broker may have restarted).
pub async fn queue_depth(queue: &str) -> Option<u32> {
    let conn = Connection::connect(BROKER, ConnectionProperties::default())
        .await
        .ok()?;
    let ch = conn.create_channel().await.ok()?;
    let n = message_count(&ch, queue).await;
    let _ = conn.close(200, "".into()).await;
    n
}

/// Messages in `queue` on the channel's broker, if the queue exists.
pub async fn message_count(ch: &lapin::Channel, queue: &str) -> Option<u32> {
    let declared = ch
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .ok()?;
    Some(declared.message_count())
}

pub async fn delete_queue(queue: &str) {
    let conn = connect().await;
    let ch = conn.create_channel().await.unwrap();
    let _ = ch.queue_delete(queue.into(), Default::default()).await;
    let _ = conn.close(200, "".into()).await;
}

/// What the independent consumer (`tests/support/pika_consume.py`, Python's pika) saw.
pub fn pika_consume(queue: &str, expect_records: usize, pubkey: &Path) -> serde_json::Value {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/support/pika_consume.py");
    let out = std::process::Command::new("python3")
        .arg(script)
        .args(["--url", BROKER, "--queue", queue])
        .args(["--expect-records", &expect_records.to_string()])
        .args(["--timeout", "300", "--idle", "20"])
        .arg("--pubkey")
        .arg(pubkey)
        .output()
        .expect("python3 (scripts/test installs pika)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!(
            "pika consumer printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    assert!(
        out.status.success(),
        "the pika consumer found problems: {report}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    report
}

/// Runs `rabbitmqctl` on the machine's broker.
pub fn rabbitmqctl(args: &[&str]) -> String {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A TCP proxy in front of the broker that can cut the network the way a failing
/// extranet link does: packets vanish, nothing is reset.
pub struct Proxy {
    pub port: u16,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    /// Bytes forwarded from client to broker.
    pub upstream_bytes: Arc<AtomicU64>,
}

impl Proxy {
    pub async fn start(target: &'static str) -> Proxy {
        Proxy::start_on("127.0.0.1", target).await
    }

    /// A proxy listening on `ip` (any of 127.0.0.0/8 on Linux).
    pub async fn start_on(ip: &str, target: &'static str) -> Proxy {
        let listener = tokio::net::TcpListener::bind((ip, 0)).await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let cut = Arc::new(AtomicBool::new(false));
        let generation = Arc::new(AtomicU64::new(0));
        let upstream_bytes = Arc::new(AtomicU64::new(0));
        let (c, g, u) = (cut.clone(), generation.clone(), upstream_bytes.clone());
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (c, g, u) = (c.clone(), g.clone(), u.clone());
                tokio::spawn(async move {
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let born = g.load(Ordering::SeqCst);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    let up = pipe(cr, sw, c.clone(), g.clone(), born, Some(u));
                    let down = pipe(sr, cw, c, g, born, None);
                    let _ = tokio::join!(up, down);
                });
            }
        });
        Proxy {
            port,
            cut,
            generation,
            upstream_bytes,
        }
    }

    /// From now on, bytes on every connection vanish (sockets stay open).
    pub fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
    }

    /// The link is back: new connections work; the ones from before the cut are closed.
    pub fn restore(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        self.cut.store(false, Ordering::SeqCst);
    }
}

async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    cut: Arc<AtomicBool>,
    generation: Arc<AtomicU64>,
    born: u64,
    counter: Option<Arc<AtomicU64>>,
) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match tokio::time::timeout(Duration::from_millis(100), from.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(n)) => n,
            Err(_) => {
                if generation.load(Ordering::SeqCst) != born {
                    return;
                }
                continue;
            }
        };
        if generation.load(Ordering::SeqCst) != born {
            return;
        }
        if cut.load(Ordering::SeqCst) {
            continue;
        }
        if let Some(c) = &counter {
            c.fetch_add(n as u64, Ordering::SeqCst);
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
