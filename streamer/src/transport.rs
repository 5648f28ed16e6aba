//! Frames over sockets, for the server and the clients alike: where to listen or connect ([`Endpoint`]),
//! the byte streams under it ([`Connection`]), reading one message off a stream ([`read_message`]), and
//! the file descriptor a shared-memory ring travels as ([`send_with_fd`], [`recv_with_fd`]).
//!
//! What a frame holds is [`crate::protocol`]'s; this module only moves bytes. [`take_message`] is the
//! sans-IO step every reader shares (the async client's included): a whole message out of the bytes
//! received so far, or `None` when more are needed.

use std::io::{IoSlice, IoSliceMut, Read, Write};
use std::mem::MaybeUninit;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;

use rustix::net::{
    RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, SendAncillaryBuffer,
    SendAncillaryMessage, SendFlags,
};

use crate::protocol::{Limits, Message, ProtocolError, decode};

/// Where to listen or connect: `tcp://HOST:PORT` or `unix:///PATH`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(String),
    /// A Unix socket path.
    Unix(PathBuf),
}

impl std::str::FromStr for Endpoint {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Some(addr) = s.strip_prefix("tcp://") {
            Ok(Self::Tcp(addr.to_owned()))
        } else if let Some(path) = s.strip_prefix("unix://") {
            Ok(Self::Unix(PathBuf::from(path)))
        } else {
            Err(format!("{s:?}: expected tcp://HOST:PORT or unix:///PATH"))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(addr) => write!(f, "tcp://{addr}"),
            Self::Unix(path) => write!(f, "unix://{}", path.display()),
        }
    }
}

impl Endpoint {
    /// Connects to the endpoint (TCP without Nagle's delay: frames are small and answered at once).
    ///
    /// # Errors
    /// When nothing listens there, or the socket fails.
    pub fn connect(&self) -> std::io::Result<Box<dyn Connection>> {
        Ok(match self {
            Self::Tcp(addr) => {
                let stream = TcpStream::connect(addr)?;
                stream.set_nodelay(true)?;
                Box::new(stream)
            }
            Self::Unix(path) => Box::new(UnixStream::connect(path)?),
        })
    }
}

/// A byte stream to a peer.
pub trait Connection: Read + Write + Send + AsFd {
    /// The Unix socket underneath, which can carry file descriptors (shared memory).
    fn as_unix(&self) -> Option<&UnixStream> {
        None
    }
}
impl Connection for TcpStream {}
impl Connection for UnixStream {
    fn as_unix(&self) -> Option<&UnixStream> {
        Some(self)
    }
}

/// Why no message could be read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("read: {0}")]
    Io(#[from] std::io::Error),
    /// The peer hung up part-way through a frame.
    #[error("connection closed inside a frame")]
    Truncated,
    /// The peer sent a frame that breaks the protocol.
    #[error(transparent)]
    Protocol(#[from] ProtocolError),
}

/// Takes the first whole message out of `buf`; `Ok(None)` while `buf` holds less than a frame.
///
/// # Errors
/// When the frame breaks the protocol (too large, malformed).
pub fn take_message(buf: &mut Vec<u8>, limits: Limits) -> Result<Option<Message>, ProtocolError> {
    Ok(decode(buf, limits)?.map(|(message, used)| {
        buf.drain(..used);
        message
    }))
}

/// What the end of the stream means with `buf` left over: a clean end between frames (`Ok(None)`), or
/// [`ReadError::Truncated`].
pub fn end_of_stream(buf: &[u8]) -> Result<Option<Message>, ReadError> {
    if buf.is_empty() {
        Ok(None)
    } else {
        Err(ReadError::Truncated)
    }
}

/// Reads one message, keeping what arrives after it in `buf` for the next; `Ok(None)` at a clean end of
/// the stream.
///
/// # Errors
/// When the socket fails, the peer hangs up inside a frame, or the frame breaks the protocol.
pub fn read_message(
    conn: &mut dyn Connection,
    buf: &mut Vec<u8>,
    limits: Limits,
) -> Result<Option<Message>, ReadError> {
    read_message_with(buf, limits, |buf| read_some(conn, buf))
}

/// [`read_message`] on a Unix socket, keeping the descriptor that comes with the bytes (the ring's, with
/// `ShmReady`) in `fd`.
///
/// # Errors
/// As [`read_message`].
pub fn read_message_and_fd(
    socket: &UnixStream,
    buf: &mut Vec<u8>,
    fd: &mut Option<OwnedFd>,
    limits: Limits,
) -> Result<Option<Message>, ReadError> {
    read_message_with(buf, limits, |buf| {
        let (n, received) = recv_with_fd(socket, buf)?;
        if received.is_some() {
            *fd = received;
        }
        Ok(n)
    })
}

/// Takes messages out of `buf`, appending more bytes with `read_more` (0 at the end of the stream) until
/// a whole one is there.
fn read_message_with(
    buf: &mut Vec<u8>,
    limits: Limits,
    mut read_more: impl FnMut(&mut Vec<u8>) -> std::io::Result<usize>,
) -> Result<Option<Message>, ReadError> {
    loop {
        if let Some(message) = take_message(buf, limits)? {
            return Ok(Some(message));
        }
        if read_more(buf)? == 0 {
            return end_of_stream(buf);
        }
    }
}

/// Appends what the frame at the start of `buf` still needs (at least a page, at most 4 MiB, so small
/// messages do not pay for zeroing a large buffer); returns the bytes read, 0 at the end of the stream.
fn read_some(conn: &mut dyn Connection, buf: &mut Vec<u8>) -> std::io::Result<usize> {
    let filled = buf.len();
    let want = match buf.get(..4) {
        Some(h) => {
            (4 + u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize).saturating_sub(filled)
        }
        None => 0,
    };
    buf.resize(filled + want.clamp(4096, 4 << 20), 0);
    let n = conn.read(&mut buf[filled..]);
    buf.truncate(filled + *n.as_ref().unwrap_or(&0));
    n
}

/// Sends `bytes` with `fd` attached (`SCM_RIGHTS`).
///
/// # Errors
/// When the socket fails.
pub fn send_with_fd(socket: &UnixStream, bytes: &[u8], fd: BorrowedFd<'_>) -> std::io::Result<()> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    let fds = [fd];
    control.push(SendAncillaryMessage::ScmRights(&fds));
    let sent = rustix::net::sendmsg(
        socket,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )?;
    std::io::Write::write_all(&mut &*socket, &bytes[sent..])
}

/// Receives some bytes into `buf` and the descriptor that came with them, if any (`None` for the
/// descriptor when none came; `Ok(0)` bytes at the end of the stream).
///
/// # Errors
/// When the socket fails.
pub fn recv_with_fd(
    socket: impl AsFd,
    buf: &mut Vec<u8>,
) -> std::io::Result<(usize, Option<OwnedFd>)> {
    let mut space = [MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let mut chunk = vec![0u8; 64 << 10];
    let received = rustix::net::recvmsg(
        socket,
        &mut [IoSliceMut::new(&mut chunk)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    buf.extend_from_slice(&chunk[..received.bytes]);
    let mut fd = None;
    for message in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = message {
            for received in fds {
                fd.get_or_insert(received);
            }
        }
    }
    Ok((received.bytes, fd))
}
