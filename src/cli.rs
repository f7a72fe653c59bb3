//! The `fepd` command line. This is the edge of the program: library errors become
//! `anyhow` errors here, printed with what to do next.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

use crate::config::{AgentConfig, SinkConfig, parse_duration};
use crate::pipeline::{self, Agent};
use crate::schema::RecordType;
use crate::spool::{RejectFilter, Spool};
use crate::{demo, keys, verify};

#[derive(Debug, Parser)]
#[command(name = "fepd", version, about = "Front-end processor agent for the livelihood-fund supervision platform", long_about = None)]
pub struct Cli {
    /// The agent config file.
    #[arg(
        long,
        short = 'c',
        global = true,
        env = "FEPD_CONFIG",
        default_value = "/etc/fepd/fepd.toml"
    )]
    pub config: PathBuf,
    /// Log filter, e.g. `info`, `debug`, `fepd=debug` (default: info; warn for `demo`).
    #[arg(long, global = true, env = "FEPD_LOG")]
    pub log: Option<String>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: a pass of every connector every `--interval`, delivering as it goes.
    Run {
        /// One pass of every connector, deliver everything, then exit.
        #[arg(long)]
        once: bool,
        /// Time between passes.
        #[arg(long, default_value = "5m")]
        interval: String,
    },
    /// Run one connector's pass with progress (rows, estimated total, rate); Ctrl-C stops
    /// it cleanly and running it again resumes from where it stopped.
    Backfill { connector: String },
    /// Generate a sample legacy database, run one pass into a dir sink, verify, summarise.
    Demo {
        /// Where the demo lives.
        #[arg(long, default_value = "fepd-demo")]
        dir: PathBuf,
        /// Subsidy payment rows to generate.
        #[arg(long, default_value_t = 100_000)]
        rows: usize,
        /// Start over: delete the demo directory first.
        #[arg(long)]
        reset: bool,
        /// Before the pass, update a few rows and delete a few ledger entries in the demo
        /// database, to see exactly those changes delivered.
        #[arg(long)]
        mutate: bool,
    },
    /// Validate the configuration and try every connector's source.
    Check,
    /// Show how a connector's rows map (records and rejects with reasons); writes nothing.
    Preview {
        connector: String,
        #[arg(long, default_value_t = 20)]
        limit: usize,
    },
    /// The spool and every connector's position.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Quarantined rows and why they were rejected.
    Rejects {
        #[command(subcommand)]
        action: RejectsCommand,
    },
    /// Print the JSON Schema of one record type's data (or of all, with the envelope).
    Schema { record_type: Option<String> },
    /// Create a signing key (mode 0600) and print its public key for the platform.
    Keygen {
        /// Key file to create (default: `signing_key` of the config).
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Verify delivered batches — a directory, or a queue with `--amqp` — hashes, ids,
    /// chain, seq continuity, signatures.
    Verify {
        /// A dir sink's directory.
        #[arg(required_unless_present = "amqp", conflicts_with = "amqp")]
        dir: Option<PathBuf>,
        /// The agent's public key (base64), or a file holding it.
        #[arg(long)]
        pubkey: String,
        /// Consume and verify a queue instead: `amqp://user:pass@host:5672/vhost` or
        /// `amqps://…` (prefer the password in FEPD_VERIFY_PASSWORD over the URL).
        #[arg(long, requires = "queue")]
        amqp: Option<String>,
        /// The queue to consume (bound to fep.records).
        #[arg(long)]
        queue: Option<String>,
        /// CA bundle for amqps://.
        #[arg(long)]
        ca_file: Option<PathBuf>,
        /// Stop when no message came for this long.
        #[arg(long, default_value = "5s")]
        idle: String,
        /// Stop once this many distinct records were verified.
        #[arg(long)]
        expect: Option<u64>,
        /// Do not acknowledge: the messages stay in the queue.
        #[arg(long)]
        keep: bool,
    },
    /// Publish the batch files a dir sink wrote (after a one-way gateway) to the
    /// configured sink; files relayed before are skipped, and a repeat is harmless.
    Relay { dir: PathBuf },
    /// The spool's delivered batches.
    Spool {
        #[command(subcommand)]
        action: SpoolCommand,
    },
}

