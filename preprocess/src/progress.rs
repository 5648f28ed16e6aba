//! Progress: a bar on a terminal, a log line every few seconds otherwise. One place decides which.

use std::io::IsTerminal;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressStyle};

/// Reports documents, tokens and throughput against the known input size.
#[derive(Debug)]
pub struct Progress {
    bar: Option<ProgressBar>,
    started: Instant,
    last_log: Instant,
    total_bytes: u64,
    /// Input bytes already done when this process started (a resumed run), for the rate behind the ETA.
    first_bytes: Option<u64>,
    /// Where another thread reads the numbers (flame-stream's status page), if anyone does.
    live: Option<Arc<LiveProgress>>,
}

/// A run's progress as numbers that another thread reads while the run goes on ([`Progress`] stores them
/// at every update): how flame-stream shows a raw dataset's preparation on its status page and to the
/// clients waiting for it.
#[derive(Debug, Default)]
pub struct LiveProgress {
    input_bytes: AtomicU64,
    total_bytes: AtomicU64,
    num_documents: AtomicU64,
    num_tokens: AtomicU64,
}

/// What [`LiveProgress`] holds at one moment.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// Input bytes consumed (as [`Progress::update`] counts them).
    pub input_bytes: u64,
    /// The input's size.
    pub total_bytes: u64,
    /// Documents written, a resumed run's earlier ones included.
    pub num_documents: u64,
    /// Tokens written by this process.
    pub num_tokens: u64,
}

impl LiveProgress {
    /// The numbers now (each read on its own: together they may straddle an update).
    pub fn snapshot(&self) -> ProgressSnapshot {
        ProgressSnapshot {
            input_bytes: self.input_bytes.load(Ordering::Relaxed),
            total_bytes: self.total_bytes.load(Ordering::Relaxed),
            num_documents: self.num_documents.load(Ordering::Relaxed),
            num_tokens: self.num_tokens.load(Ordering::Relaxed),
        }
    }
}

impl Progress {
    /// A bar when stderr is a terminal and `quiet` is off; periodic log lines otherwise; and the numbers
    /// stored into `live` at every update, when given.
    pub fn new(total_bytes: u64, quiet: bool, live: Option<Arc<LiveProgress>>) -> Self {
        if let Some(live) = &live {
            live.total_bytes.store(total_bytes, Ordering::Relaxed);
        }
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let bar = ProgressBar::new(total_bytes);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} [{elapsed_precise}] {wide_bar} {bytes}/{total_bytes} ({eta}) {msg}",
                )
                .expect("a valid template")
                .progress_chars("=> "),
            );
            bar
        });
        Self {
            bar,
            started: Instant::now(),
            last_log: Instant::now(),
            total_bytes,
            first_bytes: None,
            live,
        }
    }

    /// Updates the display: `input_bytes` of the input consumed so far (by the readers: exact for JSON
    /// lines and Arrow, by rows for Parquet).
    pub fn update(
        &mut self,
        input_bytes: u64,
        num_documents: u64,
        num_tokens: u64,
        text_bytes: u64,
    ) {
        if let Some(live) = &self.live {
            live.input_bytes.store(input_bytes, Ordering::Relaxed);
            live.num_documents.store(num_documents, Ordering::Relaxed);
            live.num_tokens.store(num_tokens, Ordering::Relaxed);
        }
        let elapsed = self.started.elapsed().as_secs_f64().max(1e-9);
        let first_bytes = *self.first_bytes.get_or_insert(input_bytes);
        #[allow(clippy::cast_precision_loss)] // rates for people
        let (mb_per_s, tokens_per_s) = (
            text_bytes as f64 / elapsed / 1e6,
            num_tokens as f64 / elapsed,
        );
        if let Some(bar) = &self.bar {
            bar.set_position(input_bytes.min(self.total_bytes));
            bar.set_message(format!(
                "{num_documents} docs, {num_tokens} tokens, {mb_per_s:.1} MB/s"
            ));
        } else if self.last_log.elapsed() >= Duration::from_secs(10) {
            self.last_log = Instant::now();
            let done_here = input_bytes.saturating_sub(first_bytes);
            let left = self.total_bytes.saturating_sub(input_bytes);
            #[allow(clippy::cast_precision_loss)] // an estimate for people
            let eta_s = (done_here > 0).then(|| (left as f64 * elapsed / done_here as f64).round());
            tracing::info!(
                num_documents,
                num_tokens,
                mb_per_s = format!("{mb_per_s:.1}"),
                tokens_per_s = format!("{tokens_per_s:.0}"),
                input_bytes,
                total_bytes = self.total_bytes,
                eta_s = eta_s.map_or_else(|| "unknown".to_owned(), |s| format!("{s:.0}")),
                "Tokenizing."
            );
        }
    }

    /// Seconds since the start.
    pub fn elapsed_s(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    /// Removes the bar.
    pub fn finish(&self) {
        if let Some(bar) = &self.bar {
            bar.finish_and_clear();
        }
    }
}
