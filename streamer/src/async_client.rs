//! The async Rust client (tokio): the protocol and behaviour of [`crate::client::Client`] for input
//! pipelines that run on an async runtime. It reconnects with backoff and asks again for the batch it
//! was waiting for, reads ahead, checks every answer's position, and on a Unix socket reads batches in
//! place from a shared-memory ring. What to send and what the answers mean is the same sans-IO
//! [`ClientCore`] the blocking client drives; only the reads and writes differ.

use std::os::fd::OwnedFd;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

use crate::client::{ClientError, Exchange, unexpected};
use crate::client_core::{ClientCore, Event, Failure, Position};
use crate::protocol::{Limits, Message, WireSample, decode};
use crate::server::Endpoint;
use crate::shm::{RingMap, SlotBatch, recv_with_fd};
use crate::spec::JobSpec;

/// A connection of either kind.
#[derive(Debug)]
enum Conn {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Conn {
    async fn open(endpoint: &Endpoint) -> std::io::Result<Self> {
        Ok(match endpoint {
            Endpoint::Tcp(addr) => {
                let stream = TcpStream::connect(addr).await?;
                stream.set_nodelay(true)?;
                Self::Tcp(stream)
            }
            Endpoint::Unix(path) => Self::Unix(UnixStream::connect(path).await?),
        })
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        match self {
            Self::Tcp(s) => s.write_all(bytes).await,
            Self::Unix(s) => s.write_all(bytes).await,
        }
    }

