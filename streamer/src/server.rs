//! The server: listeners on TCP and Unix sockets, one thread per connection, one [`Stream`] per job.
//!
//! A client says `Hello` with its job spec, rank and world size; the server opens (or reuses, by
//! fingerprint) the job's stream and answers `Welcome`; then every `Request` for (step, micro-step) is
//! answered with that rank's `Batch`. A malformed frame, a wrong token or an impossible request gets an
//! `Error` frame and the connection is closed; the server and its other connections carry on. Because a
//! batch is a pure function of the job and (step, micro-step, rank, world size), a client that
//! reconnects — to this server or to a restarted one — simply asks for the step it needs next.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};

use rustix::event::{PollFd, PollFlags};
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

use crate::metrics::{Metrics, serve_http};
use crate::protocol::{
    Limits, Message, SampleParts, VERSION, decode, encode, encode_batch as encode_batch_frame,
};
use crate::shm::{self, MAX_SLOTS, Ring};
use crate::spec::JobSpec;
use crate::stream::{BatchBuffers, Stream};

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

/// Server settings.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    /// Endpoints to listen on; TCP port 0 picks a free port.
    pub listen: Vec<Endpoint>,
    /// The shared token clients must present; required for a non-loopback TCP bind.
    pub token: Option<String>,
    /// Connections served at once; more are refused with an error frame.
    pub max_connections: usize,
    /// Micro-batches computed ahead per connection, on its own thread.
    pub prefetch_depth: usize,
    /// `HOST:PORT` for `/metrics`, `/healthz` and the status page; none by default.
    pub metrics: Option<String>,
}

/// A running server: its bound endpoints. It serves until the process ends.
#[derive(Debug)]
pub struct Running {
    /// The endpoints actually bound (TCP with the real port).
    pub endpoints: Vec<Endpoint>,
    /// The metrics listener's address, if any.
    pub metrics: Option<SocketAddr>,
}

struct Shared {
    token: Option<String>,
    jobs: Mutex<HashMap<String, Arc<Stream>>>,
    metrics: Arc<Metrics>,
    max_connections: usize,
    prefetch_depth: usize,
}

/// Binds every endpoint and serves each on its own accept thread.
pub fn serve(config: &ServerConfig) -> std::io::Result<Running> {
    let shared = Arc::new(Shared {
        token: config.token.clone(),
        jobs: Mutex::new(HashMap::new()),
        metrics: Arc::new(Metrics::default()),
        max_connections: config.max_connections,
        prefetch_depth: config.prefetch_depth,
    });
    let mut endpoints = Vec::new();
    for endpoint in &config.listen {
        match endpoint {
            Endpoint::Tcp(addr) => {
                let listener = TcpListener::bind(addr)?;
                let local: SocketAddr = listener.local_addr()?;
                if !local.ip().is_loopback() && config.token.is_none() {
                    return Err(std::io::Error::other(format!(
                        "{endpoint}: a non-loopback address needs --token"
                    )));
                }
                endpoints.push(Endpoint::Tcp(local.to_string()));
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        let _ = stream.set_nodelay(true);
                        spawn_connection(&shared, Box::new(stream));
                    }
                });
            }
            Endpoint::Unix(path) => {
                // A socket file left by a killed server is stale: nothing listens on it any more.
                if path.exists() && UnixStream::connect(path).is_err() {
                    std::fs::remove_file(path)?;
                }
                let listener = UnixListener::bind(path)?;
                endpoints.push(endpoint.clone());
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        spawn_connection(&shared, Box::new(stream));
                    }
                });
            }
        }
    }
    let metrics = config
        .metrics
        .as_deref()
        .map(|addr| serve_http(addr, Arc::clone(&shared.metrics)))
        .transpose()?;
    Ok(Running { endpoints, metrics })
}

