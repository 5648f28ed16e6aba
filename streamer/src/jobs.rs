//! The server's open jobs: one [`Stream`] per job fingerprint, shared by the job's sessions.
//!
//! - **Opening** runs outside the registry's lock, once per fingerprint: the first session of a job opens
//!   it (maps its files, plans its order; Megatron's materialises its indices, which takes a while) and
//!   the job's other sessions wait for that opening ([`OnceLock`]); sessions of other jobs do not wait.
//!   A failed opening is not kept: the sessions waiting for it get its error, later ones try again.
//! - **Memory**: once a job's datasets are open, and before anything is planned, its state is estimated
//!   ([`crate::budget::state_bytes`]) and reserved against one budget for all open jobs. Jobs without a
//!   session are dropped to make room, the longest unused first; a job that still does not fit is refused
//!   ([`Error::OverBudget`]) with the figures.
//! - **Eviction**: a job without a session for the idle period is dropped ([`Usage::is_expired`]): when
//!   its last session leaves (an idle period of zero) or at the next sweep ([`Jobs::evict_expired`],
//!   which the server runs every so often).
//! - **Poisoning**: nothing that can panic (opening, planning, serving) runs under the lock, and a
//!   poisoned lock is taken over anyway, since its map only ever changes by whole insertions and removals.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::budget::{self, ByteSize};
use crate::error::{Error, Result};
use crate::metrics::Metrics;
use crate::source::Documents;
use crate::spec::{JobSpec, Order};
use crate::stream::{Dataset, Stream};

/// Opens a job's datasets (files mapped, raw ones prepared or streamed, nothing planned):
/// [`crate::stream::open_datasets`] in the server, a fake in tests.
pub type Opener = dyn Fn(&JobSpec) -> Result<Vec<Dataset>> + Send + Sync;

/// A job's stream, or why it could not be opened, set once by the session that opened it.
type Opening = OnceLock<std::result::Result<Arc<Stream>, Arc<Error>>>;

/// The open jobs and their budget.
pub struct Jobs {
    entries: Mutex<HashMap<String, Entry>>,
    opener: Box<Opener>,
    budget_bytes: u64,
    idle: Duration,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Jobs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Jobs")
            .field("open", &self.len())
            .field("budget_bytes", &self.budget_bytes)
            .field("idle", &self.idle)
            .finish_non_exhaustive()
    }
}

/// One job in the registry.
struct Entry {
    opening: Arc<Opening>,
    usage: Usage,
    /// Reserved against the budget once the job's datasets are open.
    state_bytes: u64,
}

/// How a job is used: its sessions, and since when it has had none.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Usage {
    /// Sessions connected to the job now.
    pub sessions: usize,
    /// When the last session left; `None` while there are sessions.
    pub idle_since: Option<Instant>,
}

impl Usage {
    /// Whether a job so used may be dropped at `now`: it has no session, and has had none for `idle`.
    pub fn is_expired(&self, now: Instant, idle: Duration) -> bool {
        self.sessions == 0
            && self
                .idle_since
                .is_some_and(|since| now.saturating_duration_since(since) >= idle)
    }
}

/// A session's hold on its job: while any is held, the job stays open.
#[must_use = "the job may be dropped once its lease is"]
pub struct Lease<'a> {
    jobs: &'a Jobs,
    fingerprint: String,
    opening: Arc<Opening>,
}

impl std::fmt::Debug for Lease<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lease")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        self.jobs.leave(&self.fingerprint, &self.opening);
    }
}

