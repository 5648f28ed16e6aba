//! The Rust client: connect, say `Hello`, ask for micro-batches. It reconnects with backoff when the
//! connection drops (a server restart included) and asks again for the batch it was waiting for, which a
//! restarted server serves identically.
//!
//! On a Unix socket, [`Client::open_shared_memory`] switches the connection to a shared-memory ring
//! ([`crate::shm`]): [`Client::micro_batch_in_place`] then returns the batch where the server wrote it,
//! without a copy, valid until the next call (which gives the slot back).
//!
//! What to send and what the answers mean is [`ClientCore`]'s, shared with the async client: it asks for
//! the following micro-batch with each request (read-ahead), releases the slot held, and checks that
//! each answer is the micro-batch asked for. This file only moves the bytes.

use std::io::Write;
use std::net::TcpStream;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::client_core::{ClientCore, Event, Failure, Position};
use crate::protocol::{Limits, Message, WireSample, decode};
use crate::server::{Connection, Endpoint, read_message};
use crate::shm::{RingMap, SlotBatch, recv_with_fd};
use crate::spec::JobSpec;

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
    /// exponential backoff (from 50 ms, at most 2 s apart).
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
        };
        client.reconnect()?;
        Ok(client)
    }

    fn reconnect(&mut self) -> Result<(), ClientError> {
        let mut delay = Duration::from_millis(50);
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            match self.handshake() {
                Ok(()) => return Ok(()),
                Err(Exchange::Failed(Failure::Refused(message))) => {
                    return Err(ClientError::Refused(message));
                }
                Err(Exchange::Failed(Failure::Dropped(reason)) | Exchange::Io(reason)) => {
                    last = reason;
                }
            }
        }
        Err(ClientError::Unreachable {
            endpoint: self.endpoint.to_string(),
            reason: last,
        })
    }

    /// Opens a connection, says `Hello` and, with shared memory on, maps the new ring.
    fn handshake(&mut self) -> Result<(), Exchange> {
        self.conn = None;
        self.ring = None;
        self.fd = None;
        let io = |e: std::io::Error| Exchange::Io(e.to_string());
        let conn: Box<dyn Connection> = match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).map_err(io)?;
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
            Endpoint::Unix(path) => Box::new(UnixStream::connect(path).map_err(io)?),
        };
        self.conn = Some((conn, Vec::new()));
        let mut out = Vec::new();
        self.core.connect(&mut out);
        let result = self.run(&mut out);
        match result {
            Ok(Event::Welcomed | Event::RingReady { .. }) => {
                self.core.fingerprint().clone_into(&mut self.fingerprint);
                self.micro_steps = self.core.micro_steps();
                Ok(())
            }
            Ok(other) => {
                self.conn = None;
                Err(Exchange::Failed(unexpected(&other)))
            }
            Err(e) => {
                self.conn = None;
                Err(e)
            }
        }
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
        if !matches!(self.endpoint, Endpoint::Unix(_)) {
            return Err(ClientError::Refused(format!(
                "{}: shared memory needs a unix:// endpoint",
                self.endpoint
            )));
        }
        let mut out = Vec::new();
        self.core.open_shared_memory(slots, &mut out);
        if self.conn.is_none() {
            // Lost earlier: a new connection opens the ring.
            return self.reconnect();
        }
        match self.run(&mut out) {
            Ok(Event::RingReady { .. }) => Ok(()),
            Ok(other) => {
                self.conn = None;
                Err(unexpected(&other).into())
            }
            Err(Exchange::Failed(Failure::Refused(message))) => {
                self.conn = None;
                Err(ClientError::Refused(message))
            }
            Err(Exchange::Failed(Failure::Dropped(_)) | Exchange::Io(_)) => self.reconnect(),
        }
    }

    /// This rank's samples at (`step`, `micro_step`); reconnects and asks again if the connection drops.
    pub fn micro_batch(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<Vec<WireSample>, ClientError> {
        if self.core.shm_slots().is_some() {
            let batch = self.micro_batch_in_place(step, micro_step)?;
            return Ok(batch.to_samples());
        }
        match self.exchange((step, micro_step))? {
            Event::Batch(samples) => Ok(samples),
            other => Err(unexpected(&other).into()),
        }
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
        if self.core.shm_slots().is_none() {
            return Err(ClientError::Refused(
                "no shared-memory ring: call open_shared_memory first".into(),
            ));
        }
        match self.exchange((step, micro_step))? {
            Event::Slot { slot, bytes } => {
                let ring = self.ring.as_ref().ok_or_else(|| {
                    ClientError::Refused("a Slot came before the ring was mapped".into())
                })?;
                ring.slot(slot, bytes).map_err(ClientError::Refused)
            }
            other => Err(unexpected(&other).into()),
        }
    }

    /// Asks for the micro-batch at `at` (see [`ClientCore::ask`]: with the request for the following
    /// one) and returns the answer; reconnects and asks again when the connection drops.
    fn exchange(&mut self, at: Position) -> Result<Event, ClientError> {
        // A server that accepts, then drops the connection before answering, gets as many tries as a
        // server that cannot be reached; then the last failure is returned.
        for _ in 0..=self.retries {
            if self.conn.is_none() {
                self.reconnect()?;
            }
            let mut out = Vec::new();
            let answer = match self.core.ask(at, &mut out) {
                Ok(()) => self.run(&mut out),
                Err(failure) => Err(Exchange::Failed(failure)),
            };
            match answer {
                Ok(event) => return Ok(event),
                Err(Exchange::Failed(Failure::Refused(message))) => {
                    self.conn = None;
                    return Err(ClientError::Refused(message));
                }
                // The connection dropped: reconnect and ask again.
                Err(Exchange::Failed(Failure::Dropped(_)) | Exchange::Io(_)) => self.conn = None,
            }
        }
        Err(ClientError::Unreachable {
            endpoint: self.endpoint.to_string(),
            reason: format!(
                "the connection dropped {} times before a batch arrived",
                self.retries + 1
            ),
        })
    }

    /// Sends `out`, then reads and hands messages to the core (sending what it adds) until it has an
    /// event for the caller; maps the ring on [`Event::RingReady`].
    fn run(&mut self, out: &mut Vec<u8>) -> Result<Event, Exchange> {
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
            conn.write_all(out)
                .map_err(|e| Exchange::Io(format!("write: {e}")))?;
            out.clear();
            let message = if core.awaits_ring() {
                read_with_fd(conn.as_mut(), buf, fd)?
            } else {
                read_message(conn.as_mut(), buf, Limits::SERVER_FRAMES)
                    .map_err(Exchange::Io)?
                    .ok_or_else(|| Exchange::Io("the server closed the connection".into()))?
            };
            match core.receive(message, out).map_err(Exchange::Failed)? {
                Event::Continue => {}
                Event::RingReady { slots, slot_bytes } => {
                    let fd = fd.take().ok_or_else(|| {
                        Exchange::Failed(Failure::Refused(
                            "ShmReady came without the ring's descriptor".into(),
                        ))
                    })?;
                    *ring = Some(
                        RingMap::open(fd, slots, slot_bytes)
                            .map_err(|e| Exchange::Io(format!("map the ring: {e}")))?,
                    );
                    return Ok(Event::RingReady { slots, slot_bytes });
                }
                event => return Ok(event),
            }
        }
    }
}