#[derive(Debug, Subcommand)]
pub enum SpoolCommand {
    /// Re-send a connector's retained batches from a seq on (same message ids and seqs).
    Replay {
        connector: String,
        #[arg(long)]
        from_seq: i64,
    },
}

#[derive(Debug, Subcommand)]
pub enum RejectsCommand {
    /// List rejects with their reasons.
    List {
        #[arg(long)]
        connector: Option<String>,
        /// Only rejects that broke this rule, e.g. `idcard.check_char`.
        #[arg(long)]
        rule: Option<String>,
        #[arg(long, default_value_t = 50)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// Export rejects to CSV (UTF-8 with BOM, opens in Excel).
    Export {
        #[arg(long)]
        connector: Option<String>,
        #[arg(long)]
        rule: Option<String>,
        /// Output file; `-` for standard output.
        #[arg(long, default_value = "-")]
        out: PathBuf,
    },
}

/// Entry point of the binary.
pub fn main() -> ExitCode {
    tune_allocator();
    // One TLS crypto provider for every crate (see crate-notes.md); an error only means one
    // was installed already.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    let default_log = if matches!(cli.command, Command::Demo { .. }) {
        "warn"
    } else {
        "info"
    };
    let mut filter =
        tracing_subscriber::EnvFilter::try_new(cli.log.as_deref().unwrap_or(default_log))
            .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    // lapin logs every returned message whole, body included: records' personal data in
    // the log. fepd reports a returned batch itself, by message id.
    if let Ok(quiet) = "lapin::returned_messages=off".parse() {
        filter = filter.add_directive(quiet);
    }
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Run the command on a worker thread, not the main thread, so that everything it spawns
    // and the command itself share the runtime's workers.
    let outcome = runtime.block_on(async {
        match tokio::spawn(dispatch(cli)).await {
            Ok(r) => r,
            Err(e) => Err(anyhow::anyhow!("internal error: {e}")),
        }
    });
    match outcome {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Keeps the resident memory of a long-running agent flat: batch bodies (hundreds of KiB,
/// and their copies in AMQP frames) are allocated and freed by several threads,
/// and glibc's defaults would keep growing per-thread arenas and raise the mmap threshold
/// after each free, holding freed bodies in the heap. With a fixed threshold of 256 KiB big
/// buffers are mapped and go back to the kernel when freed (measured by `bench/run.sh
/// postgres-amqp`: peak RSS 67–72 → 55–58 MiB, the rate within its noise).
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator parameters; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 256 * 1024);
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

async fn dispatch(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Run { once, interval } => run(&cli.config, once, &interval).await,
        Command::Demo {
            dir,
            rows,
            reset,
            mutate,
        } => run_demo(&dir, rows, reset, mutate).await,
        Command::Check => check(&cli.config).await,
        Command::Backfill { connector } => backfill(&cli.config, &connector).await,
        Command::Preview { connector, limit } => preview(&cli.config, &connector, limit).await,
        Command::Status { json } => status(&cli.config, json).await,
        Command::Rejects { action } => rejects(&cli.config, action).await,
        Command::Schema { record_type } => schema(record_type.as_deref()),
        Command::Keygen { out } => keygen(&cli.config, out),
        Command::Verify {
            dir,
            pubkey,
            amqp,
            queue,
            ca_file,
            idle,
            expect,
            keep,
        } => match (dir, amqp, queue) {
            (_, Some(url), Some(queue)) => {
                let source = verify::queue::QueueSource {
                    url,
                    password: std::env::var("FEPD_VERIFY_PASSWORD").ok(),
                    queue,
                    ca_file,
                    idle: parse_duration(&idle)
                        .map_err(anyhow::Error::msg)
                        .context("--idle")?,
                    expect_records: expect,
                    keep,
                };
                verify_queue_cmd(&source, &pubkey).await
            }
            (Some(dir), _, _) => verify_cmd(&dir, &pubkey),
            _ => bail!("give a directory, or --amqp with --queue"),
        },
        Command::Relay { dir } => relay(&cli.config, &dir).await,
        Command::Spool {
            action:
                SpoolCommand::Replay {
                    connector,
                    from_seq,
                },
        } => spool_replay(&cli.config, &connector, from_seq).await,
    }
}

fn load(config: &Path) -> Result<AgentConfig> {
    Ok(AgentConfig::load(config)?)
}

async fn run(config: &Path, once: bool, interval: &str) -> Result<ExitCode> {
    let interval = parse_duration(interval)
        .map_err(anyhow::Error::msg)
        .context("--interval")?;
    let agent = Agent::open(load(config)?).await?;
    let stop = agent.stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        tracing::info!(
            "stop requested: finishing the current chunk, then delivering what is spooled"
        );
        stop.request();
    });
    loop {
        match pipeline::run_once(&agent).await {
            Ok(summary) => {
                for (c, e) in &summary.failures {
                    if once {
                        eprintln!("error: connector {c}: {e}");
                    }
                }
                if once {
                    println!(
                        "{} connector(s) run, {} record(s) delivered in {} batch(es), {} failure(s)",
                        summary.passes.len(),
                        summary.delivered.records,
                        summary.delivered.batches,
                        summary.failures.len()
                    );
                    return Ok(if summary.failures.is_empty() {
                        ExitCode::SUCCESS
                    } else {
                        ExitCode::FAILURE
                    });
                }
            }
            // The spool keeps everything not yet delivered; the next round retries.
            Err(e) if !once => {
                tracing::error!(error = %e, retryable = e.is_retryable(), "run failed; retrying next round")
            }
            Err(e) => return Err(e.into()),
        }
        if agent.stop.is_requested() {
            return Ok(ExitCode::SUCCESS);
        }
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = agent.stop.wait() => return Ok(ExitCode::SUCCESS),
        }
    }
}

