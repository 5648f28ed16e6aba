//! The collective timeout of a run of several ranks, as torchtitan sets torch's NCCL watchdog:
//! `--comm.init_timeout_seconds` for a run's first step (start-up, kernel loading) and
//! `--comm.train_timeout_seconds` for every later one. The training loop arms the [`Watchdog`] when a
//! step starts and disarms it when the step's loss, averaged over the ranks, is read: a step that does
//! not finish in time (a rank stalled, hung in a collective or died without closing its connections)
//! calls the expiry action on the watchdog's thread, while the training thread is still blocked.

use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A step that outlived its timeout.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Expired {
    /// The step (1-based, as logged).
    pub step: u64,
    /// The timeout it was armed with.
    pub timeout: Duration,
}

#[derive(Default)]
struct State {
    armed: Option<(Expired, Instant)>,
    stopping: bool,
}

/// A thread that calls an action once when an armed step passes its deadline.
pub struct Watchdog {
    shared: Arc<(Mutex<State>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Watchdog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watchdog").finish_non_exhaustive()
    }
}

impl Watchdog {
    /// Starts the watchdog's thread, disarmed. `on_expiry` runs on it at most once.
    ///
    /// # Errors
    /// When the thread cannot be started.
    pub fn start(on_expiry: impl FnOnce(Expired) + Send + 'static) -> std::io::Result<Self> {
        let shared = Arc::new((Mutex::new(State::default()), Condvar::new()));
        let theirs = Arc::clone(&shared);
        let thread = std::thread::Builder::new()
            .name("flame-watchdog".into())
            .spawn(move || {
                if let Some(expired) = watch(&theirs) {
                    on_expiry(expired);
                }
            })?;
        Ok(Self {
            shared,
            thread: Some(thread),
        })
    }

    /// Step `step` has started and must finish within `timeout`.
    pub fn arm(&self, step: u64, timeout: Duration) {
        let deadline = Instant::now() + timeout;
        self.update(|state| state.armed = Some((Expired { step, timeout }, deadline)));
    }

    /// The step armed last has finished.
    pub fn disarm(&self) {
        self.update(|state| state.armed = None);
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        let (lock, wake) = &*self.shared;
        change(&mut lock.lock().unwrap_or_else(PoisonError::into_inner));
        wake.notify_one();
    }
}

/// The watchdog's loop: the step that passed its deadline, or `None` once stopping.
fn watch(shared: &(Mutex<State>, Condvar)) -> Option<Expired> {
    let (lock, wake) = shared;
    let mut state = lock.lock().unwrap_or_else(PoisonError::into_inner);
    loop {
        if state.stopping {
            return None;
        }
        state = match state.armed {
            None => wake.wait(state).unwrap_or_else(PoisonError::into_inner),
            Some((expired, deadline)) => {
                let now = Instant::now();
                if now >= deadline {
                    return Some(expired);
                }
                wake.wait_timeout(state, deadline - now)
                    .unwrap_or_else(PoisonError::into_inner)
                    .0
            }
        };
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        self.update(|state| state.stopping = true);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::sync::mpsc;

    use super::*;

    fn watchdog() -> (Watchdog, mpsc::Receiver<Expired>) {
        let (send, receive) = mpsc::channel();
        let watchdog = Watchdog::start(move |expired| send.send(expired).unwrap()).unwrap();
        (watchdog, receive)
    }

    #[test]
    fn a_step_that_outlives_its_timeout_is_reported_once() {
        let (watchdog, expired) = watchdog();
        let timeout = Duration::from_millis(20);
        let armed_at = Instant::now();
        watchdog.arm(7, timeout);
        assert_eq!(
            expired.recv_timeout(Duration::from_mins(1)).unwrap(),
            Expired { step: 7, timeout }
        );
        assert!(armed_at.elapsed() >= timeout, "not before its deadline");
        drop(watchdog);
        assert!(
            expired.recv().is_err(),
            "the action ran once and the thread has ended"
        );
    }

    #[test]
    fn a_disarmed_step_never_expires() {
        let (watchdog, expired) = watchdog();
        watchdog.arm(1, Duration::from_millis(20));
        watchdog.disarm();
        // Ten times the deadline: a watchdog that ignored the disarm would have reported by then.
        assert_eq!(
            expired.recv_timeout(Duration::from_millis(200)),
            Err(mpsc::RecvTimeoutError::Timeout)
        );
    }

    #[test]
    fn arming_the_next_step_replaces_the_deadline() {
        let (watchdog, expired) = watchdog();
        watchdog.arm(1, Duration::from_hours(1));
        watchdog.arm(2, Duration::from_millis(20));
        let report = expired.recv_timeout(Duration::from_mins(1)).unwrap();
        assert_eq!(report.step, 2);
    }

    #[test]
    fn a_watchdog_stops_when_dropped() {
        let (watchdog, expired) = watchdog();
        watchdog.arm(3, Duration::from_hours(1));
        watchdog.disarm();
        drop(watchdog);
        assert!(expired.recv().is_err(), "stopped without reporting");
    }
}