    /// Appends what arrives to `buf`, keeping a descriptor that comes with it in `fd` when `with_fd`
    /// (Unix sockets only); 0 at the end of the stream.
    async fn read_more(
        &mut self,
        buf: &mut Vec<u8>,
        fd: &mut Option<OwnedFd>,
        with_fd: bool,
    ) -> Result<usize, Exchange> {
        let io = |e: std::io::Error| Exchange::Io(format!("read: {e}"));
        buf.reserve(64 << 10);
        match self {
            Self::Tcp(_) if with_fd => Err(Exchange::Failed(Failure::Refused(
                "shared memory needs a Unix socket".into(),
            ))),
            Self::Tcp(s) => s.read_buf(buf).await.map_err(io),
            Self::Unix(s) if !with_fd => s.read_buf(buf).await.map_err(io),
            Self::Unix(socket) => loop {
                socket.readable().await.map_err(io)?;
                match socket.try_io(Interest::READABLE, || recv_with_fd(&*socket, buf)) {
                    Ok((n, received)) => {
                        if received.is_some() {
                            *fd = received;
                        }
                        return Ok(n);
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err(io(e)),
                }
            },
        }
    }

    /// Reads one message.
    async fn read_message(
        &mut self,
        buf: &mut Vec<u8>,
        fd: &mut Option<OwnedFd>,
        with_fd: bool,
    ) -> Result<Message, Exchange> {
        loop {
            match decode(buf, Limits::SERVER_FRAMES) {
                Ok(Some((message, used))) => {
                    buf.drain(..used);
                    return Ok(message);
                }
                Ok(None) => {}
                Err(e) => return Err(Exchange::Failed(Failure::Refused(e.to_string()))),
            }
            if self.read_more(buf, fd, with_fd).await? == 0 {
                return Err(Exchange::Io(if buf.is_empty() {
                    "the server closed the connection".into()
                } else {
                    "connection closed inside a frame".into()
                }));
            }
        }
    }
}

/// An async connection to `flame-stream` for one rank of one job.
#[derive(Debug)]
pub struct AsyncClient {
    endpoint: Endpoint,
    core: ClientCore,
    conn: Option<(Conn, Vec<u8>)>,
    retries: u32,
    ring: Option<RingMap>,
    /// A descriptor received with the bytes read so far: the ring's, with `ShmReady`.
    fd: Option<OwnedFd>,
    /// The job's fingerprint, from the server.
    pub fingerprint: String,
    /// Micro-steps per step for this world size.
    pub micro_steps: u32,
}

impl AsyncClient {
    /// Connects and introduces rank `rank` of `world_size` for `job`; retries `retries` times with
    /// exponential backoff (from 50 ms, at most 2 s apart).
    pub async fn connect(
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
        client.reconnect().await?;
        Ok(client)
    }

    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let mut delay = Duration::from_millis(50);
        let mut last = String::new();
        for attempt in 0..=self.retries {
            if attempt > 0 {
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(2));
            }
            match self.handshake().await {
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
    async fn handshake(&mut self) -> Result<(), Exchange> {
        self.conn = None;
        self.ring = None;
        self.fd = None;
        let conn = Conn::open(&self.endpoint)
            .await
            .map_err(|e| Exchange::Io(e.to_string()))?;
        self.conn = Some((conn, Vec::new()));
        let mut out = Vec::new();
        self.core.connect(&mut out);
        match self.run(&mut out).await {
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
    /// Over TCP, when the server refuses, and when the connection is lost and cannot be made again (then
    /// the next call tries again).
    pub async fn open_shared_memory(&mut self, slots: u32) -> Result<(), ClientError> {
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
            return self.reconnect().await;
        }
        match self.run(&mut out).await {
            Ok(Event::RingReady { .. }) => Ok(()),
            Ok(other) => {
                self.conn = None;
                Err(unexpected(&other).into())
            }
            Err(Exchange::Failed(Failure::Refused(message))) => {
                self.conn = None;
                Err(ClientError::Refused(message))
            }
            Err(Exchange::Failed(Failure::Dropped(_)) | Exchange::Io(_)) => self.reconnect().await,
        }
    }

    /// This rank's samples at (`step`, `micro_step`); reconnects and asks again if the connection drops.
    pub async fn micro_batch(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<Vec<WireSample>, ClientError> {
        if self.core.shm_slots().is_some() {
            let batch = self.micro_batch_in_place(step, micro_step).await?;
            return Ok(batch.to_samples());
        }
        match self.exchange((step, micro_step)).await? {
            Event::Batch(samples) => Ok(samples),
            other => Err(unexpected(&other).into()),
        }
    }

    /// This rank's samples at (`step`, `micro_step`) in the shared-memory ring, read in place; valid until
    /// the next call, which releases the slot.
    ///
    /// # Errors
    /// Without [`AsyncClient::open_shared_memory`], and as [`AsyncClient::micro_batch`].
    pub async fn micro_batch_in_place(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<SlotBatch<'_>, ClientError> {
        if self.core.shm_slots().is_none() {
            return Err(ClientError::Refused(
                "no shared-memory ring: call open_shared_memory first".into(),
            ));
        }
        match self.exchange((step, micro_step)).await? {
            Event::Slot { slot, bytes } => {
                let ring = self.ring.as_ref().ok_or_else(|| {
                    ClientError::Refused("a Slot came before the ring was mapped".into())
                })?;
                ring.slot(slot, bytes).map_err(ClientError::Refused)
            }
            other => Err(unexpected(&other).into()),
        }
    }

    /// Asks for the micro-batch at `at` (with the request for the following one) and returns the answer;
    /// reconnects and asks again when the connection drops.
    async fn exchange(&mut self, at: Position) -> Result<Event, ClientError> {
        for _ in 0..=self.retries {
            if self.conn.is_none() {
                self.reconnect().await?;
            }
            let mut out = Vec::new();
            let answer = match self.core.ask(at, &mut out) {
                Ok(()) => self.run(&mut out).await,
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
    async fn run(&mut self, out: &mut Vec<u8>) -> Result<Event, Exchange> {
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
                .await
                .map_err(|e| Exchange::Io(format!("write: {e}")))?;
            out.clear();
            let message = conn.read_message(buf, fd, core.awaits_ring()).await?;
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
