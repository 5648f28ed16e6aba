//! What the server has served, for people and Prometheus: `GET /metrics` (Prometheus text format),
//! `GET /healthz`, and `GET /` (a small HTML page of jobs and ranks), on their own HTTP listener.
//!
//! Per job and rank: micro-batches and tokens served, tokens per dataset, the last step asked for, lag
//! (the job's furthest step minus this rank's), the prefetch queue depth, micro-batches prefetched and
//! those thrown away unasked, and connected clients. For the
//! server: open connections, open jobs and the bytes of job state they hold, and the bytes of rings and
//! prefetched micro-batches the sessions hold. A job's rows go when the
//! job is dropped. Per raw dataset being prepared (a `streaming = false` job's): input bytes read of
//! the total, documents and tokens, until the preparation ends.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

/// Counters of one rank of one job.
#[derive(Clone, Debug, Default)]
struct RankStats {
    batches: u64,
    tokens: u64,
    tokens_per_dataset: Vec<u64>,
    last_step: u64,
    queue_depth: usize,
    prefetched: u64,
    discarded: u64,
    clients: u64,
}

/// A per-rank metric's value, from the rank's counters and its job's furthest step.
type RankValue = fn(&RankStats, u64) -> u64;

/// How far a raw dataset's preparation is.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Preparation {
    /// Input bytes read.
    pub input_bytes: u64,
    /// The input's size.
    pub total_bytes: u64,
    /// Documents tokenized.
    pub documents: u64,
    /// Tokens written.
    pub tokens: u64,
}

/// One per-preparation metric's value.
type PreparationValue = fn(&Preparation) -> u64;

/// Reads a preparation's progress (from flame-prep's run, on another thread).
pub type ReadPreparation = Box<dyn Fn() -> Preparation + Send + Sync>;

/// A preparation under way: the dataset's name and how to read its progress.
struct Preparing {
    dataset: String,
    read: ReadPreparation,
}

impl std::fmt::Debug for Preparing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Preparing")
            .field("dataset", &self.dataset)
            .field("now", &(self.read)())
            .finish()
    }
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    ranks: Mutex<BTreeMap<(String, u32), RankStats>>,
    /// Open connections.
    pub connections: AtomicUsize,
    /// Jobs open (or being opened).
    jobs: AtomicUsize,
    /// Bytes of state reserved by the open jobs.
    job_state_bytes: AtomicU64,
    /// Bytes of rings and prefetched micro-batches the sessions hold ([`crate::budget::SessionMemory`]).
    pub(crate) session_bytes: AtomicU64,
    /// Raw datasets being prepared, by preparation (a directory of the server's cache).
    preparing: Mutex<BTreeMap<String, Preparing>>,
}

impl Metrics {
    /// A poisoned lock is taken over: every change to the map is a whole insertion, update or removal.
    fn ranks(&self) -> MutexGuard<'_, BTreeMap<(String, u32), RankStats>> {
        self.ranks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn preparing(&self) -> MutexGuard<'_, BTreeMap<String, Preparing>> {
        self.preparing
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Raw dataset `dataset` is being prepared as `key` (until [`Metrics::prepared`]); `read` tells how far.
    pub fn preparing_started(&self, key: &str, dataset: &str, read: ReadPreparation) {
        self.preparing().insert(
            key.to_owned(),
            Preparing {
                dataset: dataset.to_owned(),
                read,
            },
        );
    }

    /// Preparation `key` ended (done or failed).
    pub fn prepared(&self, key: &str) {
        self.preparing().remove(key);
    }

    /// The preparations under way: each one's dataset and progress, in key order.
    pub fn preparations(&self) -> Vec<(String, Preparation)> {
        self.preparing()
            .values()
            .map(|p| (p.dataset.clone(), (p.read)()))
            .collect()
    }

    /// The server holds `jobs` jobs with `state_bytes` of state.
    pub fn set_jobs(&self, jobs: usize, state_bytes: u64) {
        self.jobs.store(jobs, Ordering::Relaxed);
        self.job_state_bytes.store(state_bytes, Ordering::Relaxed);
    }

    /// Forgets the rows of job `fingerprint`, which the server dropped.
    pub fn forget_job(&self, fingerprint: &str) {
        self.ranks().retain(|(job, _), _| job != fingerprint);
    }

    /// A client of `rank` in job `fingerprint` connected (`delta` 1) or left (`delta` -1).
    pub fn client(&self, fingerprint: &str, rank: u32, connected: bool) {
        let mut ranks = self.ranks();
        let stats = ranks.entry((fingerprint.to_owned(), rank)).or_default();
        if connected {
            stats.clients += 1;
        } else {
            stats.clients = stats.clients.saturating_sub(1);
        }
    }

