//! The client's side of the protocol without I/O: what to send, what an answer means, and what to do when
//! an exchange fails, for both Rust clients ([`crate::client::Client`],
//! [`crate::async_client::AsyncClient`]), which only move the bytes.
//!
//! A driver calls [`ClientCore::connect`] on a new connection (it appends `Hello`),
//! [`ClientCore::open_shared_memory`] to switch to a ring, and [`ClientCore::ask`] for each micro-batch;
//! each appends the frames to send to `out`. The driver sends them, reads one message (with the
//! descriptor that may come with it while [`ClientCore::awaits_ring`]), and passes it to
//! [`ClientCore::receive`], which may append more frames and says what happened ([`Event`]): nothing for
//! the caller yet ([`Event::Continue`]: send and read on), or the welcome, the ring, or the micro-batch.
//!
//! The core reads ahead: with each `Request` it also sends the one for the following micro-batch when
//! the job has it ([`ClientCore::following`]), so the server prepares it while the trainer works; the
//! next [`ClientCore::ask`] for that micro-batch sends no request of its own, and one for anything else
//! first reads the answer made ahead and gives its slot back. It releases the slot it holds with the next
//! request, and checks that every answer is the micro-batch asked for (`Batch` or `Slot` of that step and
//! micro-step).
//!
//! Failures ([`Exchange`]) are judged here too: [`Exchange::retry`] says which are worth a new connection
//! (the connection dropped, a request made ahead was refused) and which give up (the server refused), and
//! [`Attempts`] counts the tries of one operation and spaces connection attempts by [`Backoff`]. A
//! connection is of use only while [`ClientCore::is_ready`]: after a failure, and while an exchange is
//! under way (an async call dropped mid-flight leaves one), the driver opens a new one and starts afresh
//! with [`ClientCore::connect`].

use std::time::Duration;

use crate::protocol::{Message, VERSION, WireSample, encode};
use crate::spec::JobSpec;
use crate::transport::{Endpoint, ReadError};

/// A micro-batch's place in the job: (step, micro-step).
pub type Position = (u64, u64);

/// What a message from the server means for the driver.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// Nothing for the caller yet: send what `out` holds (if anything), then read the next message.
    Continue,
    /// The server serves this job: [`ClientCore::fingerprint`], [`ClientCore::micro_steps`] and
    /// [`ClientCore::tokens_per_sample`] are set.
    Welcomed,
    /// The ring is ready: map it from the descriptor that came with this frame.
    RingReady {
        /// Slots in the ring.
        slots: u32,
        /// Bytes per slot.
        slot_bytes: u64,
    },
    /// The micro-batch asked for, over the socket.
    Batch(Vec<WireSample>),
    /// The micro-batch asked for is in this slot of the ring; the client holds it until its next request.
    Slot {
        /// Which slot.
        slot: u32,
        /// Bytes of the slot in use.
        bytes: u64,
    },
}

/// Why an exchange failed; either way the connection is of no further use.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Failure {
    /// The server refused (its `Error` frame, after which it closes the connection) or broke the
    /// protocol: give up.
    #[error("{0}")]
    Refused(String),
    /// Not the caller's doing (the server refused a request made ahead, or the connection is mid-way
    /// through another exchange): reconnect and ask again.
    #[error("{0}")]
    Dropped(String),
}

/// How one try of an operation failed: the connection, or the core's verdict on what came over it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Exchange {
    /// The connection could not be made, or failed, or ended.
    Io(String),
    /// The core's verdict.
    Failed(Failure),
}

impl Exchange {
    /// The server hung up between frames.
    pub fn closed() -> Self {
        Self::Io("the server closed the connection".into())
    }

    /// An I/O error while doing `what` (`connect`, `write`, ...).
    pub fn io(what: &str) -> impl FnOnce(std::io::Error) -> Self + '_ {
        move |e| Self::Io(format!("{what}: {e}"))
    }

    /// Whether a new connection may succeed where this one failed: `Ok` with the reason it failed (the
    /// connection dropped or could not be made, a request made ahead was refused), `Err` to give up (the
    /// server refused or broke the protocol: asking again gets the same answer).
    ///
    /// # Errors
    /// [`ClientError::Refused`] when giving up.
    pub fn retry(self) -> Result<String, ClientError> {
        match self {
            Self::Io(reason) | Self::Failed(Failure::Dropped(reason)) => Ok(reason),
            Self::Failed(Failure::Refused(message)) => Err(ClientError::Refused(message)),
        }
    }
}

impl From<Failure> for Exchange {
    fn from(failure: Failure) -> Self {
        Self::Failed(failure)
    }
}

impl From<ReadError> for Exchange {
    /// A frame that breaks the protocol is the server's doing: refused. The rest is the connection's.
    fn from(e: ReadError) -> Self {
        match e {
            ReadError::Protocol(e) => Self::Failed(Failure::Refused(e.to_string())),
            ReadError::Io(_) | ReadError::Truncated => Self::Io(e.to_string()),
        }
    }
}

/// A client error.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused (its `Error` frame), or broke the protocol.
    #[error("server: {0}")]
    Refused(String),
    /// The server could not be reached within the retries.
    #[error("{endpoint}: {reason}")]
    Unreachable {
        /// The endpoint.
        endpoint: String,
        /// The last failure.
        reason: String,
    },
}

impl From<Failure> for ClientError {
    fn from(failure: Failure) -> Self {
        Self::Refused(failure.to_string())
    }
}