impl Jobs {
    /// An empty registry: jobs are opened with `open`, their state kept within `budget_bytes` together,
    /// and each dropped after `idle` without a session. The open jobs and their bytes are published to
    /// `metrics`.
    pub fn new(
        open: Box<Opener>,
        budget_bytes: u64,
        idle: Duration,
        metrics: Arc<Metrics>,
    ) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            opener: open,
            budget_bytes,
            idle,
            metrics,
        }
    }

    /// Jobs in the registry (open, or being opened).
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The stream of job `spec`, opened by the first session that asks for it, and a lease that keeps it
    /// open. Waits only for this job's opening, never for another job's.
    ///
    /// # Errors
    /// Why the job could not be opened (the same error for every session that waited for it).
    pub fn join(&self, spec: JobSpec) -> std::result::Result<(Arc<Stream>, Lease<'_>), Arc<Error>> {
        let fingerprint = spec.fingerprint();
        let opening = {
            let mut entries = self.lock();
            let entry = entries.entry(fingerprint.clone()).or_insert_with(|| Entry {
                opening: Arc::default(),
                usage: Usage {
                    sessions: 0,
                    idle_since: None,
                },
                state_bytes: 0,
            });
            entry.usage.sessions += 1;
            entry.usage.idle_since = None;
            let opening = Arc::clone(&entry.opening);
            self.publish(&entries);
            opening
        };
        let lease = Lease {
            jobs: self,
            fingerprint,
            opening,
        };
        let stream = lease
            .opening
            .get_or_init(|| self.open(&lease.fingerprint, &lease.opening, spec))
            .clone()?;
        Ok((stream, lease))
    }

    /// Drops the jobs that have been without a session for the idle period at `now`.
    pub fn evict_expired(&self, now: Instant) {
        let mut entries = self.lock();
        self.evict_expired_locked(&mut entries, now);
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Opens the job's datasets, reserves its state, and plans it. On failure the job leaves the
    /// registry, so the next session tries afresh.
    fn open(
        &self,
        fingerprint: &str,
        opening: &Arc<Opening>,
        spec: JobSpec,
    ) -> std::result::Result<Arc<Stream>, Arc<Error>> {
        let planned = (|| {
            let datasets = (self.opener)(&spec)?;
            let prepared = |i: usize| match &datasets[i] {
                Dataset::Prepared(documents) => Some(&**documents),
                Dataset::Online(_) => None,
            };
            let sizes: Vec<u64> = (0..datasets.len())
                .map(|i| prepared(i).map_or(0, Documents::num_documents))
                .collect();
            let online = datasets.len()
                - (0..datasets.len())
                    .filter(|&i| prepared(i).is_some())
                    .count();
            let needed =
                budget::state_bytes(&spec, &sizes, |i| prepared(i).map_or(0, total_tokens))
                    .saturating_add(online as u64 * crate::online::STATE_BYTES);
            self.reserve(fingerprint, opening, needed)?;
            let megatron = spec.order == Order::Megatron;
            let stream = Stream::from_datasets(spec, datasets)?;
            tracing::info!(
                job = fingerprint,
                megatron,
                state = %ByteSize(needed),
                "Opened job."
            );
            Ok(Arc::new(stream))
        })();
        planned.map_err(|e| {
            let mut entries = self.lock();
            if entries
                .get(fingerprint)
                .is_some_and(|entry| Arc::ptr_eq(&entry.opening, opening))
            {
                entries.remove(fingerprint);
            }
            self.publish(&entries);
            Arc::new(e)
        })
    }

    /// Reserves `needed` bytes for the job, dropping jobs without a session (longest unused first) until
    /// it fits.
    fn reserve(&self, fingerprint: &str, opening: &Arc<Opening>, needed: u64) -> Result<()> {
        let mut entries = self.lock();
        let held = |entries: &HashMap<String, Entry>| -> u64 {
            entries
                .iter()
                .filter(|(fp, _)| *fp != fingerprint)
                .map(|(_, e)| e.state_bytes)
                .sum()
        };
        let refuse = |entries: &HashMap<String, Entry>| Error::OverBudget {
            needed,
            budget: self.budget_bytes,
            held: held(entries),
            jobs: entries
                .iter()
                .filter(|(fp, e)| *fp != fingerprint && e.state_bytes > 0)
                .count(),
        };
        if needed > self.budget_bytes {
            return Err(refuse(&entries));
        }
        while held(&entries).saturating_add(needed) > self.budget_bytes {
            let unused = entries
                .iter()
                .filter(|(fp, e)| *fp != fingerprint && e.usage.sessions == 0)
                .min_by_key(|(_, e)| e.usage.idle_since)
                .map(|(fp, _)| fp.clone());
            let Some(unused) = unused else {
                return Err(refuse(&entries));
            };
            entries.remove(&unused);
            self.metrics.forget_job(&unused);
            tracing::info!(job = %unused, "Dropped an unused job to make room.");
        }
        if let Some(entry) = entries.get_mut(fingerprint)
            && Arc::ptr_eq(&entry.opening, opening)
        {
            entry.state_bytes = needed;
        }
        self.publish(&entries);
        Ok(())
    }

    /// A session of the job left.
    fn leave(&self, fingerprint: &str, opening: &Arc<Opening>) {
        let mut entries = self.lock();
        let now = Instant::now();
        if let Some(entry) = entries.get_mut(fingerprint)
            && Arc::ptr_eq(&entry.opening, opening)
        {
            entry.usage.sessions -= 1;
            if entry.usage.sessions == 0 {
                entry.usage.idle_since = Some(now);
                // Its opening panicked: there is nothing to keep.
                if opening.get().is_none() {
                    entries.remove(fingerprint);
                }
            }
        }
        self.evict_expired_locked(&mut entries, now);
    }

    fn evict_expired_locked(&self, entries: &mut HashMap<String, Entry>, now: Instant) {
        let expired: Vec<String> = entries
            .iter()
            .filter(|(_, e)| e.usage.is_expired(now, self.idle))
            .map(|(fp, _)| fp.clone())
            .collect();
        for fingerprint in expired {
            entries.remove(&fingerprint);
            self.metrics.forget_job(&fingerprint);
            tracing::info!(
                job = %fingerprint,
                idle_s = self.idle.as_secs(),
                "Dropped a job without sessions."
            );
        }
        self.publish(entries);
    }

    fn publish(&self, entries: &HashMap<String, Entry>) {
        let bytes = entries.values().map(|e| e.state_bytes).sum();
        self.metrics.set_jobs(entries.len(), bytes);
    }
}