fn spawn_connection(shared: &Arc<Shared>, mut conn: Box<dyn Connection>) {
    let shared = Arc::clone(shared);
    std::thread::spawn(move || {
        let active = shared.metrics.connections.fetch_add(1, Ordering::SeqCst) + 1;
        let result = if active > shared.max_connections {
            Err(format!(
                "too many connections (limit {})",
                shared.max_connections
            ))
        } else {
            session(&shared, &mut conn)
        };
        if let Err(message) = result {
            let mut out = Vec::new();
            encode(&Message::Error { message }, &mut out);
            let _ = conn.write_all(&out);
        }
        shared.metrics.connections.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Reads one message; `Ok(None)` at a clean end of stream.
pub(crate) fn read_message(
    conn: &mut dyn Connection,
    buf: &mut Vec<u8>,
    limits: Limits,
) -> Result<Option<Message>, String> {
    loop {
        match decode(buf, limits) {
            Ok(Some((message, used))) => {
                buf.drain(..used);
                return Ok(Some(message));
            }
            Ok(None) => {}
            Err(e) => return Err(e.to_string()),
        }
        // Read what the frame still needs (at least a page, at most 4 MiB), so small messages do not pay
        // for zeroing a large buffer.
        let filled = buf.len();
        let want = match buf.get(..4) {
            Some(h) => (4 + u32::from_le_bytes(h.try_into().expect("4 bytes")) as usize)
                .saturating_sub(filled),
            None => 0,
        };
        buf.resize(filled + want.clamp(4096, 4 << 20), 0);
        let n = conn
            .read(&mut buf[filled..])
            .map_err(|e| format!("read: {e}"));
        buf.truncate(filled + *n.as_ref().unwrap_or(&0));
        let n = n?;
        if n == 0 {
            return if buf.is_empty() {
                Ok(None)
            } else {
                Err("connection closed inside a frame".into())
            };
        }
    }
}

/// One client: `Hello`, then requests until it hangs up. An `Err` is sent back as an `Error` frame.
fn session(shared: &Shared, conn: &mut Box<dyn Connection>) -> Result<(), String> {
    let mut buf = Vec::new();
    let (stream, rank, world_size) = welcome(shared, conn, &mut buf)?;
    let g = stream.spec().global_batch_size;
    let per_micro_step = stream.spec().micro_batch_size * world_size.max(1);
    let fingerprint = stream.spec().fingerprint();
    let _client = ClientSeen::new(&shared.metrics, &fingerprint, rank);
    let micro_steps = u64::from(g / per_micro_step);
    let advance = |(step, micro_step): (u64, u64)| {
        if micro_step + 1 == micro_steps {
            (step + 1, 0)
        } else {
            (step, micro_step + 1)
        }
    };
    let mut ahead = Ahead::default();
    let mut ring: Option<Ring> = None;
    let mut batch = BatchBuffers::default();
    let shape = (rank, world_size);
    loop {
        // Prepare the next micro-batches while the client has nothing waiting, up to the depth (and the
        // free slots of a ring); stop ahead of an error (past the job's end), sent only if asked for.
        while let Some(next) = ahead.next
            && ahead.queue.len() < shared.prefetch_depth
            && ahead.queue.back().is_none_or(|(_, b)| b.is_ok())
            && !request_waiting(conn.as_ref(), &buf)?
        {
            let Some(prepared) = prepare(&stream, next, shape, ring.as_mut(), &mut batch) else {
                break;
            };
            ahead.queue.push_back((next, prepared));
            ahead.next = Some(advance(next));
        }
        let Some(message) = read_message(conn.as_mut(), &mut buf, Limits::CLIENT_FRAMES)? else {
            return Ok(());
        };
        let at = match message {
            Message::Request { step, micro_step } => (step, micro_step),
            Message::ShmOpen { slots } => {
                ring = Some(open_ring(conn.as_ref(), &stream, slots)?);
                // Batches prepared ahead are frames; slots want slot images.
                ahead = Ahead::default();
                continue;
            }
            Message::Release { slot } => {
                ring.as_mut()
                    .ok_or("Release without a shared-memory ring")?
                    .release(slot)?;
                continue;
            }
            other => return Err(format!("expected Request, got {}", other.kind())),
        };
        if at.1 >= micro_steps {
            return Err(format!(
                "batch shape: micro-step {} is past the {micro_steps} micro-steps of a step",
                at.1
            ));
        }
        // Served from what was prepared ahead when the client asks for the next micro-batch, as it
        // does in training; any other request starts over from there.
        let prepared = match ahead.queue.front() {
            Some((position, _)) if *position == at => ahead.queue.pop_front().expect("a front").1,
            _ => {
                ahead.discard(ring.as_mut());
                ahead.next = Some(advance(at));
                prepare(&stream, at, shape, ring.as_mut(), &mut batch).ok_or_else(|| {
                    format!(
                        "the client holds all {} slots; release one before asking for more",
                        ring.as_ref().map_or(0, Ring::slots)
                    )
                })?
            }
        };
        let (ready, tokens_per_dataset) = prepared?;
        // Counted before the write, so a client that has its batch sees it in the metrics.
        shared.metrics.served(
            &fingerprint,
            rank,
            at.0,
            &tokens_per_dataset,
            ahead.queue.len(),
        );
        let frame = match ready {
            Ready::Frame(frame) => frame,
            Ready::Slot(slot, bytes) => {
                ring.as_mut()
                    .expect("slots come from a ring")
                    .hand_over(slot);
                let mut frame = Vec::new();
                encode(
                    &Message::Slot {
                        step: at.0,
                        micro_step: at.1,
                        slot,
                        bytes,
                    },
                    &mut frame,
                );
                frame
            }
        };
        conn.write_all(&frame).map_err(|e| format!("write: {e}"))?;
    }
}

/// Whether the client has sent something not yet handled: a whole message in `buf`, or bytes on the
/// socket.
fn request_waiting(conn: &dyn Connection, buf: &[u8]) -> Result<bool, String> {
    if matches!(decode(buf, Limits::CLIENT_FRAMES), Ok(Some(_)) | Err(_)) {
        return Ok(true);
    }
    let fd = conn.as_fd();
    let mut fds = [PollFd::new(&fd, PollFlags::IN)];
    let zero = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    rustix::event::poll(&mut fds, Some(&zero))
        .map(|n| n > 0)
        .map_err(|e| format!("poll: {e}"))
}

/// Reads `Hello`, checks it, and answers `Welcome`: the job's stream, the rank and the world size.
fn welcome(
    shared: &Shared,
    conn: &mut Box<dyn Connection>,
    buf: &mut Vec<u8>,
) -> Result<(Arc<Stream>, u32, u32), String> {
    let Some(Message::Hello {
        version,
        token,
        job,
        rank,
        world_size,
    }) = read_message(conn.as_mut(), buf, Limits::CLIENT_FRAMES)?
    else {
        return Err("expected Hello".into());
    };
    if version != VERSION {
        return Err(format!(
            "protocol version {version}; this server speaks {VERSION}"
        ));
    }
    if let Some(expected) = &shared.token
        && token != expected.as_bytes()
    {
        return Err("wrong token".into());
    }
    let spec = JobSpec::from_toml(&job).map_err(|e| e.to_string())?;
    let stream = job_stream(shared, spec)?;
    let g = stream.spec().global_batch_size;
    let per_micro_step = stream.spec().micro_batch_size * world_size.max(1);
    stream
        .micro_batch_indices(0, 0, rank, world_size)
        .map_err(|e| e.to_string())?;
    let mut out = Vec::new();
    encode(
        &Message::Welcome {
            version: VERSION,
            fingerprint: stream.spec().fingerprint(),
            seq_len: stream.tokens_per_sample(),
            micro_steps: g / per_micro_step,
        },
        &mut out,
    );
    conn.write_all(&out).map_err(|e| format!("write: {e}"))?;
    Ok((stream, rank, world_size))
}

/// Creates a client's ring and sends it over the Unix socket with `ShmReady`.
fn open_ring(conn: &dyn Connection, stream: &Stream, slots: u32) -> Result<Ring, String> {
    let socket = conn.as_unix().ok_or("shared memory needs a Unix socket")?;
    if slots == 0 || slots > MAX_SLOTS {
        return Err(format!("a ring of {slots} slots: ask for 1..={MAX_SLOTS}"));
    }
    let bytes = shm::slot_bytes(stream.spec().micro_batch_size, stream.tokens_per_sample());
    let ring = Ring::create(slots, bytes).map_err(|e| format!("shared memory: {e}"))?;
    let mut frame = Vec::new();
    encode(
        &Message::ShmReady {
            slots,
            slot_bytes: bytes,
        },
        &mut frame,
    );
    shm::send_with_fd(socket, &frame, ring.fd()).map_err(|e| format!("write: {e}"))?;
    Ok(ring)
}

/// Counts a connected client of a rank for as long as it lives.
struct ClientSeen<'a> {
    metrics: &'a Metrics,
    fingerprint: &'a str,
    rank: u32,
}

impl<'a> ClientSeen<'a> {
    fn new(metrics: &'a Metrics, fingerprint: &'a str, rank: u32) -> Self {
        metrics.client(fingerprint, rank, true);
        Self {
            metrics,
            fingerprint,
            rank,
        }
    }
}

impl Drop for ClientSeen<'_> {
    fn drop(&mut self) {
        self.metrics.client(self.fingerprint, self.rank, false);
    }
}

/// A micro-batch ready for the client: a `Batch` frame, or (slot, bytes) of its ring.
enum Ready {
    Frame(Vec<u8>),
    Slot(u32, u64),
}

/// A prepared micro-batch and its tokens per dataset, or why it cannot be served.
type Prepared = Result<(Ready, Vec<u64>), String>;

/// Micro-batches of one connection prepared ahead, in order, by the connection's own thread while
/// the client is busy with the last one (no thread hand-off per batch).
#[derive(Default)]
struct Ahead {
    /// (step, micro-step) and its batch.
    queue: std::collections::VecDeque<((u64, u64), Prepared)>,
    /// The next position to prepare; `None` until the first request.
    next: Option<(u64, u64)>,
}

impl Ahead {
    /// Throws away what was prepared, freeing its slots.
    fn discard(&mut self, ring: Option<&mut Ring>) {
        let mut ring = ring;
        for (_, prepared) in self.queue.drain(..) {
            if let (Ok((Ready::Slot(slot, _), _)), Some(ring)) = (prepared, ring.as_deref_mut()) {
                ring.discard(slot);
            }
        }
    }
}

/// Computes rank `rank`'s micro-batch at `at` into `batch` and packages it: into a free slot of `ring`
/// (`None` when none is free), or as a `Batch` frame.
fn prepare(
    stream: &Stream,
    (step, micro_step): (u64, u64),
    (rank, world_size): (u32, u32),
    ring: Option<&mut Ring>,
    batch: &mut BatchBuffers,
) -> Option<Prepared> {
    if ring.as_ref().is_some_and(|r| r.all_held()) {
        return None;
    }
    if let Err(e) = stream.micro_batch_into((step, micro_step), (rank, world_size), batch) {
        return Some(Err(e.to_string()));
    }
    let t = batch.tokens_per_sample();
    let mut tokens_per_dataset = vec![0u64; stream.spec().datasets.len()];
    for &(_, dataset, _) in &batch.samples {
        tokens_per_dataset[dataset as usize] += t as u64;
    }
    if let Some(ring) = ring {
        return match ring.prepare((step, micro_step), batch) {
            Ok(Some((slot, bytes))) => Some(Ok((Ready::Slot(slot, bytes), tokens_per_dataset))),
            Ok(None) => None,
            Err(e) => Some(Err(e)),
        };
    }
    let mut cu = 0;
    let parts: Vec<SampleParts<'_>> = batch
        .samples
        .iter()
        .enumerate()
        .map(|(i, &(index, dataset, count))| {
            let cu_seqlens = &batch.cu_seqlens[cu..cu + count as usize];
            cu += count as usize;
            (
                dataset,
                index,
                cu_seqlens,
                &batch.tokens[i * t..(i + 1) * t],
            )
        })
        .collect();
    let mut out = Vec::new();
    encode_batch_frame(step, micro_step, &parts, &mut out);
    Some(Ok((Ready::Frame(out), tokens_per_dataset)))
}

/// The job's stream, opened once per fingerprint and shared by all its ranks.
fn job_stream(shared: &Shared, spec: JobSpec) -> Result<Arc<Stream>, String> {
    let fingerprint = spec.fingerprint();
    let mut jobs = shared.jobs.lock().expect("not poisoned");
    if let Some(stream) = jobs.get(&fingerprint) {
        return Ok(Arc::clone(stream));
    }
    let stream = Arc::new(Stream::open(spec).map_err(|e| e.to_string())?);
    jobs.insert(fingerprint, Arc::clone(&stream));
    Ok(stream)
}
