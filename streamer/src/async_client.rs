//! The async Rust client (tokio): the protocol and behaviour of [`crate::client::Client`] for input
//! pipelines that run on an async runtime. It reconnects with backoff and asks again for the batch it
//! was waiting for, reads ahead, checks every answer's position, and on a Unix socket reads batches in
//! place from a shared-memory ring. What to send, what the answers mean and which failures are worth
//! another try is the same sans-IO [`ClientCore`] the blocking client drives; only the reads and writes
//! differ.

use std::os::fd::OwnedFd;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

use crate::client::{map_ring, map_slot, not_unix};
use crate::client_core::{
    Attempts, ClientCore, ClientError, Event, Exchange, Opening, Position,
    check_shared_memory_endpoint,
};
use crate::protocol::{Limits, Message, WireSample};
use crate::shm::{RingMap, SlotBatch};
use crate::spec::JobSpec;
use crate::transport::{Endpoint, ReadError, end_of_stream, recv_with_fd, take_message};

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
        let io = |e: std::io::Error| Exchange::from(ReadError::Io(e));
        buf.reserve(64 << 10);
        match self {
            Self::Tcp(_) if with_fd => Err(not_unix()),
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

    /// Reads one message; `Ok(None)` at a clean end of the stream.
    async fn read_message(
        &mut self,
        buf: &mut Vec<u8>,
        fd: &mut Option<OwnedFd>,
        with_fd: bool,
    ) -> Result<Option<Message>, Exchange> {
        loop {
            if let Some(message) =
                take_message(buf, Limits::SERVER_FRAMES).map_err(ReadError::from)?
            {
                return Ok(Some(message));
            }
            if self.read_more(buf, fd, with_fd).await? == 0 {
                return Ok(end_of_stream(buf)?);
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
    /// Tokens in every sample the server sends: the job's `seq_len`, or `seq_len + 1` in Megatron's
    /// order (inputs `[:-1]`, labels `[1:]`), so a trainer can check its sample length before step 1.
    pub tokens_per_sample: u32,
}

impl AsyncClient {
    /// Connects and introduces rank `rank` of `world_size` for `job`; retries `retries` times with
    /// exponential backoff ([`crate::client_core::Backoff`]).
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
            tokens_per_sample: 0,
        };
        client.reconnect().await?;
        Ok(client)
    }

    async fn reconnect(&mut self) -> Result<(), ClientError> {
        let mut attempts = Attempts::connecting(self.retries);
        while let Some(pause) = attempts.next_try() {
            tokio::time::sleep(pause).await;
            match self.handshake().await {
                Ok(()) => return Ok(()),
                Err(failure) => attempts.failed(failure)?,
            }
        }
        Err(attempts.exhausted(&self.endpoint))
    }

    /// Opens a connection, says `Hello` and, with shared memory on, maps the new ring.
    async fn handshake(&mut self) -> Result<(), Exchange> {
        (self.conn, self.ring, self.fd) = (None, None, None);
        let conn = Conn::open(&self.endpoint)
            .await
            .map_err(Exchange::io("connect"))?;
        self.conn = Some((conn, Vec::new()));
        let mut out = Vec::new();
        self.core.connect(&mut out);
        self.run(&mut out).await?.into_welcome()?;
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
    /// Over TCP, when the server refuses, and when the connection is lost and cannot be made again (then
    /// the next call tries again).
    pub async fn open_shared_memory(&mut self, slots: u32) -> Result<(), ClientError> {
        check_shared_memory_endpoint(&self.endpoint)?;
        let mut out = Vec::new();
        if self.core.open_shared_memory(slots, &mut out) == Opening::Send {
            match self
                .run(&mut out)
                .await
                .and_then(|event| Ok(event.into_ring()?))
            {
                Ok(()) => return Ok(()),
                Err(failure) => failure.retry().map(drop)?,
            }
        }
        // No connection of use, or it was lost: a new one opens the ring.
        self.reconnect().await
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
        Ok(self.exchange((step, micro_step)).await?.into_batch()?)
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
        self.core.check_ring()?;
        let (slot, bytes) = self.exchange((step, micro_step)).await?.into_slot()?;
        map_slot(self.ring.as_ref(), slot, bytes)
    }

    /// Asks for the micro-batch at `at` (with the request for the following one) and returns the answer;
    /// reconnects and asks again when the connection drops.
    async fn exchange(&mut self, at: Position) -> Result<Event, ClientError> {
        let mut attempts = Attempts::asking(self.retries);
        while attempts.next_try().is_some() {
            if !self.core.is_ready() {
                self.reconnect().await?;
            }
            let mut out = Vec::new();
            let answer = match self.core.ask(at, &mut out) {
                Ok(()) => self.run(&mut out).await,
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
    async fn run(&mut self, out: &mut Vec<u8>) -> Result<Event, Exchange> {
        let result = self.run_on_connection(out).await;
        if result.is_err() {
            self.conn = None;
            self.core.disconnect();
        }
        result
    }

    async fn run_on_connection(&mut self, out: &mut Vec<u8>) -> Result<Event, Exchange> {
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
            conn.write_all(out).await.map_err(Exchange::io("write"))?;
            out.clear();
            let message = conn.read_message(buf, fd, core.awaits_ring()).await?;
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