/// Checks that `endpoint` can carry a shared-memory ring: only a Unix socket, on the server's host.
///
/// # Errors
/// [`ClientError::Refused`] for TCP.
pub fn check_shared_memory_endpoint(endpoint: &Endpoint) -> Result<(), ClientError> {
    match endpoint {
        Endpoint::Unix(_) => Ok(()),
        Endpoint::Tcp(_) => Err(ClientError::Refused(format!(
            "{endpoint}: shared memory needs a unix:// endpoint"
        ))),
    }
}

/// The pauses between connection attempts: from 50 ms, doubling, at most 2 s apart.
#[derive(Clone, Debug)]
pub struct Backoff {
    next: Duration,
}

impl Backoff {
    /// The first pause.
    pub const FIRST: Duration = Duration::from_millis(50);
    /// The longest pause.
    pub const MAX: Duration = Duration::from_secs(2);
}

impl Default for Backoff {
    fn default() -> Self {
        Self { next: Self::FIRST }
    }
}

impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let pause = self.next;
        self.next = (pause * 2).min(Self::MAX);
        Some(pause)
    }
}

/// The tries of one operation: how many are left, how long to wait before each, and what to report
/// when they are all spent.
#[derive(Debug)]
pub struct Attempts {
    /// Tries left.
    left: u32,
    /// The pauses between tries; `None` to try again at once.
    backoff: Option<Backoff>,
    tried: u32,
    last: String,
}

impl Attempts {
    /// Connecting: `1 + retries` tries, the first at once, the others after the [`Backoff`].
    pub fn connecting(retries: u32) -> Self {
        Self {
            left: retries.saturating_add(1),
            backoff: Some(Backoff::default()),
            tried: 0,
            last: String::new(),
        }
    }

    /// Asking for a micro-batch: a server that accepts, then drops the connection before answering,
    /// gets `1 + retries` tries, each at once (each reconnection has its own backoff).
    pub fn asking(retries: u32) -> Self {
        Self {
            backoff: None,
            ..Self::connecting(retries)
        }
    }

    /// The pause before the next try (zero before the first and when asking); `None` once every try
    /// is spent.
    pub fn next_try(&mut self) -> Option<Duration> {
        self.left = self.left.checked_sub(1)?;
        let pause = match &mut self.backoff {
            Some(backoff) if self.tried > 0 => backoff.next().expect("endless"),
            _ => Duration::ZERO,
        };
        self.tried += 1;
        Some(pause)
    }

    /// The verdict on a failed try ([`Exchange::retry`]): `Ok` to try again, `Err` to give up now.
    ///
    /// # Errors
    /// [`ClientError::Refused`] when the server refused.
    pub fn failed(&mut self, failure: Exchange) -> Result<(), ClientError> {
        self.last = failure.retry()?;
        Ok(())
    }

    /// The error once every try has failed.
    pub fn exhausted(self, endpoint: &Endpoint) -> ClientError {
        let reason = if self.backoff.is_some() {
            self.last
        } else {
            format!(
                "the connection dropped {} times before a batch arrived",
                self.tried
            )
        };
        ClientError::Unreachable {
            endpoint: endpoint.to_string(),
            reason,
        }
    }
}

/// What the driver does after [`ClientCore::open_shared_memory`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use]
pub enum Opening {
    /// Send `out` on this connection and run the exchange to [`Event::RingReady`].
    Send,
    /// This connection is of no use (none, or one mid-way through an exchange): open a new one, whose
    /// welcome opens the ring.
    Reconnect,
}