    /// A micro-batch of `step` was sent: its tokens per dataset, and the prefetch queue behind it.
    pub fn served(
        &self,
        fingerprint: &str,
        rank: u32,
        step: u64,
        tokens_per_dataset: &[u64],
        queue_depth: usize,
    ) {
        let mut ranks = self.ranks();
        let stats = ranks.entry((fingerprint.to_owned(), rank)).or_default();
        stats.batches += 1;
        stats.last_step = step;
        stats.queue_depth = queue_depth;
        if stats.tokens_per_dataset.len() < tokens_per_dataset.len() {
            stats.tokens_per_dataset.resize(tokens_per_dataset.len(), 0);
        }
        for (total, t) in stats.tokens_per_dataset.iter_mut().zip(tokens_per_dataset) {
            *total += t;
            stats.tokens += t;
        }
    }

    /// `prefetched` micro-batches were prepared ahead for the client, and `discarded` of those prepared
    /// before were thrown away (the client asked for something else).
    pub fn prefetched(&self, fingerprint: &str, rank: u32, prefetched: u64, discarded: u64) {
        let mut ranks = self.ranks();
        let stats = ranks.entry((fingerprint.to_owned(), rank)).or_default();
        stats.prefetched += prefetched;
        stats.discarded += discarded;
    }

    fn furthest_steps(ranks: &BTreeMap<(String, u32), RankStats>) -> BTreeMap<&str, u64> {
        let mut furthest = BTreeMap::new();
        for ((job, _), s) in ranks {
            let f = furthest.entry(job.as_str()).or_insert(0);
            *f = (*f).max(s.last_step);
        }
        furthest
    }