/// Tokens of all of `documents` (a pass over their lengths).
fn total_tokens(documents: &dyn Documents) -> u64 {
    (0..documents.num_documents())
        .map(|d| documents.document_len(d))
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn spec(seed: u64, order: Order) -> JobSpec {
        JobSpec::for_test(seed, order, &[1.0], Some(100))
    }

    fn documents() -> Vec<Dataset> {
        vec![Dataset::Prepared(Box::new(
            (0..50u32).map(|d| vec![d; 10]).collect::<Vec<_>>(),
        ))]
    }

    fn jobs(open: Box<Opener>, budget_bytes: u64, idle: Duration) -> Jobs {
        Jobs::new(open, budget_bytes, idle, Arc::default())
    }

    #[test]
    fn a_job_expires_only_without_sessions_and_after_the_idle_period() {
        let t0 = Instant::now();
        let idle = Duration::from_mins(10);
        let used = Usage {
            sessions: 1,
            idle_since: None,
        };
        assert!(!used.is_expired(t0 + idle * 10, idle));
        let left = Usage {
            sessions: 0,
            idle_since: Some(t0),
        };
        assert!(!left.is_expired(t0, idle));
        assert!(!left.is_expired(t0 + idle.saturating_sub(Duration::from_nanos(1)), idle));
        assert!(left.is_expired(t0 + idle, idle));
        assert!(left.is_expired(t0, Duration::ZERO));
        // A clock read before the session left does not count as idle time.
        assert!(
            !Usage {
                sessions: 0,
                idle_since: Some(t0 + idle)
            }
            .is_expired(t0, Duration::from_secs(1))
        );
    }

    #[test]
    fn jobs_are_dropped_when_idle_and_kept_while_used() {
        let idle = Duration::from_mins(10);
        let registry = jobs(Box::new(|_| Ok(documents())), u64::MAX, idle);
        let (stream, lease) = registry.join(spec(1, Order::Flame)).unwrap();
        let (again, second) = registry.join(spec(1, Order::Flame)).unwrap();
        assert!(Arc::ptr_eq(&stream, &again), "one stream per fingerprint");
        drop(lease);
        registry.evict_expired(Instant::now() + idle * 2);
        assert_eq!(registry.len(), 1, "a session is still connected");
        drop(second);
        registry.evict_expired(Instant::now() + idle / 2);
        assert_eq!(registry.len(), 1, "not idle long enough");
        registry.evict_expired(Instant::now() + idle);
        assert!(registry.is_empty());
        // With an idle period of zero, the last session's leaving drops the job.
        let registry = jobs(Box::new(|_| Ok(documents())), u64::MAX, Duration::ZERO);
        let (_, lease) = registry.join(spec(1, Order::Flame)).unwrap();
        assert_eq!(registry.len(), 1);
        drop(lease);
        assert!(registry.is_empty());
    }

    #[test]
    fn opening_a_job_does_not_block_other_jobs() {
        let (started_tx, started) = mpsc::channel();
        let (go, go_rx) = mpsc::channel::<()>();
        let go_rx = Mutex::new(go_rx);
        let opened = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = Arc::clone(&opened);
        let registry = Arc::new(jobs(
            Box::new(move |spec: &JobSpec| {
                if spec.seed == 1 {
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    started_tx.send(()).unwrap();
                    go_rx.lock().unwrap().recv().unwrap();
                }
                Ok(documents())
            }),
            u64::MAX,
            Duration::from_mins(10),
        ));
        let slow = {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || registry.join(spec(1, Order::Flame)).map(|_| ()).is_ok())
        };
        started.recv().unwrap();
        // Job 1 is being opened; job 2 opens meanwhile (on a thread, so that a wait fails the test
        // instead of hanging it).
        let (done_tx, done) = mpsc::channel();
        {
            let registry = Arc::clone(&registry);
            std::thread::spawn(move || {
                let ok = registry.join(spec(2, Order::Flame)).is_ok();
                done_tx.send(ok).unwrap();
            });
        }
        assert_eq!(
            done.recv_timeout(Duration::from_mins(1)),
            Ok(true),
            "job 2 waited for job 1's opening"
        );
        go.send(()).unwrap();
        assert!(slow.join().unwrap());
        let _lease = registry.join(spec(1, Order::Flame)).unwrap();
        assert_eq!(opened.load(std::sync::atomic::Ordering::SeqCst), 1);
    }

    #[test]
    fn a_panic_while_opening_leaves_the_registry_usable() {
        let registry = jobs(
            Box::new(|spec: &JobSpec| {
                assert!(spec.seed != 13, "a bug while opening");
                Ok(documents())
            }),
            u64::MAX,
            Duration::from_mins(10),
        );
        let panicked = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = registry.join(spec(13, Order::Flame));
        }));
        assert!(panicked.is_err());
        assert!(registry.is_empty(), "the job that never opened is gone");
        let (_, _lease) = registry.join(spec(1, Order::Flame)).unwrap();
        assert_eq!(registry.len(), 1);
    }

    #[test]
    fn a_failed_opening_is_not_kept() {
        let fail = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let failing = Arc::clone(&fail);
        let registry = jobs(
            Box::new(move |_: &JobSpec| {
                if failing.load(std::sync::atomic::Ordering::SeqCst) {
                    Err(Error::Unsupported("not yet".into()))
                } else {
                    Ok(documents())
                }
            }),
            u64::MAX,
            Duration::from_mins(10),
        );
        let err = registry.join(spec(1, Order::Flame)).unwrap_err();
        assert_eq!(err.to_string(), "not yet");
        assert!(registry.is_empty());
        fail.store(false, std::sync::atomic::Ordering::SeqCst);
        let _lease = registry.join(spec(1, Order::Flame)).unwrap();
    }

    #[test]
    fn the_budget_is_shared_and_unused_jobs_make_room() {
        let needed = budget::state_bytes(&spec(1, Order::Megatron), &[50], |_| 500);
        let registry = jobs(
            Box::new(|_| Ok(documents())),
            needed * 3 / 2,
            Duration::from_mins(10),
        );
        let (_, first) = registry.join(spec(1, Order::Megatron)).unwrap();
        // A second job of the same size does not fit beside the first while it has a session.
        let err = registry.join(spec(2, Order::Megatron)).unwrap_err();
        let message = err.to_string();
        assert!(
            matches!(*err, Error::OverBudget { jobs: 1, .. }),
            "{message}"
        );
        assert!(
            message.contains(&format!("({needed} bytes)"))
                && message.contains(&format!(
                    "budget for job state is {}",
                    ByteSize(needed * 3 / 2)
                )),
            "{message}"
        );
        assert_eq!(registry.len(), 1);
        // Once the first has no session, it makes room, though it is not yet idle long enough to expire.
        drop(first);
        let (_, _second) = registry.join(spec(2, Order::Megatron)).unwrap();
        assert_eq!(registry.len(), 1);
        // A job larger than the whole budget is refused without dropping anything.
        let mut huge = spec(3, Order::Megatron);
        huge.num_samples = Some(1 << 40);
        let err = registry.join(huge).unwrap_err();
        assert!(matches!(*err, Error::OverBudget { .. }), "{err}");
        assert_eq!(registry.len(), 1);
    }
}
