//! The Rust client: connect, say `Hello`, ask for micro-batches. It reconnects with backoff when the
//! connection drops (a server restart included) and asks again for the batch it was waiting for, which a
//! restarted server serves identically.
//!
//! On a Unix socket, [`Client::open_shared_memory`] switches the connection to a shared-memory ring
//! ([`crate::shm`]): [`Client::micro_batch_in_place`] then returns the batch where the server wrote it,
//! without a copy, valid until the next call (which gives the slot back).
//!
//! What to send, what the answers mean, and which failures are worth another try is [`ClientCore`]'s,
//! shared with the async client: it asks for the following micro-batch with each request (read-ahead),
//! releases the slot held, and checks that each answer is the micro-batch asked for. This file only
//! moves the bytes.

use std::os::fd::OwnedFd;

pub use crate::client_core::ClientError;
use crate::client_core::{
    Attempts, ClientCore, Event, Exchange, Failure, Opening, Position, check_shared_memory_endpoint,
};
use crate::online::Cursor;
use crate::protocol::{Limits, Message, WireSample, encode};
use crate::shm::{RingMap, SlotBatch};
use crate::spec::JobSpec;
use crate::transport::{Connection, Endpoint, read_message, read_message_and_fd};

/// A connection to `flame-stream` for one rank of one job.
pub struct Client {
    endpoint: Endpoint,
    core: ClientCore,
    conn: Option<(Box<dyn Connection>, Vec<u8>)>,
    retries: u32,
    ring: Option<RingMap>,
    /// A descriptor received with the bytes read so far: the ring's, with `ShmReady`.
    fd: Option<OwnedFd>,
    /// The job's fingerprint, from the server.
    pub fingerprint: String,
    /// Micro-steps per step for this world size.
    pub micro_steps: u32,
    /// Tokens in every sample the server sends: the job's `seq_len`, or `seq_len + 1` in Megatron's
    /// order (inputs `[:-1]`, labels `[1:]`), so a trainer can check its sample length before step 1.
    pub tokens_per_sample: u32,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoint", &self.endpoint)
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects and introduces rank `rank` of `world_size` for `job`; retries `retries` times with
    /// exponential backoff ([`crate::client_core::Backoff`]).
    pub fn connect(
        endpoint: Endpoint,
        job: &JobSpec,
        rank: u32,
        world_size: u32,
        token: Option<&str>,
        retries: u32,
    ) -> Result<Self, ClientError> {
        let mut client = Self {
            endpoint,
            core: ClientCore::new(job, rank, world_size, token),
            conn: None,
            retries,
            ring: None,
            fd: None,
            fingerprint: String::new(),
            micro_steps: 0,
            tokens_per_sample: 0,
        };
        client.reconnect()?;
        Ok(client)
    }

    fn reconnect(&mut self) -> Result<(), ClientError> {
        let mut attempts = Attempts::connecting(self.retries);
        while let Some(pause) = attempts.next_try() {
            std::thread::sleep(pause);
            match self.handshake() {
                Ok(()) => return Ok(()),
                Err(failure) => attempts.failed(failure)?,
            }
        }
        Err(attempts.exhausted(&self.endpoint))
    }

    /// Opens a connection, says `Hello` and, with shared memory on, maps the new ring.
    fn handshake(&mut self) -> Result<(), Exchange> {
        (self.conn, self.ring, self.fd) = (None, None, None);
        let conn = self.endpoint.connect().map_err(Exchange::io("connect"))?;
        self.conn = Some((conn, Vec::new()));
        let mut out = Vec::new();
        self.core.connect(&mut out);
        self.run(&mut out)?.into_welcome()?;
        self.core.fingerprint().clone_into(&mut self.fingerprint);
        self.micro_steps = self.core.micro_steps();
        self.tokens_per_sample = self.core.tokens_per_sample();
        Ok(())
    }

    /// Whether to ask for the following micro-batch with each request (on by default), so that it is on
    /// its way while the caller works; the server then counts it as sent before the caller asks.
    pub fn set_read_ahead(&mut self, on: bool) {
        self.core.set_read_ahead(on);
    }

    /// Switches this connection (and every reconnection) to a shared-memory ring of `slots` slots.
    ///
    /// # Errors
    /// Over TCP (shared memory is for the server's host), when the server refuses, and when the
    /// connection is lost and cannot be made again (then the next call tries again).
    pub fn open_shared_memory(&mut self, slots: u32) -> Result<(), ClientError> {
        check_shared_memory_endpoint(&self.endpoint)?;
        let mut out = Vec::new();
        if self.core.open_shared_memory(slots, &mut out) == Opening::Send {
            match self.run(&mut out).and_then(|event| Ok(event.into_ring()?)) {
                Ok(()) => return Ok(()),
                Err(failure) => failure.retry().map(drop)?,
            }
        }
        // No connection of use, or it was lost: a new one opens the ring.
        self.reconnect()
    }