async fn backfill(config: &Path, name: &str) -> Result<ExitCode> {
    use std::io::IsTerminal;
    let agent = Agent::open(load(config)?).await?;
    let Some(c) = agent.config.connector(name).cloned() else {
        let names: Vec<&str> = agent
            .config
            .connectors
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        bail!("no connector `{name}`; configured: {}", names.join(", "));
    };
    let stop = agent.stop.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.request();
    });
    let total = match pipeline::estimate_rows(&agent, &c).await {
        Ok(t) => t.map(|t| t.max(0) as u64),
        Err(e) => {
            tracing::warn!(error = %e, "cannot estimate the rows to read");
            None
        }
    };
    let started = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let bar = indicatif::ProgressBar::with_draw_target(
        total,
        if tty {
            indicatif::ProgressDrawTarget::stderr()
        } else {
            indicatif::ProgressDrawTarget::hidden()
        },
    );
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{prefix} [{bar:40}] {human_pos}/{human_len} rows  {per_sec}  eta {eta}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_prefix(format!("backfill {name}"));
    // The first report prints at once, then one every 5 s.
    let last_line = std::sync::Mutex::new(
        Instant::now()
            .checked_sub(Duration::from_secs(10))
            .unwrap_or_else(Instant::now),
    );
    let report = |rows: u64| {
        bar.set_position(rows);
        if !tty {
            // Plain lines for logs and pipes: one every 5 s.
            let mut last = last_line.lock().unwrap_or_else(|p| p.into_inner());
            if last.elapsed() >= Duration::from_secs(5) {
                *last = Instant::now();
                let rate = rows as f64 / started.elapsed().as_secs_f64().max(1e-9);
                let of = total
                    .map(|t| format!(" of ~{t} ({:.0}%)", 100.0 * rows as f64 / t.max(1) as f64))
                    .unwrap_or_default();
                eprintln!("backfill {name}: {rows} rows{of}, {rate:.0} rows/s");
            }
        }
    };
    let summary = pipeline::run_selected(&agent, Some(name), Some(&report)).await?;
    bar.finish_and_clear();
    let seconds = started.elapsed().as_secs_f64();
    if let Some((_, e)) = summary.failures.first() {
        eprintln!("error: {e}");
        eprintln!("what was committed is kept: run `fepd backfill {name}` again to resume");
        return Ok(ExitCode::FAILURE);
    }
    let p = summary.passes.first().cloned().unwrap_or_default();
    println!(
        "backfill {name}: {} rows read, {} records spooled, {} rejected, {} delivered in {seconds:.1} s ({:.0} rows/s)",
        p.rows_read,
        p.records,
        p.rejects,
        summary.delivered.records,
        p.rows_read as f64 / seconds.max(1e-9)
    );
    if agent.stop.is_requested() {
        println!(
            "interrupted: run `fepd backfill {name}` again to resume from the last committed row"
        );
    }
    Ok(ExitCode::SUCCESS)
}

