//! The async Rust client (tokio): the protocol and behaviour of [`crate::client::Client`] for input
//! pipelines that run on an async runtime. It reconnects with backoff and asks again for the batch it
//! was waiting for, and on a Unix socket reads batches in place from a shared-memory ring. The frames
//! are parsed by the same sans-IO [`decode`] as everywhere else; only the reads and writes differ.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, Interest};
use tokio::net::{TcpStream, UnixStream};

use crate::client::{ClientError, hello_frame};
use crate::protocol::{Limits, Message, WireSample, decode, encode};
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

    /// Appends what arrives to `buf`; 0 at the end of the stream.
    async fn read_more(&mut self, buf: &mut Vec<u8>) -> std::io::Result<usize> {
        buf.reserve(64 << 10);
        match self {
            Self::Tcp(s) => s.read_buf(buf).await,
            Self::Unix(s) => s.read_buf(buf).await,
        }
    }

    /// Reads one message; `Ok(None)` at a clean end of stream.
    async fn read_message(&mut self, buf: &mut Vec<u8>) -> Result<Option<Message>, String> {
        loop {
            if let Some((message, used)) =
                decode(buf, Limits::SERVER_FRAMES).map_err(|e| e.to_string())?
            {
                buf.drain(..used);
                return Ok(Some(message));
            }
            if self
                .read_more(buf)
                .await
                .map_err(|e| format!("read: {e}"))?
                == 0
            {
                return if buf.is_empty() {
                    Ok(None)
                } else {
                    Err("connection closed inside a frame".into())
                };
            }
        }
    }

    /// `ShmOpen`, then `ShmReady` and the ring's descriptor, mapped read-only.
    async fn open_ring(&mut self, buf: &mut Vec<u8>, slots: u32) -> Result<RingMap, String> {
        let mut frame = Vec::new();
        encode(&Message::ShmOpen { slots }, &mut frame);
        self.write_all(&frame)
            .await
            .map_err(|e| format!("write: {e}"))?;
        let Self::Unix(socket) = self else {
            return Err("shared memory needs a Unix socket".into());
        };
        let mut fd = None;
        loop {
            if let Some((message, used)) =
                decode(buf, Limits::SERVER_FRAMES).map_err(|e| e.to_string())?
            {
                buf.drain(..used);
                return match (message, fd) {
                    (Message::ShmReady { slots, slot_bytes }, Some(fd)) => {
                        RingMap::open(fd, slots, slot_bytes).map_err(|e| e.to_string())
                    }
                    (Message::Error { message }, _) => Err(message),
                    (other, _) => Err(format!(
                        "expected ShmReady with the ring's descriptor, got {}",
                        other.kind()
                    )),
                };
            }
            socket.readable().await.map_err(|e| e.to_string())?;
            let received = socket.try_io(Interest::READABLE, || recv_with_fd(&*socket, buf));
            match received {
                Ok((0, _)) => return Err("connection closed before ShmReady".into()),
                Ok((_, Some(received))) => fd = Some(received),
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    }
}

/// An async connection to `flame-stream` for one rank of one job.
#[derive(Debug)]
pub struct AsyncClient {
    endpoint: Endpoint,
    hello: Vec<u8>,
    conn: Option<(Conn, Vec<u8>)>,
    retries: u32,
    shm_slots: Option<u32>,
    ring: Option<RingMap>,
    held: Option<u32>,
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
        let hello = hello_frame(job, rank, world_size, token);
        let mut client = Self {
            endpoint,
            hello,
            conn: None,
            retries,
            shm_slots: None,
            ring: None,
            held: None,
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
                Err(Err(refused)) => return Err(ClientError::Refused(refused)),
                Err(Ok(io)) => last = io,
            }
        }
        Err(ClientError::Unreachable {
            endpoint: self.endpoint.to_string(),
            reason: last,
        })
    }

    /// `Err(Ok(_))`: worth retrying; `Err(Err(_))`: refused.
    async fn handshake(&mut self) -> Result<(), Result<String, String>> {
        let mut conn = Conn::open(&self.endpoint)
            .await
            .map_err(|e| Ok(e.to_string()))?;
        conn.write_all(&self.hello)
            .await
            .map_err(|e| Ok(e.to_string()))?;
        let mut buf = Vec::new();
        match conn.read_message(&mut buf).await {
            Ok(Some(Message::Welcome {
                fingerprint,
                micro_steps,
                ..
            })) => {
                self.fingerprint = fingerprint;
                self.micro_steps = micro_steps;
                self.ring = None;
                self.held = None;
                if let Some(slots) = self.shm_slots {
                    self.ring = Some(conn.open_ring(&mut buf, slots).await.map_err(Err)?);
                }
                self.conn = Some((conn, buf));
                Ok(())
            }
            Ok(Some(Message::Error { message })) => Err(Err(message)),
            Ok(other) => Err(Err(format!("expected Welcome, got {other:?}"))),
            Err(reason) => Err(Ok(reason)),
        }
    }

    /// Switches this connection (and every reconnection) to a shared-memory ring of `slots` slots.
    ///
    /// # Errors
    /// Over TCP, or when the server refuses.
    pub async fn open_shared_memory(&mut self, slots: u32) -> Result<(), ClientError> {
        if !matches!(self.endpoint, Endpoint::Unix(_)) {
            return Err(ClientError::Refused(format!(
                "{}: shared memory needs a unix:// endpoint",
                self.endpoint
            )));
        }
        self.shm_slots = Some(slots);
        let (conn, buf) = self.conn.as_mut().expect("connected");
        self.ring = Some(
            conn.open_ring(buf, slots)
                .await
                .map_err(ClientError::Refused)?,
        );
        Ok(())
    }

    /// This rank's samples at (`step`, `micro_step`); reconnects and asks again if the connection drops.
    pub async fn micro_batch(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<Vec<WireSample>, ClientError> {
        if self.shm_slots.is_some() {
            let batch = self.micro_batch_in_place(step, micro_step).await?;
            return Ok(batch.to_samples());
        }
        match self.exchange(step, micro_step).await? {
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
    /// Without [`AsyncClient::open_shared_memory`], and as [`AsyncClient::micro_batch`].
    pub async fn micro_batch_in_place(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<SlotBatch<'_>, ClientError> {
        if self.shm_slots.is_none() {
            return Err(ClientError::Refused(
                "no shared-memory ring: call open_shared_memory first".into(),
            ));
        }
        match self.exchange(step, micro_step).await? {
            Message::Slot { slot, bytes, .. } => {
                self.held = Some(slot);
                let ring = self
                    .ring
                    .as_ref()
                    .expect("a ring comes with every connection");
                ring.slot(slot, bytes).map_err(ClientError::Refused)
            }
            other => Err(ClientError::Refused(format!(
                "expected Slot, got {}",
                other.kind()
            ))),
        }
    }

    async fn exchange(&mut self, step: u64, micro_step: u64) -> Result<Message, ClientError> {
        for _ in 0..=self.retries {
            if self.conn.is_none() {
                self.reconnect().await?;
            }
            let mut request = Vec::new();
            if let Some(slot) = self.held.take() {
                encode(&Message::Release { slot }, &mut request);
            }
            encode(&Message::Request { step, micro_step }, &mut request);
            let (conn, buf) = self.conn.as_mut().expect("connected");
            let answer = match conn.write_all(&request).await {
                Ok(()) => conn.read_message(buf).await,
                Err(e) => Err(e.to_string()),
            };
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
}
