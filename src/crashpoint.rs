//! Deterministic crash points for the crash-safety tests.
//!
//! With `FEPD_CRASH_AT=<point>:<n>` in the environment, the process sends itself SIGKILL the
//! `n`-th time it reaches `<point>` — no cleanup, no flush, exactly like a power cut or an
//! OOM kill. Without the variable, [`hit`] is one relaxed atomic load. The points name the
//! dangerous instants: e.g. `after_spool_commit` (batch durable, sink not yet written) and
//! `after_sink_write` (file delivered, spool not yet marked).

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};

static TARGET: OnceLock<Option<(String, u64)>> = OnceLock::new();
static COUNT: AtomicU64 = AtomicU64::new(0);

fn target() -> &'static Option<(String, u64)> {
    TARGET.get_or_init(|| {
        let spec = std::env::var("FEPD_CRASH_AT").ok()?;
        let (point, n) = spec.rsplit_once(':')?;
        Some((point.to_string(), n.parse().ok()?))
    })
}

/// Marks a crash point.
pub fn hit(point: &str) {
    if let Some((name, n)) = target()
        && name == point
        && COUNT.fetch_add(1, Ordering::SeqCst) + 1 == *n
    {
        // SAFETY: kill(2) on our own pid; the process ends here.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}