async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term => {}
    }
}

async fn run_demo(dir: &Path, rows: usize, reset: bool, mutate: bool) -> Result<ExitCode> {
    if reset && dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let db = dir.join("legacy.db");
    let mut notes = Vec::new();
    if !db.exists() {
        let g = demo::generate(&db, rows)
            .await
            .context("generating the demo database")?;
        notes.push(format!(
            "generated {} with {} subsidy payments ({} planted bad rows) and {} ledger entries",
            db.display(),
            g.subsidy_rows,
            g.planted.len(),
            g.ledger_rows
        ));
    } else if mutate {
        let counter = dir.join(".mutations");
        let round: u32 = std::fs::read_to_string(&counter)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        let m = demo::mutate(&db, round)
            .await
            .context("changing the demo database")?;
        std::fs::write(&counter, (round + 1).to_string())?;
        notes.push(format!(
            "changed the demo database: {} subsidy row(s) and {} ledger entr(ies) updated, {} ledger entr(ies) deleted",
            m.subsidy_updated.len(),
            m.ledger_updated.len(),
            m.ledger_deleted.len()
        ));
    }
    let config_path = demo::write_config(dir)?;
    let key_path = dir.join("signing.key");
    let key = if key_path.exists() {
        keys::load_signing_key(&key_path)?
    } else {
        keys::generate_signing_key(&key_path)?
    };
    let config = load(&config_path)?;
    let outbox = match &config.sink {
        SinkConfig::Dir { path } => path.clone(),
        SinkConfig::Amqp(_) => {
            bail!("the demo writes to a dir sink; its fepd.toml was changed to another sink")
        }
    };
    let agent = Agent::open(config).await?;
    let rejects_before = agent.spool.max_reject_id().await?;
    let started = Instant::now();
    let summary = pipeline::run_once(&agent).await?;
    let seconds = started.elapsed().as_secs_f64();
    let report = verify::verify_dir(&outbox, &key.verifying_key())?;
    let reasons = agent.spool.reject_summary(rejects_before).await?;

    let mut out = std::io::stdout().lock();
    writeln!(out, "fepd demo — {}", dir.display())?;
    for n in &notes {
        writeln!(out, "  {n}")?;
    }
    let rows_read: u64 = summary.passes.iter().map(|p| p.rows_read).sum();
    let rejected: u64 = summary.passes.iter().map(|p| p.rejects).sum();
    for p in &summary.passes {
        writeln!(
            out,
            "  {:<8} rows read {:>8}  records {:>8} (deletes {})  unchanged {:>8}  rejected {:>5}",
            p.connector, p.rows_read, p.records, p.deletes, p.unchanged, p.rejects
        )?;
    }
    writeln!(out, "  rows read           {rows_read}")?;
    writeln!(
        out,
        "  records delivered   {} in {} batch(es) to {}",
        summary.delivered.records,
        summary.delivered.batches,
        outbox.display()
    )?;
    writeln!(
        out,
        "  rows rejected       {rejected} (new reasons below; all rejects: fepd -c {} rejects list)",
        agent.config.path.display()
    )?;
    for (connector, reason, n) in &reasons {
        writeln!(out, "    {n:>6}  {connector}: {reason}")?;
    }
    writeln!(out, "  seconds             {seconds:.2}")?;
    writeln!(
        out,
        "  records/s           {:.0}",
        rows_read as f64 / seconds.max(1e-9)
    )?;
    for (c, e) in &summary.failures {
        writeln!(out, "  FAILED {c}: {e}")?;
    }
    if report.ok() {
        let chains: Vec<String> = report
            .chains
            .iter()
            .map(|(c, s)| {
                format!(
                    "{c} seq {}..{} ({} batches)",
                    s.first_seq, s.last_seq, s.batches
                )
            })
            .collect();
        writeln!(out, "  verify              OK: {}", chains.join(", "))?;
    } else {
        for b in &report.breaks {
            writeln!(out, "  verify              BROKEN: {b}")?;
        }
    }
    writeln!(out, "  public key          {}", keys::public_key_b64(&key))?;
    writeln!(
        out,
        "  next: run it again (nothing new is delivered), or `fepd demo --mutate` to change a few rows"
    )?;
    if !report.ok() || !summary.failures.is_empty() {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn check(config: &Path) -> Result<ExitCode> {
    let config = load(config)?;
    println!(
        "config {}: OK ({} connector(s))",
        config.path.display(),
        config.connectors.len()
    );
    let mut failed = false;
    match keys::load_signing_key(&config.signing_key) {
        Ok(k) => println!(
            "signing key {}: OK, public key {}",
            config.signing_key.display(),
            keys::public_key_b64(&k)
        ),
        Err(e) => {
            failed = true;
            println!("signing key: FAILED: {e}");
        }
    }
    match crate::sink::build(&config) {
        Ok(sink) => match sink.probe().await {
            Ok(said) => println!("sink {}: OK ({said})", sink.describe()),
            Err(e) => {
                failed = true;
                println!("sink: FAILED: {e}");
            }
        },
        Err(e) => {
            failed = true;
            println!("sink: FAILED: {e}");
        }
    }
    match probe_writable(&config.state_dir) {
        Ok(()) => println!("state dir {}: OK (writable)", config.state_dir.display()),
        Err(e) => {
            failed = true;
            println!("state dir {}: FAILED: {e}", config.state_dir.display());
        }
    }
    for c in &config.connectors {
        let state = if c.enabled { "" } else { " (disabled)" };
        match pipeline::check_connector(c).await {
            Ok(t) => {
                println!(
                    "connector {}{state}: OK ({} {}, query ran in {} ms)",
                    c.name,
                    c.source.driver_name(),
                    c.record_type,
                    t.elapsed.as_millis()
                );
                if t.can_write == Some(true) {
                    println!(
                        "  warning: the account of connector {} can write to the source; fepd only reads — give it a read-only account (GRANT SELECT only)",
                        c.name
                    );
                }
            }
            Err(e) => {
                failed = true;
                println!("connector {}{state}: FAILED: {e}", c.name);
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

fn probe_writable(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let probe = dir.join(".fepd-check");
    std::fs::write(&probe, b"ok")?;
    std::fs::remove_file(probe)
}

async fn preview(config: &Path, connector: &str, limit: usize) -> Result<ExitCode> {
    let config = load(config)?;
    let Some(c) = config.connector(connector) else {
        let names: Vec<&str> = config.connectors.iter().map(|c| c.name.as_str()).collect();
        bail!(
            "no connector `{connector}`; configured: {}",
            names.join(", ")
        );
    };
    let results = pipeline::preview(&config, c, limit).await?;
    let mut out = std::io::stdout().lock();
    let (mut ok, mut bad) = (0, 0);
    for r in &results {
        match r {
            Ok(m) => {
                ok += 1;
                writeln!(
                    out,
                    "ok     {}  {}",
                    m.source_key,
                    String::from_utf8_lossy(&m.data)
                )?;
            }
            Err(rej) => {
                bad += 1;
                let reasons: Vec<String> = rej.reasons.iter().map(|r| r.to_string()).collect();
                writeln!(out, "REJECT {}  {}", rej.source_key, reasons.join("; "))?;
            }
        }
    }
    writeln!(
        out,
        "{} row(s): {ok} ok, {bad} rejected (preview writes nothing)",
        results.len()
    )?;
    Ok(ExitCode::SUCCESS)
}

async fn status(config: &Path, json: bool) -> Result<ExitCode> {
    let config = AgentConfig::load_for_inspection(config)?;
    let spool = Spool::open_reader(&config.state_dir).await?;
    let stats = spool.stats().await?;
    let states = spool.connector_states().await?;
    if json {
        let connectors: Vec<serde_json::Value> = states
            .iter()
            .map(|(c, last, cur, at)| serde_json::json!({"connector": c, "last_seq": last, "cursor": cur.as_ref().map(|c| c.display()), "updated_at": at}))
            .collect();
        let doc =
            serde_json::json!({"agent": config.agent_id, "spool": stats, "connectors": connectors});
        println!("{}", serde_json::to_string_pretty(&doc)?);
        return Ok(ExitCode::SUCCESS);
    }
    println!(
        "agent      {} (region {})",
        config.agent_id, config.region_code
    );
    println!("spool      {}", spool.path().display());
    println!(
        "pending    {} batch(es), {} record(s)",
        stats.pending_batches, stats.pending_records
    );
    println!("delivered  {} batch(es) retained", stats.delivered_batches);
    println!(
        "batches    {:.1} MiB of {:.1} MiB (spool.max_bytes); database {:.1} MiB",
        stats.batch_bytes as f64 / 1048576.0,
        config.spool.max_bytes as f64 / 1048576.0,
        stats.used_bytes as f64 / 1048576.0
    );
    if let Some(since) = &stats.full_since {
        println!(
            "ALARM      SPOOL FULL since {since}: extraction is paused until the sink takes batches; nothing is dropped"
        );
    }
    println!("rejects    {}", stats.rejects);
    for (c, last, cur, at) in &states {
        let cur = cur
            .as_ref()
            .map(|c| c.display())
            .unwrap_or_else(|| "-".into());
        println!("connector  {c:<16} last seq {last:<10} cursor {cur:<28} updated {at}");
    }
    Ok(ExitCode::SUCCESS)
}

async fn rejects(config: &Path, action: RejectsCommand) -> Result<ExitCode> {
    let config = AgentConfig::load_for_inspection(config)?;
    let spool = Spool::open_reader(&config.state_dir).await?;
    match action {
        RejectsCommand::List {
            connector,
            rule,
            limit,
            json,
        } => {
            let list = spool
                .rejects(&RejectFilter {
                    connector,
                    rule,
                    limit: Some(limit),
                    ..Default::default()
                })
                .await?;
            let mut out = std::io::stdout().lock();
            for r in &list {
                if json {
                    writeln!(out, "{}", serde_json::to_string(r)?)?;
                } else {
                    writeln!(
                        out,
                        "#{} {} key {} (seen {}x, last {})",
                        r.id, r.connector, r.source_key, r.occurrences, r.last_seen
                    )?;
                    for reason in &r.reasons {
                        writeln!(out, "    {reason}   [{}]", reason.rule)?;
                    }
                }
            }
            if !json {
                writeln!(out, "{} reject(s) shown", list.len())?;
            }
        }
        RejectsCommand::Export {
            connector,
            rule,
            out,
        } => {
            let list = spool
                .rejects(&RejectFilter {
                    connector,
                    rule,
                    ..Default::default()
                })
                .await?;
            let sink: Box<dyn Write> = if out.as_os_str() == "-" {
                Box::new(std::io::stdout().lock())
            } else {
                Box::new(
                    std::fs::File::create(&out)
                        .with_context(|| format!("creating {}", out.display()))?,
                )
            };
            let mut sink = sink;
            // A BOM so that Excel opens the UTF-8 (Chinese) text correctly.
            sink.write_all("\u{feff}".as_bytes())?;
            let mut w = csv::Writer::from_writer(sink);
            w.write_record([
                "connector",
                "source_key",
                "fields",
                "rules",
                "reasons",
                "raw_row",
                "first_seen",
                "last_seen",
                "occurrences",
            ])?;
            for r in &list {
                let fields: Vec<&str> = r.reasons.iter().map(|x| x.field.as_str()).collect();
                let rules: Vec<&str> = r.reasons.iter().map(|x| x.rule.as_str()).collect();
                let reasons: Vec<String> = r.reasons.iter().map(|x| x.to_string()).collect();
                w.write_record([
                    r.connector.as_str(),
                    &r.source_key,
                    &fields.join("; "),
                    &rules.join("; "),
                    &reasons.join("; "),
                    &r.raw.to_string(),
                    &r.first_seen,
                    &r.last_seen,
                    &r.occurrences.to_string(),
                ])?;
            }
            w.flush()?;
            if out.as_os_str() != "-" {
                eprintln!("{} reject(s) written to {}", list.len(), out.display());
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn schema(record_type: Option<&str>) -> Result<ExitCode> {
    let doc = match record_type {
        Some(name) => crate::schema::json_schema::data_schema(name.parse::<RecordType>()?),
        None => crate::schema::json_schema::all_schemas(),
    };
    println!("{}", serde_json::to_string_pretty(&doc)?);
    Ok(ExitCode::SUCCESS)
}

fn keygen(config: &Path, out: Option<PathBuf>) -> Result<ExitCode> {
    let path = match out {
        Some(p) => p,
        None => {
            load(config)
                .context("no --out given, so the key path comes from the config")?
                .signing_key
        }
    };
    let key = keys::generate_signing_key(&path)?;
    eprintln!(
        "wrote {} (mode 0600); give the platform this public key:",
        path.display()
    );
    println!("{}", keys::public_key_b64(&key));
    Ok(ExitCode::SUCCESS)
}

fn verify_cmd(dir: &Path, pubkey: &str) -> Result<ExitCode> {
    let key = keys::parse_public_key(pubkey)?;
    let started = Instant::now();
    let report =
        verify::verify_dir(dir, &key).with_context(|| format!("reading {}", dir.display()))?;
    for (c, s) in &report.chains {
        println!(
            "{c}: {} batch(es), {} record(s), seq {}..{}, head {}",
            s.batches, s.records, s.first_seq, s.last_seq, s.head_hash
        );
    }
    if report.ok() {
        println!(
            "OK: every hash, id, seq and signature verified ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for b in &report.breaks {
        println!("BROKEN: {b}");
    }
    Ok(ExitCode::FAILURE)
}

async fn verify_queue_cmd(source: &verify::queue::QueueSource, pubkey: &str) -> Result<ExitCode> {
    let key = keys::parse_public_key(pubkey)?;
    let started = Instant::now();
    let out = verify::queue::verify_queue(source, &key).await?;
    for (c, s) in &out.report.chains {
        println!(
            "{c}: {} batch(es), {} record(s), seq {}..{}, head {}",
            s.batches, s.records, s.first_seq, s.last_seq, s.head_hash
        );
    }
    println!(
        "{} message(s): {} re-sent batch(es) ({} record(s)) identical to their first copy, {} control message(s)",
        out.messages, out.duplicate_batches, out.duplicate_records, out.control_messages
    );
    let records: u64 = out.report.chains.values().map(|s| s.records).sum();
    if let Some(n) = source.expect_records
        && records < n
    {
        println!("INCOMPLETE: {records} record(s) verified, {n} expected");
        return Ok(ExitCode::FAILURE);
    }
    if out.report.ok() {
        println!(
            "OK: every hash, id, seq and signature verified ({:.1} s)",
            started.elapsed().as_secs_f64()
        );
        return Ok(ExitCode::SUCCESS);
    }
    for b in &out.report.breaks {
        println!("BROKEN: {b}");
    }
    Ok(ExitCode::FAILURE)
}

async fn relay(config: &Path, dir: &Path) -> Result<ExitCode> {
    let config = load(config)?;
    let sink = crate::sink::build(&config)?;
    let report = crate::relay::relay_dir(dir, sink.as_ref())
        .await
        .with_context(|| format!("relaying {}", dir.display()))?;
    println!(
        "relayed {} batch(es) ({} record(s)) and {} control message(s) to {}; {} relayed before, skipped",
        report.batches,
        report.records,
        report.control,
        sink.describe(),
        report.skipped
    );
    for (file, why) in &report.damaged {
        println!("NOT RELAYED: {}: {why}", file.display());
    }
    Ok(if report.damaged.is_empty() {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

async fn spool_replay(config: &Path, connector: &str, from_seq: i64) -> Result<ExitCode> {
    let config = load(config)?;
    if config.connector(connector).is_none() {
        bail!("no connector `{connector}` in {}", config.path.display());
    }
    let (spool, agent_running) = match Spool::open(&config.state_dir).await {
        Ok(s) => (s, false),
        Err(crate::spool::SpoolError::Locked { .. }) => {
            (Spool::open_beside_agent(&config.state_dir).await?, true)
        }
        Err(e) => return Err(e.into()),
    };
    let first = spool.first_retained_seq(connector).await?;
    let (batches, records) = spool.replay(connector, from_seq).await?;
    match first {
        Some(f) if f > from_seq => println!(
            "note: seqs before {f} are no longer retained (spool.retention = {:?}); replaying from {f}",
            config.spool.retention
        ),
        None => println!("note: no batch of `{connector}` is retained"),
        _ => {}
    }
    println!(
        "{batches} batch(es) ({records} record(s)) of {connector} from seq {from_seq} marked for re-sending"
    );
    if agent_running {
        println!("the running agent sends them with its next delivery");
        return Ok(ExitCode::SUCCESS);
    }
    let sink = crate::sink::build(&config)?;
    let done = crate::sink::deliver_pending(&spool, sink.as_ref()).await?;
    println!(
        "re-sent {} batch(es) ({} record(s)) to {}",
        done.batches,
        done.records,
        sink.describe()
    );
    Ok(ExitCode::SUCCESS)
}
