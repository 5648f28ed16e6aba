//! The Rust client: connect, say `Hello`, ask for micro-batches. It reconnects with backoff when the
//! connection drops (a server restart included) and asks again for the batch it was waiting for, which a
//! restarted server serves identically.
//!
//! On a Unix socket, [`Client::open_shared_memory`] switches the connection to a shared-memory ring
//! ([`crate::shm`]): [`Client::micro_batch_in_place`] then returns the batch where the server wrote it,
//! without a copy, valid until the next call (which gives the slot back).

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::protocol::{Limits, Message, VERSION, WireSample, encode};
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
    hello: Vec<u8>,
    conn: Option<(Box<dyn Connection>, Vec<u8>)>,
    retries: u32,
    shm_slots: Option<u32>,
    ring: Option<RingMap>,
    held: Option<u32>,
    /// The micro-batch asked for ahead, whose answer is still to be read.
    ahead: Option<(u64, u64)>,
    read_ahead: bool,
    /// (global batch, samples per micro-step) of the job for this world size.
    shape: (u64, u64),
    num_samples: Option<u64>,
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
        let hello = hello_frame(job, rank, world_size, token);
        let mut client = Self {
            endpoint,
            hello,
            conn: None,
            retries,
            shm_slots: None,
            ring: None,
            held: None,
            ahead: None,
            read_ahead: true,
            shape: (
                u64::from(job.global_batch_size),
                u64::from(job.micro_batch_size) * u64::from(world_size),
            ),
            num_samples: job.num_samples,
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
                Err(Handshake::Refused(message)) => return Err(ClientError::Refused(message)),
                Err(Handshake::Io(reason)) => last = reason,
            }
        }
        Err(ClientError::Unreachable {
            endpoint: self.endpoint.to_string(),
            reason: last,
        })
    }

    fn handshake(&mut self) -> Result<(), Handshake> {
        let mut conn: Box<dyn Connection> = match &self.endpoint {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).map_err(|e| Handshake::Io(e.to_string()))?;
                let _ = stream.set_nodelay(true);
                Box::new(stream)
            }
            Endpoint::Unix(path) => {
                Box::new(UnixStream::connect(path).map_err(|e| Handshake::Io(e.to_string()))?)
            }
        };
        conn.write_all(&self.hello)
            .map_err(|e| Handshake::Io(e.to_string()))?;
        let mut buf = Vec::new();
        match read_message(conn.as_mut(), &mut buf, Limits::SERVER_FRAMES) {
            Ok(Some(Message::Welcome {
                fingerprint,
                micro_steps,
                ..
            })) => {
                self.fingerprint = fingerprint;
                self.micro_steps = micro_steps;
                self.ring = None;
                self.held = None;
                self.ahead = None;
                if let Some(slots) = self.shm_slots {
                    self.ring = Some(open_ring(conn.as_mut(), &mut buf, slots)?);
                }
                self.conn = Some((conn, buf));
                Ok(())
            }
            Ok(Some(Message::Error { message })) => Err(Handshake::Refused(message)),
            Ok(other) => Err(Handshake::Refused(format!(
                "expected Welcome, got {other:?}"
            ))),
            Err(reason) => Err(Handshake::Io(reason)),
        }
    }

    /// Whether to ask for the following micro-batch with each request (on by default), so that it is on
    /// its way while the caller works; the server then counts it as sent before the caller asks.
    pub fn set_read_ahead(&mut self, on: bool) {
        self.read_ahead = on;
    }

    /// Switches this connection (and every reconnection) to a shared-memory ring of `slots` slots.
    ///
    /// # Errors
    /// Over TCP (shared memory is for the server's host), or when the server refuses.
    pub fn open_shared_memory(&mut self, slots: u32) -> Result<(), ClientError> {
        if !matches!(self.endpoint, Endpoint::Unix(_)) {
            return Err(ClientError::Refused(format!(
                "{}: shared memory needs a unix:// endpoint",
                self.endpoint
            )));
        }
        self.shm_slots = Some(slots);
        let (conn, buf) = self.conn.as_mut().expect("connected");
        if self.ahead.take().is_some() {
            // The answer to a request made ahead comes first.
            read_message(conn.as_mut(), buf, Limits::SERVER_FRAMES)
                .map_err(ClientError::Refused)?;
        }
        match open_ring(conn.as_mut(), buf, slots) {
            Ok(ring) => {
                self.ring = Some(ring);
                Ok(())
            }
            Err(Handshake::Refused(m) | Handshake::Io(m)) => Err(ClientError::Refused(m)),
        }
    }

    /// This rank's samples at (`step`, `micro_step`); reconnects and asks again if the connection drops.
    pub fn micro_batch(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<Vec<WireSample>, ClientError> {
        if self.shm_slots.is_some() {
            let batch = self.micro_batch_in_place(step, micro_step)?;
            return Ok(batch.to_samples());
        }
        match self.exchange(step, micro_step)? {
            Message::Batch { samples, .. } => Ok(samples),
            other => Err(ClientError::Refused(format!(
                "expected Batch, got {}",
                other.kind()
            ))),
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
        if self.shm_slots.is_none() {
            return Err(ClientError::Refused(
                "no shared-memory ring: call open_shared_memory first".into(),
            ));
        }
        match self.exchange(step, micro_step)? {
            Message::Slot {
                step: s,
                micro_step: m,
                slot,
                bytes,
            } if (s, m) == (step, micro_step) => {
                self.held = Some(slot);
                let ring = self
                    .ring
                    .as_ref()
                    .expect("a ring comes with every connection");
                ring.slot(slot, bytes).map_err(ClientError::Refused)
            }
            other => Err(ClientError::Refused(format!(
                "expected the Slot of ({step}, {micro_step}), got {other:?}"
            ))),
        }
    }

    /// The micro-batch after `at`, if the job has it (so asking for it ahead cannot fail).
    fn following(&self, (step, micro_step): (u64, u64)) -> Option<(u64, u64)> {
        let next = if micro_step + 1 >= u64::from(self.micro_steps) {
            (step + 1, 0)
        } else {
            (step, micro_step + 1)
        };
        let (g, per_micro_step) = self.shape;
        let end = next.0 * g + (next.1 + 1) * per_micro_step;
        self.num_samples.is_none_or(|n| end <= n).then_some(next)
    }

    /// Sends a request (after giving back the slot held, if any) and returns the answer. It also asks
    /// for the following micro-batch, so that the server prepares it while the caller works on this one
    /// (a trainer asks in order); a request that turns out different throws that answer away.
    fn exchange(&mut self, step: u64, micro_step: u64) -> Result<Message, ClientError> {
        let at = (step, micro_step);
        // A server that accepts, then drops the connection before answering, gets as many tries as a
        // server that cannot be reached; then the last failure is returned.
        for _ in 0..=self.retries {
            if self.conn.is_none() {
                self.reconnect()?;
            }
            let answer = self.try_exchange(at);
            match answer {
                Ok(Some(Message::Error { message })) => return Err(ClientError::Refused(message)),
                Ok(Some(message)) => return Ok(message),
                // The connection dropped: reconnect and ask again.
                Ok(None) | Err(_) => self.conn = None,
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

    fn try_exchange(&mut self, at: (u64, u64)) -> Result<Option<Message>, String> {
        // With one slot, the one the caller holds, nothing can be prepared ahead.
        let read_ahead = self.read_ahead && self.shm_slots.is_none_or(|slots| slots >= 2);
        let next = self.following(at).filter(|_| read_ahead);
        let (conn, buf) = self.conn.as_mut().expect("connected");
        let mut request = Vec::new();
        if let Some(slot) = self.held.take() {
            encode(&Message::Release { slot }, &mut request);
        }
        match self.ahead.take() {
            Some(asked) if asked == at => {}
            asked => {
                if asked.is_some() {
                    // Asked ahead for something else: read that answer and give its slot back.
                    conn.write_all(&request).map_err(|e| e.to_string())?;
                    request.clear();
                    match read_message(conn.as_mut(), buf, Limits::SERVER_FRAMES)? {
                        Some(Message::Slot { slot, .. }) => {
                            encode(&Message::Release { slot }, &mut request);
                        }
                        Some(Message::Batch { .. }) => {}
                        // A refusal of what was asked ahead (past the job's end): the server has closed
                        // the connection; reconnect and ask for what is wanted now.
                        _ => return Err("the request made ahead was refused".into()),
                    }
                }
                encode(
                    &Message::Request {
                        step: at.0,
                        micro_step: at.1,
                    },
                    &mut request,
                );
            }
        }
        if let Some((step, micro_step)) = next {
            encode(&Message::Request { step, micro_step }, &mut request);
        }
        conn.write_all(&request).map_err(|e| e.to_string())?;
        let answer = read_message(conn.as_mut(), buf, Limits::SERVER_FRAMES)?;
        self.ahead = next;
        Ok(answer)
    }
}

/// The `Hello` frame of rank `rank` of `world_size` for `job`.
pub(crate) fn hello_frame(
    job: &JobSpec,
    rank: u32,
    world_size: u32,
    token: Option<&str>,
) -> Vec<u8> {
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
    hello
}

/// Asks for a ring on `conn` and maps it: `ShmOpen`, then `ShmReady` with the descriptor.
fn open_ring(
    conn: &mut dyn Connection,
    buf: &mut Vec<u8>,
    slots: u32,
) -> Result<RingMap, Handshake> {
    let io = |e: std::io::Error| Handshake::Io(e.to_string());
    let mut frame = Vec::new();
    encode(&Message::ShmOpen { slots }, &mut frame);
    conn.write_all(&frame).map_err(io)?;
    let socket = conn
        .as_unix()
        .ok_or_else(|| Handshake::Refused("shared memory needs a Unix socket".into()))?;
    let mut fd = None;
    loop {
        match crate::protocol::decode(buf, Limits::SERVER_FRAMES) {
            Ok(Some((message, used))) => {
                buf.drain(..used);
                return match (message, fd) {
                    (Message::ShmReady { slots, slot_bytes }, Some(fd)) => {
                        RingMap::open(fd, slots, slot_bytes).map_err(io)
                    }
                    (Message::ShmReady { .. }, None) => Err(Handshake::Refused(
                        "ShmReady came without the ring's descriptor".into(),
                    )),
                    (Message::Error { message }, _) => Err(Handshake::Refused(message)),
                    (other, _) => Err(Handshake::Refused(format!(
                        "expected ShmReady, got {}",
                        other.kind()
                    ))),
                };
            }
            Ok(None) => {}
            Err(e) => return Err(Handshake::Refused(e.to_string())),
        }
        let (n, received) = recv_with_fd(socket, buf).map_err(io)?;
        if n == 0 {
            return Err(Handshake::Io("connection closed before ShmReady".into()));
        }
        if received.is_some() {
            fd = received;
        }
    }
}

enum Handshake {
    Refused(String),
    Io(String),
}
