//! The Rust client: connect, say `Hello`, ask for micro-batches. It reconnects with backoff when the
//! connection drops (a server restart included) and asks again for the batch it was waiting for, which a
//! restarted server serves identically.

use std::io::Write;
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::protocol::{Limits, Message, VERSION, WireSample, encode};
use crate::server::{Connection, Endpoint, read_message};
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
        let mut client = Self {
            endpoint,
            hello,
            conn: None,
            retries,
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

    /// This rank's samples at (`step`, `micro_step`); reconnects and asks again if the connection drops.
    pub fn micro_batch(
        &mut self,
        step: u64,
        micro_step: u64,
    ) -> Result<Vec<WireSample>, ClientError> {
        let mut request = Vec::new();
        encode(&Message::Request { step, micro_step }, &mut request);
        // A server that accepts, then drops the connection before answering, gets as many tries as a
        // server that cannot be reached; then the last failure is returned.
        for _ in 0..=self.retries {
            if self.conn.is_none() {
                self.reconnect()?;
            }
            let (conn, buf) = self.conn.as_mut().expect("connected");
            let answer = conn
                .write_all(&request)
                .map_err(|e| e.to_string())
                .and_then(|()| read_message(conn.as_mut(), buf, Limits::SERVER_FRAMES));
            match answer {
                Ok(Some(Message::Batch { samples, .. })) => return Ok(samples),
                Ok(Some(Message::Error { message })) => return Err(ClientError::Refused(message)),
                Ok(Some(other)) => {
                    return Err(ClientError::Refused(format!(
                        "expected Batch, got {other:?}"
                    )));
                }
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

enum Handshake {
    Refused(String),
    Io(String),
}