    /// This rank's samples at (`step`, `micro_step`); reconnects and asks again if the connection drops.
    pub fn micro_batch(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<Vec<WireSample>, ClientError> {
        if self.core.shm_slots().is_some() {
            return Ok(self.micro_batch_in_place(step, micro_step)?.to_samples());
        }
        Ok(self.exchange((step, micro_step))?.into_batch()?)
    }

    /// This rank's samples at (`step`, `micro_step`) in the shared-memory ring, read in place; valid until
    /// the next call, which releases the slot.
    ///
    /// # Errors
    /// Without [`Client::open_shared_memory`], and as [`Client::micro_batch`].
    pub fn micro_batch_in_place(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<SlotBatch<'_>, ClientError> {
        self.core.check_ring()?;
        let (slot, bytes) = self.exchange((step, micro_step))?.into_slot()?;
        map_slot(self.ring.as_ref(), slot, bytes)
    }

    /// Asks for the micro-batch at `at` (see [`ClientCore::ask`]: with the request for the following
    /// one) and returns the answer; reconnects and asks again when the connection drops.
    fn exchange(&mut self, at: Position) -> Result<Event, ClientError> {
        let mut attempts = Attempts::asking(self.retries);
        while attempts.next_try().is_some() {
            if !self.core.is_ready() {
                self.reconnect()?;
            }
            let mut out = Vec::new();
            let answer = match self.core.ask(at, &mut out) {
                Ok(()) => self.run(&mut out),
                Err(failure) => Err(failure.into()),
            };
            match answer {
                Ok(event) => return Ok(event),
                Err(failure) => attempts.failed(failure)?,
            }
        }
        Err(attempts.exhausted(&self.endpoint))
    }

    /// Sends `out`, then reads and hands messages to the core (sending what it adds) until it has an
    /// event for the caller; maps the ring on [`Event::RingReady`]. Gives the connection up on a failure.
    fn run(&mut self, out: &mut Vec<u8>) -> Result<Event, Exchange> {
        let result = self.run_on_connection(out);
        if result.is_err() {
            self.conn = None;
            self.core.disconnect();
        }
        result
    }

    fn run_on_connection(&mut self, out: &mut Vec<u8>) -> Result<Event, Exchange> {
        let Self {
            core,
            conn,
            ring,
            fd,
            ..
        } = self;
        let (conn, buf) = conn
            .as_mut()
            .ok_or_else(|| Exchange::Io("not connected".into()))?;
        loop {
            conn.write_all(out).map_err(Exchange::io("write"))?;
            out.clear();
            let message = if core.awaits_ring() {
                let socket = conn.as_unix().ok_or_else(not_unix)?;
                read_message_and_fd(socket, buf, fd, Limits::SERVER_FRAMES)?
            } else {
                read_message(conn.as_mut(), buf, Limits::SERVER_FRAMES)?
            };
            match core.receive(message.ok_or_else(Exchange::closed)?, out)? {
                Event::Continue => {}
                Event::RingReady { slots, slot_bytes } => {
                    *ring = Some(map_ring(fd.take(), slots, slot_bytes)?);
                    return Ok(Event::RingReady { slots, slot_bytes });
                }
                event => return Ok(event),
            }
        }
    }
}

/// The cursors a trainer's checkpoint keeps to resume `job` at `step` when it streams raw datasets
/// (`streaming = true`; none otherwise), after handing the server `given`, the cursors of the checkpoint
/// being resumed (empty when saving one). Runs over a connection of its own, so a rank's connection and
/// its read-ahead are untouched; a restarted or fresh server given a checkpoint's cursors serves the
/// steps after it without replaying the stream.
///
/// # Errors
/// The server cannot be reached within `retries`, refuses the job, or answers out of protocol.
pub fn resume_cursors(
    endpoint: &Endpoint,
    job: &JobSpec,
    (step, given): (u64, &[(u32, Cursor)]),
    token: Option<&str>,
    retries: u32,
) -> Result<Vec<(u32, Cursor)>, ClientError> {
    let mut client = Client::connect(endpoint.clone(), job, 0, 1, token, retries)?;
    let (conn, buf) = client
        .conn
        .as_mut()
        .ok_or_else(|| ClientError::Refused("not connected".into()))?;
    let lost = |e: std::io::Error| ClientError::Unreachable {
        endpoint: endpoint.to_string(),
        reason: e.to_string(),
    };
    let mut out = Vec::new();
    encode(
        &Message::Cursors {
            step,
            cursors: given.to_vec(),
        },
        &mut out,
    );
    conn.write_all(&out).map_err(lost)?;
    match read_message(conn.as_mut(), buf, Limits::SERVER_FRAMES) {
        Ok(Some(Message::CursorsAt { step: s, cursors })) if s == step => Ok(cursors),
        Ok(Some(Message::Error { message })) => Err(ClientError::Refused(message)),
        Ok(Some(other)) => Err(ClientError::Refused(format!(
            "answered Cursors with {}",
            other.kind()
        ))),
        Ok(None) => Err(ClientError::Refused("closed the connection".into())),
        Err(e) => Err(ClientError::Refused(e.to_string())),
    }
}

/// A ring asked for over a socket that cannot carry its descriptor.
pub(crate) fn not_unix() -> Exchange {
    Exchange::Failed(Failure::Refused("shared memory needs a Unix socket".into()))
}

/// Maps the ring whose descriptor came with `ShmReady`.
pub(crate) fn map_ring(
    fd: Option<OwnedFd>,
    slots: u32,
    slot_bytes: u64,
) -> Result<RingMap, Exchange> {
    let fd = fd.ok_or_else(|| {
        Exchange::Failed(Failure::Refused(
            "ShmReady came without the ring's descriptor".into(),
        ))
    })?;
    RingMap::open(fd, slots, slot_bytes).map_err(Exchange::io("map the ring"))
}

/// The micro-batch in `slot` of the mapped ring.
pub(crate) fn map_slot(
    ring: Option<&RingMap>,
    slot: u32,
    bytes: u64,
) -> Result<SlotBatch<'_>, ClientError> {
    ring.ok_or_else(|| ClientError::Refused("a Slot came before the ring was mapped".into()))?
        .slot(slot, bytes)
        .map_err(ClientError::Refused)
}
