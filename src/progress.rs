//! How long work tells whoever watches it how far it is. The runner and
//! ingestion report here; what draws it (a terminal, a log, nothing) lives
//! above them, in `crate::console`.

use std::sync::Arc;

/// Told how far ingestion is, in bytes of landed files read.
pub trait Progress: Send + Sync {
    /// The work starts: `total` bytes to read.
    fn start(&self, total: u64);
    /// `done` bytes are read.
    fn at(&self, done: u64);
    /// The work ended (done or failed).
    fn finish(&self);
}

/// Progress nobody watches.
pub struct NoProgress;

impl Progress for NoProgress {
    fn start(&self, _: u64) {}
    fn at(&self, _: u64) {}
    fn finish(&self) {}
}

/// What a run tells whoever watches it (a terminal, a log, nothing) as it
/// goes. The runner knows nothing of terminals; `crate::console` draws.
pub trait Observer: Send + Sync {
    /// A source starts ingesting its new files; the returned progress is
    /// told the bytes read.
    fn source_started(&self, source: &str, files: &str) -> Arc<dyn Progress>;
    /// A model starts running.
    fn model_started(&self, table: &str, sql_file: &std::path::Path) -> Arc<dyn Progress>;
}

/// Watches nothing.
pub struct Quiet;

impl Observer for Quiet {
    fn source_started(&self, _: &str, _: &str) -> Arc<dyn Progress> {
        Arc::new(NoProgress)
    }
    fn model_started(&self, _: &str, _: &std::path::Path) -> Arc<dyn Progress> {
        Arc::new(NoProgress)
    }
}