/// Reads one message on a Unix socket, keeping the descriptor that comes with it (the ring's, with
/// `ShmReady`) in `fd`.
fn read_with_fd(
    conn: &mut dyn Connection,
    buf: &mut Vec<u8>,
    fd: &mut Option<OwnedFd>,
) -> Result<Message, Exchange> {
    let socket = conn.as_unix().ok_or_else(|| {
        Exchange::Failed(Failure::Refused("shared memory needs a Unix socket".into()))
    })?;
    loop {
        match decode(buf, Limits::SERVER_FRAMES) {
            Ok(Some((message, used))) => {
                buf.drain(..used);
                return Ok(message);
            }
            Ok(None) => {}
            Err(e) => return Err(Exchange::Failed(Failure::Refused(e.to_string()))),
        }
        let (n, received) =
            recv_with_fd(socket, buf).map_err(|e| Exchange::Io(format!("read: {e}")))?;
        if n == 0 {
            return Err(Exchange::Io("the server closed the connection".into()));
        }
        if received.is_some() {
            *fd = received;
        }
    }
}

/// An event the core does not give for what was asked: a bug in the core, reported rather than panicked on.
pub(crate) fn unexpected(event: &Event) -> Failure {
    Failure::Refused(format!("unexpected {event:?}"))
}

impl From<Failure> for ClientError {
    fn from(failure: Failure) -> Self {
        Self::Refused(failure.to_string())
    }
}

/// How an exchange failed: the connection (reconnect and ask again) or the core's verdict.
pub(crate) enum Exchange {
    Io(String),
    Failed(Failure),
}