impl Event {
    /// The welcome of a new connection ([`Event::Welcomed`], or [`Event::RingReady`] when shared memory
    /// is on).
    ///
    /// # Errors
    /// Any other event: a bug in the core, reported rather than panicked on.
    pub fn into_welcome(self) -> Result<(), Failure> {
        match self {
            Self::Welcomed | Self::RingReady { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// [`Event::RingReady`].
    ///
    /// # Errors
    /// As [`Event::into_welcome`].
    pub fn into_ring(self) -> Result<(), Failure> {
        match self {
            Self::RingReady { .. } => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// The samples of [`Event::Batch`].
    ///
    /// # Errors
    /// As [`Event::into_welcome`].
    pub fn into_batch(self) -> Result<Vec<WireSample>, Failure> {
        match self {
            Self::Batch(samples) => Ok(samples),
            other => Err(unexpected(&other)),
        }
    }

    /// (slot, bytes) of [`Event::Slot`].
    ///
    /// # Errors
    /// As [`Event::into_welcome`].
    pub fn into_slot(self) -> Result<(u32, u64), Failure> {
        match self {
            Self::Slot { slot, bytes } => Ok((slot, bytes)),
            other => Err(unexpected(&other)),
        }
    }
}

/// An event the core does not give for what was asked: a bug in the core, reported rather than panicked on.
fn unexpected(event: &Event) -> Failure {
    Failure::Refused(format!("unexpected {event:?}"))
}

/// What the core waits for on the current connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Awaiting {
    /// No connection of use: none yet, or one that failed. A new one starts with `connect`.
    Connection,
    /// `Welcome`, on a new connection.
    Welcome,
    /// Connected, no exchange under way.
    Nothing,
    /// `ShmReady`.
    Ring,
    /// The answer to a request made ahead, which nobody wants any more; then `ShmReady`.
    StaleThenRing,
    /// The answer to a request made ahead, which nobody wants any more; then ask for `at` (and `next`).
    StaleThenAsk {
        at: Position,
        next: Option<Position>,
    },
    /// The answer for `at`; `next` was asked for ahead.
    Answer {
        at: Position,
        next: Option<Position>,
    },
}

/// One rank's side of the protocol for one job: the state both Rust clients share.
#[derive(Debug)]
pub struct ClientCore {
    hello: Vec<u8>,
    global_batch: u64,
    /// Samples per micro-step over all ranks.
    per_micro_step: u64,
    num_samples: Option<u64>,
    read_ahead: bool,
    shm_slots: Option<u32>,
    fingerprint: String,
    micro_steps: u32,
    tokens_per_sample: u32,
    awaiting: Awaiting,
    /// Whether the current connection has its ring.
    has_ring: bool,
    /// The slot the caller holds (its last micro-batch).
    held: Option<u32>,
    /// The micro-batch asked for ahead, whose answer is still to be read.
    ahead: Option<Position>,
}

impl ClientCore {
    /// Rank `rank` of `world_size` of `job`, presenting `token`; reads ahead unless told otherwise.
    pub fn new(job: &JobSpec, rank: u32, world_size: u32, token: Option<&str>) -> Self {
        let mut hello = Vec::new();
        encode(
            &Message::Hello {
                version: VERSION,
                token: token.unwrap_or("").as_bytes().to_vec(),
                job: job.to_toml(),
                rank,
                world_size,
            },
            &mut hello,
        );
        Self {
            hello,
            global_batch: u64::from(job.global_batch_size),
            per_micro_step: u64::from(job.micro_batch_size) * u64::from(world_size),
            num_samples: job.num_samples,
            read_ahead: true,
            shm_slots: None,
            fingerprint: String::new(),
            micro_steps: 0,
            tokens_per_sample: 0,
            awaiting: Awaiting::Connection,
            has_ring: false,
            held: None,
            ahead: None,
        }
    }

    /// The job's fingerprint, from the last `Welcome`.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Micro-steps per step for this world size, from the last `Welcome`.
    pub fn micro_steps(&self) -> u32 {
        self.micro_steps
    }

    /// Tokens in every sample the server sends, from the last `Welcome`: the job's `seq_len`, or
    /// `seq_len + 1` in Megatron's order (inputs `[:-1]`, labels `[1:]`).
    pub fn tokens_per_sample(&self) -> u32 {
        self.tokens_per_sample
    }

    /// The ring's slots, once shared memory is asked for.
    pub fn shm_slots(&self) -> Option<u32> {
        self.shm_slots
    }

    /// Checks that shared memory is on, for a call that reads a batch in place.
    ///
    /// # Errors
    /// [`ClientError::Refused`] before [`ClientCore::open_shared_memory`].
    pub fn check_ring(&self) -> Result<(), ClientError> {
        match self.shm_slots {
            Some(_) => Ok(()),
            None => Err(ClientError::Refused(
                "no shared-memory ring: call open_shared_memory first".into(),
            )),
        }
    }

    /// Whether the current connection is of use for a new operation: welcomed, with no exchange under
    /// way. Not before the first [`ClientCore::connect`], after a failure, nor while an exchange is under
    /// way (an async call dropped mid-flight leaves its answer, or half a frame, on the connection): the
    /// driver then opens a new connection.
    pub fn is_ready(&self) -> bool {
        self.awaiting == Awaiting::Nothing
    }

    /// The driver lost the connection, or gave it up: the next operation needs a new one.
    pub fn disconnect(&mut self) {
        self.awaiting = Awaiting::Connection;
    }

    /// Whether the next message is `ShmReady`, whose descriptor the driver must receive with it.
    pub fn awaits_ring(&self) -> bool {
        matches!(self.awaiting, Awaiting::Ring | Awaiting::StaleThenRing)
    }

    /// Whether to ask for the following micro-batch with each request (on by default).
    pub fn set_read_ahead(&mut self, on: bool) {
        self.read_ahead = on;
    }

    /// A new connection: forgets the last one's state and appends `Hello`. Its answer gives
    /// [`Event::Welcomed`], or [`Event::RingReady`] when shared memory is on (the core asks for the ring
    /// right after the welcome).
    pub fn connect(&mut self, out: &mut Vec<u8>) {
        self.awaiting = Awaiting::Welcome;
        self.has_ring = false;
        self.held = None;
        self.ahead = None;
        out.extend_from_slice(&self.hello);
    }

    /// Switches this connection and every later one to a shared-memory ring of `slots` slots. On a
    /// connection that [`ClientCore::is_ready`], appends `ShmOpen` (the answer gives
    /// [`Event::RingReady`]); otherwise appends nothing and says to reconnect: the welcome of the new
    /// connection opens the ring.
    ///
    /// The slot held and an answer made ahead belong to the ring this one replaces: they are dropped.
    pub fn open_shared_memory(&mut self, slots: u32, out: &mut Vec<u8>) -> Opening {
        self.shm_slots = Some(slots);
        if !self.is_ready() {
            return Opening::Reconnect;
        }
        self.held = None;
        self.has_ring = false;
        self.awaiting = if self.ahead.take().is_some() {
            Awaiting::StaleThenRing
        } else {
            Awaiting::Ring
        };
        encode(&Message::ShmOpen { slots }, out);
        Opening::Send
    }

    /// The micro-batch after `at` if the job has it for every rank, so asking for it ahead cannot be
    /// refused; `None` before the first `Welcome`.
    pub fn following(&self, (step, micro_step): Position) -> Option<Position> {
        if self.micro_steps == 0 {
            return None;
        }
        let next = if micro_step + 1 >= u64::from(self.micro_steps) {
            (step + 1, 0)
        } else {
            (step, micro_step + 1)
        };
        let end = next.0 * self.global_batch + (next.1 + 1) * self.per_micro_step;
        self.num_samples.is_none_or(|n| end <= n).then_some(next)
    }

    /// Asks for the micro-batch at `at`: appends the release of the slot held, and the requests for `at`
    /// and the following micro-batch unless they were made ahead. The answer gives [`Event::Batch`] (or
    /// [`Event::Slot`] with shared memory).
    ///
    /// # Errors
    /// [`Failure::Dropped`] when the connection is not [`ClientCore::is_ready`].
    pub fn ask(&mut self, at: Position, out: &mut Vec<u8>) -> Result<(), Failure> {
        if !self.is_ready() {
            return Err(Failure::Dropped(format!(
                "cannot ask for {at:?} while waiting for {:?}",
                self.awaiting
            )));
        }
        if let Some(slot) = self.held.take() {
            encode(&Message::Release { slot }, out);
        }
        // With one slot, the one the caller holds, nothing can be prepared ahead.
        let next = self
            .following(at)
            .filter(|_| self.read_ahead && self.shm_slots.is_none_or(|slots| slots >= 2));
        self.awaiting = match self.ahead.take() {
            Some(asked) if asked == at => {
                request(next, out);
                Awaiting::Answer { at, next }
            }
            // Asked ahead for something else: its answer comes first, to be read and given back.
            Some(_) => Awaiting::StaleThenAsk { at, next },
            None => {
                request(Some(at), out);
                request(next, out);
                Awaiting::Answer { at, next }
            }
        };
        Ok(())
    }

    /// Takes the next message from the server; appends what to send next to `out`. After a failure the
    /// connection is of no further use ([`ClientCore::is_ready`] is false until the next
    /// [`ClientCore::connect`]).
    ///
    /// # Errors
    /// [`Failure::Refused`] for the server's `Error` frame and for any answer other than the one
    /// awaited (a `Batch` or `Slot` of another micro-batch included); [`Failure::Dropped`] when the
    /// server refused a request made ahead.
    pub fn receive(&mut self, message: Message, out: &mut Vec<u8>) -> Result<Event, Failure> {
        let received = self.take(message, out);
        if received.is_err() {
            self.disconnect();
        }
        received
    }

    /// [`ClientCore::receive`]: what `message` means given what the connection awaited.
    fn take(&mut self, message: Message, out: &mut Vec<u8>) -> Result<Event, Failure> {
        match (
            std::mem::replace(&mut self.awaiting, Awaiting::Nothing),
            message,
        ) {
            (
                Awaiting::Welcome,
                Message::Welcome {
                    fingerprint,
                    seq_len,
                    micro_steps,
                    ..
                },
            ) => Ok(self.welcomed(fingerprint, seq_len, micro_steps, out)),
            (
                Awaiting::Welcome,
                Message::Preparing {
                    dataset,
                    input_bytes,
                    total_bytes,
                },
            ) => {
                self.awaiting = Awaiting::Welcome;
                tracing::info!(
                    dataset,
                    input_bytes,
                    total_bytes,
                    "The server is preparing the job's raw dataset; waiting for it."
                );
                Ok(Event::Continue)
            }
            (Awaiting::Ring, Message::ShmReady { slots, slot_bytes }) => {
                self.has_ring = true;
                Ok(Event::RingReady { slots, slot_bytes })
            }
            (
                then @ (Awaiting::StaleThenRing | Awaiting::StaleThenAsk { .. }),
                stale @ (Message::Batch { .. } | Message::Slot { .. }),
            ) => {
                self.drop_stale(then, &stale, out);
                Ok(Event::Continue)
            }
            // Past the job's end, say: the server has closed the connection.
            (
                Awaiting::StaleThenRing | Awaiting::StaleThenAsk { .. },
                Message::Error { message },
            ) => Err(Failure::Dropped(format!(
                "the request made ahead was refused: {message}"
            ))),
            (Awaiting::Answer { at, next }, answer) => self.answer(at, next, answer),
            (_, Message::Error { message }) => Err(Failure::Refused(message)),
            (awaiting, other) => Err(Failure::Refused(format!(
                "expected {}, got {}",
                awaiting.expected(),
                describe(&other)
            ))),
        }
    }

    /// Keeps what the `Welcome` says; asks for the ring when shared memory is on.
    fn welcomed(
        &mut self,
        fingerprint: String,
        tokens_per_sample: u32,
        micro_steps: u32,
        out: &mut Vec<u8>,
    ) -> Event {
        self.fingerprint = fingerprint;
        self.micro_steps = micro_steps;
        self.tokens_per_sample = tokens_per_sample;
        match self.shm_slots {
            Some(slots) => {
                self.awaiting = Awaiting::Ring;
                encode(&Message::ShmOpen { slots }, out);
                Event::Continue
            }
            None => Event::Welcomed,
        }
    }

    /// Throws away the answer to a request made ahead that nobody wants any more (giving its slot
    /// back), then goes on as `then` says: waits for the ring, or asks.
    fn drop_stale(&mut self, then: Awaiting, stale: &Message, out: &mut Vec<u8>) {
        if let Message::Slot { slot, .. } = stale
            && matches!(then, Awaiting::StaleThenAsk { .. })
        {
            encode(&Message::Release { slot: *slot }, out);
        }
        self.awaiting = match then {
            Awaiting::StaleThenAsk { at, next } => {
                request(Some(at), out);
                request(next, out);
                Awaiting::Answer { at, next }
            }
            _ => Awaiting::Ring,
        };
    }

    /// The answer for `at`: its `Batch` (its `Slot` once the ring is open), or a refusal.
    fn answer(
        &mut self,
        at: Position,
        next: Option<Position>,
        answer: Message,
    ) -> Result<Event, Failure> {
        let event = match answer {
            Message::Batch {
                step,
                micro_step,
                samples,
            } if self.shm_slots.is_none() && (step, micro_step) == at => Event::Batch(samples),
            Message::Slot {
                step,
                micro_step,
                slot,
                bytes,
            } if self.has_ring && (step, micro_step) == at => {
                self.held = Some(slot);
                Event::Slot { slot, bytes }
            }
            Message::Error { message } => return Err(Failure::Refused(message)),
            other => {
                let kind = if self.shm_slots.is_some() {
                    "Slot"
                } else {
                    "Batch"
                };
                return Err(Failure::Refused(format!(
                    "expected the {kind} of ({}, {}), got {}",
                    at.0,
                    at.1,
                    describe(&other)
                )));
            }
        };
        self.ahead = next;
        Ok(event)
    }
}

impl Awaiting {
    /// The message awaited, for an error that names what came instead.
    fn expected(&self) -> &'static str {
        match self {
            Self::Welcome => "Welcome",
            Self::Connection => "no message (not connected)",
            Self::Ring | Self::StaleThenRing => "ShmReady",
            Self::Nothing => "no message",
            Self::StaleThenAsk { .. } | Self::Answer { .. } => "an answer",
        }
    }
}

fn request(at: Option<Position>, out: &mut Vec<u8>) {
    if let Some((step, micro_step)) = at {
        encode(&Message::Request { step, micro_step }, out);
    }
}

/// A message's kind and, for an answer, its position (not its samples).
fn describe(message: &Message) -> String {
    match message {
        Message::Batch {
            step, micro_step, ..
        } => format!("the Batch of ({step}, {micro_step})"),
        Message::Slot {
            step,
            micro_step,
            slot,
            ..
        } => format!("the Slot of ({step}, {micro_step}) in slot {slot}"),
        other => other.kind().to_owned(),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use std::collections::VecDeque;

    use proptest::prelude::*;

    use super::*;
    use crate::protocol::{Limits, decode};

    /// Micro-batches of one rank, as the model server hands them out: the position, as a sample index.
    fn sample_of((step, micro_step): Position) -> WireSample {
        WireSample {
            dataset: 0,
            index: step * 1000 + micro_step,
            cu_seqlens: vec![0, 1],
            tokens: vec![7],
        }
    }

    /// A job of 2 micro-steps per step for rank 0 of 2 (micro-batches of 1, global batches of 4).
    fn job(num_samples: Option<u64>) -> JobSpec {
        let mut spec = JobSpec::from_toml(
            "seed = 1\nseq_len = 1\nmicro_batch_size = 1\nglobal_batch_size = 4\n[[datasets]]\npath = \"x\"\n",
        )
        .unwrap();
        spec.num_samples = num_samples;
        spec
    }

    /// The server of one connection as the protocol describes it: answers requests in order (in a free
    /// slot once a ring is open), refuses a micro-batch the job does not have for every rank and a
    /// request with every slot held, and hangs up after a refusal.
    struct Server {
        micro_steps: u64,
        num_samples: Option<u64>,
        /// Per slot: the micro-batch the client holds in it.
        ring: Option<Vec<Option<Position>>>,
        requests: Vec<Position>,
        answers: VecDeque<Message>,
        refused: Option<String>,
    }

    impl Server {
        fn new(num_samples: Option<u64>) -> Self {
            Self {
                micro_steps: 2,
                num_samples,
                ring: None,
                requests: Vec::new(),
                answers: VecDeque::new(),
                refused: None,
            }
        }

        fn refuse(&mut self, message: String) {
            self.answers.push_back(Message::Error {
                message: message.clone(),
            });
            self.refused = Some(message);
        }

        fn feed(&mut self, mut bytes: &[u8]) {
            while let Some((message, used)) = decode(bytes, Limits::CLIENT_FRAMES).unwrap() {
                bytes = &bytes[used..];
                if self.refused.is_some() {
                    continue;
                }
                match message {
                    Message::Hello { .. } => self.answers.push_back(Message::Welcome {
                        version: VERSION,
                        fingerprint: "f".into(),
                        seq_len: 1,
                        micro_steps: 2,
                    }),
                    Message::ShmOpen { slots } => {
                        self.ring = Some(vec![None; slots as usize]);
                        self.answers.push_back(Message::ShmReady {
                            slots,
                            slot_bytes: 4096,
                        });
                    }
                    Message::Release { slot } => match &mut self.ring {
                        Some(ring) if ring.get(slot as usize).is_some_and(Option::is_some) => {
                            ring[slot as usize] = None;
                        }
                        _ => self.refuse(format!("the client does not hold slot {slot}")),
                    },
                    Message::Request { step, micro_step } => {
                        let at = (step, micro_step);
                        self.requests.push(at);
                        let end = step * 4 + (micro_step + 1) * 2;
                        if micro_step >= self.micro_steps
                            || self.num_samples.is_some_and(|n| end > n)
                        {
                            self.refuse(format!("{at:?} is past the job's end"));
                        } else if let Some(ring) = &mut self.ring {
                            match ring.iter().position(Option::is_none) {
                                Some(slot) => {
                                    ring[slot] = Some(at);
                                    self.answers.push_back(Message::Slot {
                                        step,
                                        micro_step,
                                        slot: u32::try_from(slot).unwrap(),
                                        bytes: 64,
                                    });
                                }
                                None => self.refuse("the client holds all slots".into()),
                            }
                        } else {
                            self.answers.push_back(Message::Batch {
                                step,
                                micro_step,
                                samples: vec![sample_of(at)],
                            });
                        }
                    }
                    other => panic!("a client sent {other:?}"),
                }
            }
            assert!(bytes.is_empty(), "a partial frame");
        }
    }

    /// Runs the exchange a driver runs: send, read one answer, hand it to the core, until an event.
    /// `Err(None)`: the server hung up (a driver reconnects).
    fn drive(
        core: &mut ClientCore,
        server: &mut Server,
        out: &mut Vec<u8>,
    ) -> Result<Event, Option<Failure>> {
        loop {
            server.feed(out);
            out.clear();
            let Some(message) = server.answers.pop_front() else {
                assert!(
                    server.refused.is_some(),
                    "the core waits for an answer that will never come"
                );
                return Err(None);
            };
            match core.receive(message, out) {
                Ok(Event::Continue) => {}
                Ok(event) => return Ok(event),
                Err(failure) => return Err(Some(failure)),
            }
        }
    }

    fn connected(core: &mut ClientCore, num_samples: Option<u64>) -> Server {
        let mut server = Server::new(num_samples);
        let mut out = Vec::new();
        core.connect(&mut out);
        let event = drive(core, &mut server, &mut out).unwrap();
        assert!(
            matches!(event, Event::Welcomed | Event::RingReady { .. }),
            "{event:?}"
        );
        server
    }

    #[test]
    fn the_first_request_carries_the_following_one_and_the_next_sends_only_its_successor() {
        let mut core = ClientCore::new(&job(None), 0, 2, None);
        let mut server = connected(&mut core, None);
        let mut out = Vec::new();
        core.ask((0, 1), &mut out).unwrap();
        assert_eq!(
            drive(&mut core, &mut server, &mut out).unwrap(),
            Event::Batch(vec![sample_of((0, 1))])
        );
        assert_eq!(server.requests, [(0, 1), (1, 0)], "asked ahead");
        core.ask((1, 0), &mut out).unwrap();
        drive(&mut core, &mut server, &mut out).unwrap();
        assert_eq!(server.requests, [(0, 1), (1, 0), (1, 1)], "not asked twice");
        // Anything else: the answer made ahead is read and thrown away first.
        core.ask((5, 0), &mut out).unwrap();
        assert_eq!(
            drive(&mut core, &mut server, &mut out).unwrap(),
            Event::Batch(vec![sample_of((5, 0))])
        );
        assert_eq!(server.requests[3..], [(5, 0), (5, 1)]);
        core.set_read_ahead(false);
        core.ask((5, 1), &mut out).unwrap();
        drive(&mut core, &mut server, &mut out).unwrap();
        core.ask((6, 0), &mut out).unwrap();
        drive(&mut core, &mut server, &mut out).unwrap();
        assert_eq!(server.requests[5..], [(6, 0)]);
    }

    #[test]
    fn nothing_is_asked_ahead_past_the_jobs_end_or_into_a_ring_of_one_slot() {
        let mut core = ClientCore::new(&job(Some(6)), 0, 2, None);
        assert_eq!(core.following((0, 0)), None, "before the welcome");
        let mut server = connected(&mut core, Some(6));
        assert_eq!(core.following((0, 1)), Some((1, 0)));
        assert_eq!(
            core.following((1, 0)),
            None,
            "samples 6 and 7 are past the end"
        );
        let mut out = Vec::new();
        core.ask((1, 0), &mut out).unwrap();
        drive(&mut core, &mut server, &mut out).unwrap();
        assert_eq!(server.requests, [(1, 0)]);

        let mut core = ClientCore::new(&job(None), 0, 2, None);
        assert_eq!(core.open_shared_memory(1, &mut out), Opening::Reconnect);
        assert!(out.is_empty(), "not connected: the welcome opens the ring");
        let mut server = connected(&mut core, None);
        for step in 0..3 {
            core.ask((step, 0), &mut out).unwrap();
            assert!(matches!(
                drive(&mut core, &mut server, &mut out).unwrap(),
                Event::Slot { slot: 0, .. }
            ));
        }
        assert_eq!(server.requests, [(0, 0), (1, 0), (2, 0)]);
    }

    #[test]
    fn progress_of_a_preparation_is_waited_through_before_the_welcome_only() {
        let preparing = || Message::Preparing {
            dataset: "raw/*.jsonl".into(),
            input_bytes: 10,
            total_bytes: 100,
        };
        let mut core = ClientCore::new(&job(None), 0, 2, None);
        let mut out = Vec::new();
        core.connect(&mut out);
        for _ in 0..3 {
            assert_eq!(core.receive(preparing(), &mut out), Ok(Event::Continue));
        }
        let mut server = Server::new(None);
        assert_eq!(drive(&mut core, &mut server, &mut out), Ok(Event::Welcomed));
        core.ask((0, 0), &mut out).unwrap();
        assert_eq!(
            core.receive(preparing(), &mut out),
            Err(Failure::Refused(
                "expected the Batch of (0, 0), got Preparing".into()
            ))
        );
    }

    #[test]
    fn an_answer_of_another_micro_batch_or_kind_is_refused() {
        for (answer, expected) in [
            (
                Message::Batch {
                    step: 3,
                    micro_step: 0,
                    samples: Vec::new(),
                },
                "expected the Batch of (2, 1), got the Batch of (3, 0)",
            ),
            (
                Message::Slot {
                    step: 2,
                    micro_step: 1,
                    slot: 0,
                    bytes: 64,
                },
                "expected the Batch of (2, 1), got the Slot of (2, 1) in slot 0",
            ),
            (
                Message::ShmOpen { slots: 2 },
                "expected the Batch of (2, 1), got ShmOpen",
            ),
        ] {
            let mut core = ClientCore::new(&job(None), 0, 2, None);
            let _server = connected(&mut core, None);
            let mut out = Vec::new();
            core.ask((2, 1), &mut out).unwrap();
            assert_eq!(
                core.receive(answer, &mut out),
                Err(Failure::Refused(expected.into()))
            );
        }
        // With a ring, a Slot of another micro-batch.
        let mut core = ClientCore::new(&job(None), 0, 2, None);
        let mut out = Vec::new();
        assert_eq!(core.open_shared_memory(2, &mut out), Opening::Reconnect);
        let _server = connected(&mut core, None);
        core.ask((2, 1), &mut out).unwrap();
        let wrong = Message::Slot {
            step: 2,
            micro_step: 0,
            slot: 1,
            bytes: 64,
        };
        assert_eq!(
            core.receive(wrong, &mut out),
            Err(Failure::Refused(
                "expected the Slot of (2, 1), got the Slot of (2, 0) in slot 1".into()
            ))
        );
    }

    #[test]
    fn a_refused_request_made_ahead_means_reconnect_and_asking_mid_exchange_is_refused() {
        let mut core = ClientCore::new(&job(None), 0, 2, None);
        let _server = connected(&mut core, None);
        let mut out = Vec::new();
        core.ask((0, 0), &mut out).unwrap();
        assert!(matches!(
            core.ask((0, 0), &mut out),
            Err(Failure::Dropped(_))
        ));
        core.receive(
            Message::Batch {
                step: 0,
                micro_step: 0,
                samples: Vec::new(),
            },
            &mut out,
        )
        .unwrap();
        core.ask((4, 0), &mut out).unwrap();
        let refused = core.receive(
            Message::Error {
                message: "past the end".into(),
            },
            &mut out,
        );
        assert!(
            matches!(&refused, Err(Failure::Dropped(m)) if m.contains("past the end")),
            "{refused:?}"
        );
    }

    #[test]
    fn a_connection_mid_exchange_or_after_a_failure_is_of_no_use_for_the_next_call() {
        let mut core = ClientCore::new(&job(None), 0, 2, None);
        assert!(!core.is_ready(), "not connected");
        let _server = connected(&mut core, None);
        assert!(core.is_ready());
        // The request is out and its answer not read (an async call dropped mid-flight): the answer
        // would come first on this connection, so the next call needs a new one.
        let mut out = Vec::new();
        core.ask((0, 0), &mut out).unwrap();
        out.clear();
        assert!(!core.is_ready());
        let mut shm = Vec::new();
        assert_eq!(core.open_shared_memory(2, &mut shm), Opening::Reconnect);
        assert!(shm.is_empty());
        assert!(matches!(
            core.ask((0, 1), &mut shm),
            Err(Failure::Dropped(_))
        ));
        // The new connection's welcome opens the ring, and the core asks afresh.
        let mut server2 = connected(&mut core, None);
        assert!(core.is_ready());
        core.ask((0, 0), &mut out).unwrap();
        assert!(matches!(
            drive(&mut core, &mut server2, &mut out).unwrap(),
            Event::Slot { .. }
        ));
        assert_eq!(server2.requests, [(0, 0), (0, 1)]);
        // A refusal leaves the connection of no use too.
        core.ask((0, 1), &mut out).unwrap();
        assert!(
            core.receive(Message::ShmOpen { slots: 1 }, &mut out)
                .is_err()
        );
        assert!(!core.is_ready());
    }

    #[test]
    fn connections_are_retried_with_backoff_and_refusals_give_up_at_once() {
        let millis: Vec<u128> = Backoff::default().take(8).map(|d| d.as_millis()).collect();
        assert_eq!(millis, [50, 100, 200, 400, 800, 1600, 2000, 2000]);
        let endpoint: Endpoint = "unix:///nowhere".parse().unwrap();
        let mut connecting = Attempts::connecting(2);
        let mut pauses = Vec::new();
        while let Some(pause) = connecting.next_try() {
            pauses.push(pause.as_millis());
            connecting.failed(Exchange::Io("refused".into())).unwrap();
        }
        assert_eq!(pauses, [0, 50, 100], "the first try at once");
        assert_eq!(
            connecting.exhausted(&endpoint).to_string(),
            "unix:///nowhere: refused"
        );
        // A request made ahead that was refused, or a dropped connection: ask again at once.
        let mut asking = Attempts::asking(1);
        for failure in [
            Exchange::Failed(Failure::Dropped(
                "the request made ahead was refused".into(),
            )),
            Exchange::closed(),
        ] {
            assert_eq!(asking.next_try(), Some(Duration::ZERO));
            asking.failed(failure).unwrap();
        }
        assert_eq!(asking.next_try(), None);
        assert_eq!(
            asking.exhausted(&endpoint).to_string(),
            "unix:///nowhere: the connection dropped 2 times before a batch arrived"
        );
        // The server refused, or broke the protocol: asking again gets the same answer.
        let mut asking = Attempts::asking(5);
        asking.next_try();
        let refused = asking.failed(Exchange::from(ReadError::Protocol(
            crate::protocol::ProtocolError::TooLarge { len: 9, max: 1 },
        )));
        assert!(
            matches!(&refused, Err(ClientError::Refused(m)) if m.contains("exceeds the limit")),
            "{refused:?}"
        );
        assert!(matches!(
            Exchange::Failed(Failure::Refused("no".into())).retry(),
            Err(ClientError::Refused(_))
        ));
    }

    /// What a caller does next.
    #[derive(Clone, Debug)]
    enum Action {
        /// The micro-batch after the last one asked for, as a trainer does.
        Next,
        /// The last one again.
        Again,
        /// Any micro-batch (possibly past the job's end).
        Jump(u64, u64),
        ReadAhead(bool),
        SharedMemory(u32),
        /// The connection drops.
        Reconnect,
    }

    fn action() -> impl Strategy<Value = Action> {
        prop_oneof![
            6 => Just(Action::Next),
            1 => Just(Action::Again),
            2 => (0..12u64, 0..3u64).prop_map(|(s, m)| Action::Jump(s, m)),
            1 => any::<bool>().prop_map(Action::ReadAhead),
            1 => (1..4u32).prop_map(Action::SharedMemory),
            1 => Just(Action::Reconnect),
        ]
    }

    proptest! {
        /// Random callers against the model server: every answer is the micro-batch asked for, the
        /// server never has a reason to refuse but a request past the job's end, and each ask sends
        /// exactly the requests it must: the one asked for unless it was asked ahead, and the following
        /// one when reading ahead is on (two slots or more with a ring) and the job has it.
        #[test]
        fn the_core_against_a_model_server(
            num_samples in prop_oneof![Just(None), (1..40u64).prop_map(Some)],
            actions in proptest::collection::vec(action(), 1..80),
        ) {
            let mut core = ClientCore::new(&job(num_samples), 0, 2, None);
            let mut server = connected(&mut core, num_samples);
            let (mut last, mut ahead, mut read_ahead) = ((0u64, 0u64), None, true);
            let mut out = Vec::new();
            for action in actions {
                let at = match action {
                    Action::Next => if last.1 == 1 { (last.0 + 1, 0) } else { (last.0, 1) },
                    Action::Again => last,
                    Action::Jump(s, m) => (s, m),
                    Action::ReadAhead(on) => {
                        core.set_read_ahead(on);
                        read_ahead = on;
                        continue;
                    }
                    Action::SharedMemory(slots) => {
                        prop_assert_eq!(core.open_shared_memory(slots, &mut out), Opening::Send);
                        let event = drive(&mut core, &mut server, &mut out).unwrap();
                        prop_assert_eq!(event, Event::RingReady { slots, slot_bytes: 4096 });
                        ahead = None;
                        continue;
                    }
                    Action::Reconnect => {
                        server = connected(&mut core, num_samples);
                        ahead = None;
                        continue;
                    }
                };
                let before = server.requests.len();
                core.ask(at, &mut out).unwrap();
                let in_job = at.1 < 2 && num_samples.is_none_or(|n| at.0 * 4 + (at.1 + 1) * 2 <= n);
                match drive(&mut core, &mut server, &mut out) {
                    Ok(Event::Batch(samples)) => {
                        prop_assert!(in_job);
                        prop_assert!(server.ring.is_none());
                        prop_assert_eq!(samples, vec![sample_of(at)]);
                    }
                    Ok(Event::Slot { slot, .. }) => {
                        prop_assert!(in_job);
                        prop_assert_eq!(server.ring.as_ref().unwrap()[slot as usize], Some(at));
                    }
                    Err(Some(Failure::Refused(message))) => {
                        prop_assert!(!in_job, "{:?} refused: {}", at, message);
                        prop_assert!(message.contains("past the job's end"), "{}", message);
                        server = connected(&mut core, num_samples);
                        ahead = None;
                        last = at;
                        continue;
                    }
                    other => prop_assert!(false, "{:?}: {:?}", at, other),
                }
                prop_assert!(server.refused.is_none(), "{:?}", server.refused);
                let slots = server.ring.as_ref().map(Vec::len);
                let following = if at.1 == 1 { (at.0 + 1, 0) } else { (at.0, 1) };
                let next = (read_ahead
                    && slots.is_none_or(|s| s >= 2)
                    && num_samples.is_none_or(|n| following.0 * 4 + (following.1 + 1) * 2 <= n))
                .then_some(following);
                let mut expected = Vec::new();
                if ahead != Some(at) {
                    expected.push(at);
                }
                expected.extend(next);
                let sent: Vec<Position> = server.requests[before..].to_vec();
                // A different request first reads the answer made ahead: not a request of its own.
                prop_assert_eq!(sent, expected);
                ahead = next;
                last = at;
            }
        }
    }
}