    /// The Prometheus text exposition.
    pub fn prometheus(&self) -> String {
        let ranks = self.ranks();
        let furthest = Self::furthest_steps(&ranks);
        let mut out = String::new();
        let _ = writeln!(
            out,
            "# HELP flame_stream_connections Open client connections."
        );
        let _ = writeln!(out, "# TYPE flame_stream_connections gauge");
        let _ = writeln!(
            out,
            "flame_stream_connections {}",
            self.connections.load(Ordering::Relaxed)
        );
        let _ = writeln!(out, "# HELP flame_stream_jobs Jobs open.");
        let _ = writeln!(out, "# TYPE flame_stream_jobs gauge");
        let _ = writeln!(
            out,
            "flame_stream_jobs {}",
            self.jobs.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP flame_stream_job_state_bytes Estimated bytes of state the open jobs hold."
        );
        let _ = writeln!(out, "# TYPE flame_stream_job_state_bytes gauge");
        let _ = writeln!(
            out,
            "flame_stream_job_state_bytes {}",
            self.job_state_bytes.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP flame_stream_session_bytes Bytes of rings and prefetched micro-batches the sessions hold."
        );
        let _ = writeln!(out, "# TYPE flame_stream_session_bytes gauge");
        let _ = writeln!(
            out,
            "flame_stream_session_bytes {}",
            self.session_bytes.load(Ordering::Relaxed)
        );
        // Per rank: one value each, from its counters and the job's furthest step.
        let per_rank: [(&str, &str, &str, RankValue); 7] = [
            (
                "batches_total",
                "counter",
                "Micro-batches served.",
                |s, _| s.batches,
            ),
            ("tokens_total", "counter", "Tokens served.", |s, _| s.tokens),
            (
                "lag_steps",
                "gauge",
                "The job's furthest step minus this rank's last step.",
                |s, furthest| furthest - s.last_step,
            ),
            (
                "queue_depth",
                "gauge",
                "Micro-batches prefetched and waiting.",
                |s, _| s.queue_depth as u64,
            ),
            (
                "prefetched_total",
                "counter",
                "Micro-batches prepared ahead of the client's request.",
                |s, _| s.prefetched,
            ),
            (
                "prefetch_discarded_total",
                "counter",
                "Micro-batches prepared ahead and thrown away: the client asked for others.",
                |s, _| s.discarded,
            ),
            ("clients", "gauge", "Connected clients.", |s, _| s.clients),
        ];
        for (name, kind, help, value) in per_rank {
            let _ = writeln!(out, "# HELP flame_stream_{name} {help}");
            let _ = writeln!(out, "# TYPE flame_stream_{name} {kind}");
            for ((job, rank), s) in ranks.iter() {
                let value = value(s, furthest[job.as_str()]);
                let _ = writeln!(
                    out,
                    "flame_stream_{name}{{job=\"{job}\",rank=\"{rank}\"}} {value}"
                );
            }
        }
        self.prometheus_preparations(&mut out);
        let name = "dataset_tokens_total";
        let _ = writeln!(out, "# HELP flame_stream_{name} Tokens served per dataset.");
        let _ = writeln!(out, "# TYPE flame_stream_{name} counter");
        for ((job, rank), s) in ranks.iter() {
            for (d, t) in s.tokens_per_dataset.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "flame_stream_{name}{{job=\"{job}\",rank=\"{rank}\",dataset=\"{d}\"}} {t}"
                );
            }
        }
        out
    }

    /// The preparations' lines of [`Metrics::prometheus`].
    fn prometheus_preparations(&self, out: &mut String) {
        let preparations = self.preparations();
        let per_preparation: [(&str, &str, PreparationValue); 4] = [
            (
                "input_bytes",
                "Input bytes a raw dataset's preparation has read.",
                |p| p.input_bytes,
            ),
            (
                "total_bytes",
                "Input bytes of a raw dataset being prepared.",
                |p| p.total_bytes,
            ),
            (
                "documents",
                "Documents a raw dataset's preparation has tokenized.",
                |p| p.documents,
            ),
            (
                "tokens",
                "Tokens a raw dataset's preparation has written.",
                |p| p.tokens,
            ),
        ];
        for (name, help, value) in per_preparation {
            let _ = writeln!(out, "# HELP flame_stream_preparation_{name} {help}");
            let _ = writeln!(out, "# TYPE flame_stream_preparation_{name} gauge");
            for (dataset, p) in &preparations {
                let _ = writeln!(
                    out,
                    "flame_stream_preparation_{name}{{dataset={dataset:?}}} {}",
                    value(p)
                );
            }
        }
    }

    /// A small HTML page of jobs and ranks.
    pub fn html(&self) -> String {
        let ranks = self.ranks();
        let furthest = Self::furthest_steps(&ranks);
        let mut rows = String::new();
        for ((job, rank), s) in ranks.iter() {
            let _ = write!(
                rows,
                "<tr><td>{job}</td><td>{rank}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td></tr>",
                s.clients,
                s.last_step,
                furthest[job.as_str()] - s.last_step,
                s.batches,
                s.tokens_per_dataset,
                s.queue_depth
            );
        }
        let mut preparing = String::new();
        for (dataset, p) in self.preparations() {
            let _ = write!(
                preparing,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                escape_html(&dataset),
                p.input_bytes,
                p.total_bytes,
                p.documents,
                p.tokens
            );
        }
        format!(
            "<!doctype html><title>flame-stream</title><h1>flame-stream</h1><p>{} connections, {} jobs</p>\
             <table border=1><tr><th>job</th><th>rank</th><th>clients</th><th>last step</th><th>lag</th>\
             <th>micro-batches</th><th>tokens per dataset</th><th>prefetched</th></tr>{rows}</table>\
             <h2>Raw datasets being prepared</h2><table border=1><tr><th>dataset</th><th>input bytes read</th>\
             <th>of</th><th>documents</th><th>tokens</th></tr>{preparing}</table>",
            self.connections.load(Ordering::Relaxed),
            self.jobs.load(Ordering::Relaxed)
        )
    }
}

/// `text` with HTML's special characters escaped (a dataset's name is the client's).
fn escape_html(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Serves `/metrics`, `/healthz` and `/` on `addr` from a thread; returns the bound address.
pub fn serve_http(addr: &str, metrics: std::sync::Arc<Metrics>) -> std::io::Result<SocketAddr> {
    let server = tiny_http::Server::http(addr).map_err(std::io::Error::other)?;
    let local = server
        .server_addr()
        .to_ip()
        .ok_or_else(|| std::io::Error::other("not an IP listener"))?;
    std::thread::spawn(move || {
        for request in server.incoming_requests() {
            let (status, body, kind) = match request.url() {
                "/metrics" => (200, metrics.prometheus(), "text/plain; version=0.0.4"),
                "/healthz" => (200, "ok\n".to_owned(), "text/plain"),
                "/" => (200, metrics.html(), "text/html"),
                _ => (404, "not found\n".to_owned(), "text/plain"),
            };
            let header =
                tiny_http::Header::from_bytes("Content-Type", kind).expect("a valid header");
            let _ = request.respond(
                tiny_http::Response::from_string(body)
                    .with_status_code(status)
                    .with_header(header),
            );
        }
    });
    Ok(local)
}
