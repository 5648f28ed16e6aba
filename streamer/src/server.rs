//! The server: listeners on TCP and Unix sockets, one thread per connection, one [`Stream`] per job.
//!
//! A client says `Hello` with its job spec, rank and world size; the server opens (or reuses, by
//! fingerprint) the job's stream and answers `Welcome`; then every `Request` for (step, micro-step) is
//! answered with that rank's `Batch`. A malformed frame, a wrong token or an impossible request gets an
//! `Error` frame and the connection is closed; the server and its other connections carry on. Because a
//! batch is a pure function of the job and (step, micro-step, rank, world size), a client that
//! reconnects — to this server or to a restarted one — simply asks for the step it needs next.
//!
//! No client can crash the server or make it allocate without bound: each session runs in a `tracing`
//! span (endpoint, peer, job, rank) and its errors are logged as well as sent; a panic in one is caught,
//! logged and answered with an `Error` frame, and the connection count is a guard released on unwind.
//! Jobs are opened without blocking other jobs, kept within a memory budget and dropped when idle
//! ([`crate::jobs`]); sessions' rings and prefetched micro-batches are kept within another
//! ([`crate::budget::SessionMemory`]), which clients share; with a data root, jobs may name only files
//! under it ([`crate::data_root`]).

use std::io::Write;
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::RecvTimeoutError;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use rustix::event::{PollFd, PollFlags};

use crate::budget::{
    ByteSize, DEFAULT_MAX_JOB_MEMORY, DEFAULT_MAX_SESSION_MEMORY, Reservation, SessionMemory,
};
use crate::data_root::DataRoot;
use crate::file_cache::FileCache;
use crate::jobs::{Jobs, Lease, Opener};
use crate::metrics::{Metrics, serve_http};
use crate::online::Cursor;
use crate::protocol::{
    END_OF_JOB, Limits, Message, SampleParts, VERSION, batch_frame_bound, decode, encode,
    encode_batch as encode_batch_frame,
};
use crate::shm::{self, MAX_SLOTS, Ring};
use crate::spec::JobSpec;
use crate::stream::{BatchBuffers, Stream, open_datasets};
pub use crate::transport::Endpoint;
use crate::transport::{Connection, read_message, send_with_fd};

/// Connections served at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;
/// Micro-batches prepared ahead per connection by default.
pub const DEFAULT_PREFETCH_DEPTH: usize = 4;
/// How long a job is kept without a session by default: 10 minutes.
pub const DEFAULT_JOB_IDLE: Duration = Duration::from_mins(10);
/// How often a client waiting for a raw dataset's preparation hears how far along it is.
pub const DEFAULT_PROGRESS_EVERY: Duration = Duration::from_secs(5);
/// Bytes of shared memory one client's ring may take: 64 slots of 64 MiB, say.
pub const MAX_RING_BYTES: u64 = 4 << 30;

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
    /// Bytes of state all open jobs may hold together ([`crate::budget`]).
    pub max_job_memory: u64,
    /// Bytes all sessions' rings and prefetched micro-batches may take together
    /// ([`crate::budget::SessionMemory`]).
    pub max_session_memory: u64,
    /// How long a job is kept once its last session has left.
    pub job_idle: Duration,
    /// The directory jobs' datasets must lie under; `None` trusts every client with every file the
    /// server can read.
    pub data_root: Option<PathBuf>,
    /// Where raw datasets are prepared (`streaming = false`) and which jobs share: flame's cache. Streamed
    /// datasets' remote files are fetched into its `stream-files/` ([`FileCache`]).
    pub cache_dir: PathBuf,
    /// How often a client waiting for its job's raw datasets to be prepared is told how far along they
    /// are (`Preparing` frames).
    pub progress_every: Duration,
    /// Bytes the streamed datasets' remote files may take in `cache_dir/stream-files` together.
    pub stream_cache_bytes: u64,
}

/// The default of [`ServerConfig::stream_cache_bytes`]: room for a few of the largest hub parquet files
/// per streaming job.
pub const DEFAULT_STREAM_CACHE_BYTES: ByteSize = ByteSize(32 << 30);

/// The default cache of prepared raw datasets: `$FLAME_CACHE/stream`, else `~/.cache/flame/stream`.
pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("FLAME_CACHE")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|home| PathBuf::from(home).join(".cache/flame")))
        .unwrap_or_else(|| PathBuf::from(".cache/flame"))
        .join("stream")
}

impl Default for ServerConfig {
    /// No endpoints, no token, no metrics, no data root, and the default limits.
    fn default() -> Self {
        Self {
            listen: Vec::new(),
            token: None,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            prefetch_depth: DEFAULT_PREFETCH_DEPTH,
            metrics: None,
            max_job_memory: DEFAULT_MAX_JOB_MEMORY.0,
            max_session_memory: DEFAULT_MAX_SESSION_MEMORY.0,
            job_idle: DEFAULT_JOB_IDLE,
            data_root: None,
            cache_dir: default_cache_dir(),
            progress_every: DEFAULT_PROGRESS_EVERY,
            stream_cache_bytes: DEFAULT_STREAM_CACHE_BYTES.0,
        }
    }
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
    jobs: Jobs,
    metrics: Arc<Metrics>,
    session_memory: SessionMemory,
    max_connections: usize,
    prefetch_depth: usize,
    progress_every: Duration,
}

/// Binds every endpoint and serves each on its own accept thread.
pub fn serve(config: &ServerConfig) -> std::io::Result<Running> {
    let root = config.data_root.as_deref().map(DataRoot::new).transpose()?;
    let cache = config.cache_dir.clone();
    let files = Arc::new(FileCache::new(
        cache.join("stream-files"),
        config.stream_cache_bytes,
    ));
    serve_with(config, |metrics| {
        Box::new(move |spec: &JobSpec| {
            open_datasets(spec, root.as_ref(), (&cache, &files), &metrics)
        })
    })
}

/// [`serve`], opening jobs' datasets with the opener `opener` makes (given the server's metrics).
fn serve_with(
    config: &ServerConfig,
    opener: impl FnOnce(Arc<Metrics>) -> Box<Opener>,
) -> std::io::Result<Running> {
    let metrics = Arc::new(Metrics::default());
    let opener = opener(Arc::clone(&metrics));
    let shared = Arc::new(Shared {
        token: config.token.clone(),
        jobs: Jobs::new(
            opener,
            config.max_job_memory,
            config.job_idle,
            Arc::clone(&metrics),
        ),
        session_memory: SessionMemory::new(config.max_session_memory, Arc::clone(&metrics)),
        metrics,
        max_connections: config.max_connections,
        prefetch_depth: config.prefetch_depth,
        progress_every: config.progress_every,
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
                let bound = Endpoint::Tcp(local.to_string());
                endpoints.push(bound.clone());
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        let _ = stream.set_nodelay(true);
                        let peer = stream
                            .peer_addr()
                            .map_or_else(|e| format!("unknown ({e})"), |a| a.to_string());
                        spawn_connection(&shared, Box::new(stream), &bound, &peer);
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
                let (shared, bound) = (Arc::clone(&shared), endpoint.clone());
                std::thread::spawn(move || {
                    for stream in listener.incoming().flatten() {
                        let peer = rustix::net::sockopt::socket_peercred(&stream).map_or_else(
                            |e| format!("unknown ({e})"),
                            |c| format!("pid {}", c.pid.as_raw_nonzero()),
                        );
                        spawn_connection(&shared, Box::new(stream), &bound, &peer);
                    }
                });
            }
        }
    }
    if !config.job_idle.is_zero() {
        // An idle period of zero needs no sweeps: the last session to leave drops its job.
        let (shared, every) = (Arc::downgrade(&shared), sweep_period(config.job_idle));
        std::thread::spawn(move || sweep_idle_jobs(&shared, every));
    }
    let metrics = config
        .metrics
        .as_deref()
        .map(|addr| serve_http(addr, Arc::clone(&shared.metrics)))
        .transpose()?;
    Ok(Running { endpoints, metrics })
}

/// How often jobs are checked for idleness: a quarter of the idle period, within 1 s to 1 min.
fn sweep_period(idle: Duration) -> Duration {
    (idle / 4).clamp(Duration::from_secs(1), Duration::from_mins(1))
}

/// Drops idle jobs every `every`, for as long as the server is alive.
fn sweep_idle_jobs(shared: &Weak<Shared>, every: Duration) {
    loop {
        std::thread::sleep(every);
        let Some(shared) = shared.upgrade() else {
            return;
        };
        shared.jobs.evict_expired(Instant::now());
    }
}

/// Counts an open connection for as long as it lives, unwinding included.
struct ConnectionCount<'a>(&'a AtomicUsize);

impl<'a> ConnectionCount<'a> {
    /// Counts one more; returns the guard and the count with it.
    fn new(connections: &'a AtomicUsize) -> (Self, usize) {
        let active = connections.fetch_add(1, Ordering::SeqCst) + 1;
        (Self(connections), active)
    }
}

impl Drop for ConnectionCount<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Serves one connection on its own thread. A session's error or panic is logged in the session's span
/// and sent to the client as an `Error` frame; the count of connections drops before the connection
/// closes, so a client that sees the end of the stream sees the count without it.
fn spawn_connection(
    shared: &Arc<Shared>,
    mut conn: Box<dyn Connection>,
    endpoint: &Endpoint,
    peer: &str,
) {
    let shared = Arc::clone(shared);
    let span = tracing::info_span!(
        "session",
        endpoint = %endpoint,
        peer,
        job = tracing::field::Empty,
        rank = tracing::field::Empty,
        world_size = tracing::field::Empty,
    );
    let spawned = std::thread::Builder::new().spawn(move || {
        let _entered = span.enter();
        let (count, active) = ConnectionCount::new(&shared.metrics.connections);
        let result = if active > shared.max_connections {
            Err(format!(
                "too many connections (limit {})",
                shared.max_connections
            ))
        } else {
            std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| session(&shared, &mut conn)))
                .unwrap_or_else(|panic| {
                    let what = panic_message(panic.as_ref());
                    tracing::error!(panic = what, "Session panicked; the server carries on.");
                    Err(format!(
                        "internal server error (logged on the server): {what}"
                    ))
                })
        };
        if let Err(message) = result {
            tracing::warn!(error = %message, "Session ended with an error.");
            let mut out = Vec::new();
            encode(&Message::Error { message }, &mut out);
            let _ = conn.write_all(&out);
        } else {
            tracing::debug!("Session ended.");
        }
        drop(count);
        drop(conn);
    });
    if let Err(e) = spawned {
        // The connection was moved into the closure and is dropped with it: the client sees it close.
        tracing::error!(error = %e, "No thread for a connection; it is closed.");
    }
}

/// What a panic said.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("a panic without a message")
}

/// One client: `Hello`, then requests until it hangs up. An `Err` is sent back as an `Error` frame.
fn session(shared: &Shared, conn: &mut Box<dyn Connection>) -> Result<(), String> {
    let mut buf = Vec::new();
    let (stream, _lease, rank, world_size, micro_steps) = welcome(shared, conn, &mut buf)?;
    let fingerprint = stream.spec().fingerprint();
    let _client = ClientSeen::new(&shared.metrics, &fingerprint, rank);
    let mut session = Session {
        shared,
        stream: &stream,
        fingerprint: &fingerprint,
        shape: (rank, world_size),
        micro_steps: u64::from(micro_steps),
        ring: None,
        ring_reserved: None,
        ahead: Ahead::default(),
        batch: BatchBuffers::default(),
    };
    loop {
        session.prefetch(conn.as_ref(), &buf)?;
        let Some(message) = read_message(conn.as_mut(), &mut buf, Limits::CLIENT_FRAMES)
            .map_err(|e| e.to_string())?
        else {
            return Ok(());
        };
        if let Some(answer) = session.handle(conn.as_ref(), message)? {
            conn.write_all(&answer).map_err(|e| format!("write: {e}"))?;
        }
    }
}

/// A welcomed client's state: its job and place in it, its ring, and what is prepared ahead for it.
struct Session<'a> {
    shared: &'a Shared,
    stream: &'a Stream,
    fingerprint: &'a str,
    /// (rank, world size).
    shape: (u32, u32),
    micro_steps: u64,
    ring: Option<Ring>,
    /// The ring's bytes, of the sessions' budget.
    ring_reserved: Option<Reservation<'a>>,
    ahead: Ahead<'a>,
    /// Where micro-batches are computed, reused.
    batch: BatchBuffers,
}

impl Session<'_> {
    /// Prepares the next micro-batches while the client has nothing waiting, up to the depth (and the
    /// free slots of a ring, and the sessions' memory budget); stops ahead of an error (past the job's
    /// end), sent only if asked for.
    fn prefetch(&mut self, conn: &dyn Connection, buf: &[u8]) -> Result<(), String> {
        while let Some(next) = self.ahead.next
            && self.ahead.queue.len() < self.shared.prefetch_depth
            && self.ahead.queue.back().is_none_or(|(_, b, _)| b.is_ok())
            && !request_waiting(conn, buf)?
        {
            // A slot is the ring's, reserved with it; a frame is reserved at its bound, then its size.
            let mut reserved = None;
            if self.ring.is_none() {
                let bound = batch_frame_bound(
                    self.stream.spec().micro_batch_size,
                    self.stream.tokens_per_sample(),
                );
                let Some(reservation) = self.shared.session_memory.reserve(bound) else {
                    break;
                };
                reserved = Some(reservation);
            }
            let Some(prepared) = self.prepare(next) else {
                break;
            };
            if let (Some(reserved), Ok((Ready::Frame(frame), _))) = (&mut reserved, &prepared) {
                reserved.shrink_to(frame.len() as u64);
            }
            self.ahead.queue.push_back((next, prepared, reserved));
            self.ahead.next = self.advance(next);
            self.shared
                .metrics
                .prefetched(self.fingerprint, self.shape.0, 1, 0);
        }
        Ok(())
    }

    /// Handles one message from the client: the answer to send for a `Request`, nothing for the others.
    fn handle(
        &mut self,
        conn: &dyn Connection,
        message: Message,
    ) -> Result<Option<Vec<u8>>, String> {
        match message {
            Message::Request { step, micro_step } => self.serve((step, micro_step)).map(Some),
            Message::ShmOpen { slots } => {
                // Batches prepared ahead are frames; slots want slot images. What the old ring and
                // they held goes back to the budget first.
                self.ahead = Ahead::default();
                (self.ring, self.ring_reserved) = (None, None);
                let (ring, reserved) =
                    open_ring(conn, self.stream, slots, &self.shared.session_memory)?;
                (self.ring, self.ring_reserved) = (Some(ring), Some(reserved));
                Ok(None)
            }
            Message::Release { slot } => {
                self.ring
                    .as_mut()
                    .ok_or("Release without a shared-memory ring")?
                    .release(slot)?;
                Ok(None)
            }
            Message::Cursors { step, cursors } => {
                let given: Vec<(usize, Cursor)> =
                    cursors.into_iter().map(|(d, c)| (d as usize, c)).collect();
                self.stream.add_cursors(&given);
                let cursors = self
                    .stream
                    .cursors(step)
                    .into_iter()
                    .map(|(d, c)| (u32::try_from(d).expect("few datasets"), c))
                    .collect();
                let mut answer = Vec::new();
                encode(&Message::CursorsAt { step, cursors }, &mut answer);
                Ok(Some(answer))
            }
            other => Err(format!("expected Request, got {}", other.kind())),
        }
    }

    /// The answer for the micro-batch at `at`: from what was prepared ahead when the client asks for
    /// the next micro-batch, as it does in training; any other request starts over from there.
    fn serve(&mut self, at: (u64, u64)) -> Result<Vec<u8>, String> {
        if at.1 >= self.micro_steps {
            return Err(format!(
                "batch shape: micro-step {} is past the {} micro-steps of a step",
                at.1, self.micro_steps
            ));
        }
        self.ahead.asked(at, self.micro_steps);
        let prepared = match self.ahead.queue.front() {
            Some((position, _, _)) if *position == at => {
                self.ahead.queue.pop_front().expect("a front").1
            }
            _ => {
                let discarded = self.ahead.discard(self.ring.as_mut());
                if discarded > 0 {
                    self.shared
                        .metrics
                        .prefetched(self.fingerprint, self.shape.0, 0, discarded);
                }
                self.ahead.next = self.advance(at);
                self.prepare(at).ok_or_else(|| {
                    format!(
                        "the client holds all {} slots; release one before asking for more",
                        self.ring.as_ref().map_or(0, Ring::slots)
                    )
                })?
            }
        };
        let (ready, tokens_per_dataset) = prepared?;
        // Counted before the write, so a client that has its batch sees it in the metrics.
        self.shared.metrics.served(
            self.fingerprint,
            self.shape.0,
            at.0,
            &tokens_per_dataset,
            self.ahead.queue.len(),
        );
        Ok(match ready {
            Ready::Frame(frame) => frame,
            Ready::Slot(slot, bytes) => {
                self.ring
                    .as_mut()
                    .expect("slots come from a ring")
                    .hand_over(slot);
                let mut frame = Vec::new();
                let (step, micro_step) = at;
                encode(
                    &Message::Slot {
                        step,
                        micro_step,
                        slot,
                        bytes,
                    },
                    &mut frame,
                );
                frame
            }
        })
    }

    /// [`prepare`] for this client.
    fn prepare(&mut self, at: (u64, u64)) -> Option<Prepared> {
        prepare(
            self.stream,
            at,
            self.shape,
            self.ring.as_mut(),
            &mut self.batch,
        )
    }

    /// The position the client will ask for after `at`: [`Ahead::stride`] micro-batches on; none past
    /// the last step there is.
    fn advance(&self, at: (u64, u64)) -> Option<(u64, u64)> {
        let position = linear(at, self.micro_steps) + u128::from(self.ahead.stride);
        let micro_steps = u128::from(self.micro_steps);
        let step = u64::try_from(position / micro_steps).ok()?;
        Some((
            step,
            u64::try_from(position % micro_steps).expect("below micro_steps"),
        ))
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

/// What `welcome` hands the session: the job's stream and the lease that keeps it open, the rank, the
/// world size, and the micro-steps of a step.
type Welcomed<'a> = (Arc<Stream>, Lease<'a>, u32, u32, u32);

/// Reads `Hello`, checks it, and answers `Welcome`.
fn welcome<'a>(
    shared: &'a Shared,
    conn: &mut Box<dyn Connection>,
    buf: &mut Vec<u8>,
) -> Result<Welcomed<'a>, String> {
    let Some(Message::Hello {
        version,
        token,
        job,
        rank,
        world_size,
    }) = read_message(conn.as_mut(), buf, Limits::CLIENT_FRAMES).map_err(|e| e.to_string())?
    else {
        return Err("expected Hello".into());
    };
    let span = tracing::Span::current();
    span.record("rank", rank);
    span.record("world_size", world_size);
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
    span.record("job", spec.fingerprint());
    let progress = (spec.has_raw_datasets() && !spec.streaming)
        .then(|| PreparationProgress::start(shared, conn.as_ref(), &spec))
        .transpose()?;
    let joined = shared.jobs.join(spec);
    if let Some(progress) = progress {
        progress.stop();
    }
    let (stream, lease) = joined.map_err(|e| e.to_string())?;
    // Checked first: it proves micro_batch_size × world_size divides global_batch_size.
    stream
        .micro_batch_indices(0, 0, rank, world_size)
        .map_err(|e| e.to_string())?;
    let g = stream.spec().global_batch_size;
    let micro_steps = g / (stream.spec().micro_batch_size * world_size);
    let mut out = Vec::new();
    encode(
        &Message::Welcome {
            version: VERSION,
            fingerprint: stream.spec().fingerprint(),
            seq_len: stream.tokens_per_sample(),
            micro_steps,
        },
        &mut out,
    );
    conn.write_all(&out).map_err(|e| format!("write: {e}"))?;
    tracing::debug!("Welcomed.");
    Ok((stream, lease, rank, world_size, micro_steps))
}

/// While a job's raw datasets are prepared, a thread that tells the waiting client how far along they
/// are: a `Preparing` frame per dataset being prepared, every [`ServerConfig::progress_every`], on a
/// duplicate of the client's socket (the session's thread is inside [`Jobs::join`] meanwhile and writes
/// nothing until [`PreparationProgress::stop`] returns).
struct PreparationProgress {
    stop: std::sync::mpsc::Sender<()>,
    thread: std::thread::JoinHandle<()>,
}

impl PreparationProgress {
    fn start(shared: &Shared, conn: &dyn Connection, spec: &JobSpec) -> Result<Self, String> {
        let socket = conn
            .as_fd()
            .try_clone_to_owned()
            .map_err(|e| format!("duplicate the socket: {e}"))?;
        let mut socket = std::fs::File::from(socket);
        let datasets: Vec<String> = spec
            .datasets
            .iter()
            .filter(|d| d.dataset.is_some())
            .map(|d| d.label().to_owned())
            .collect();
        let metrics = Arc::clone(&shared.metrics);
        let every = shared.progress_every;
        let (stop, stopped) = std::sync::mpsc::channel();
        let thread = std::thread::spawn(move || {
            let mut frames = Vec::new();
            while let Err(RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                frames.clear();
                for (dataset, p) in metrics.preparations() {
                    if datasets.contains(&dataset) {
                        let message = Message::Preparing {
                            dataset,
                            input_bytes: p.input_bytes,
                            total_bytes: p.total_bytes,
                        };
                        encode(&message, &mut frames);
                    }
                }
                // A client that left is the session's to notice once the job is open.
                if socket.write_all(&frames).is_err() {
                    return;
                }
            }
        });
        Ok(Self { stop, thread })
    }

    /// Stops the thread and waits for it: no frame of it follows.
    fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.thread.join();
    }
}

/// Creates a client's ring, its bytes reserved of the sessions' `memory`, and sends it over the Unix
/// socket with `ShmReady`.
fn open_ring<'a>(
    conn: &dyn Connection,
    stream: &Stream,
    slots: u32,
    memory: &'a SessionMemory,
) -> Result<(Ring, Reservation<'a>), String> {
    let socket = conn.as_unix().ok_or("shared memory needs a Unix socket")?;
    if slots == 0 || slots > MAX_SLOTS {
        return Err(format!("a ring of {slots} slots: ask for 1..={MAX_SLOTS}"));
    }
    let bytes = shm::slot_bytes(stream.spec().micro_batch_size, stream.tokens_per_sample());
    let ring_bytes = u64::from(slots) * bytes;
    if ring_bytes > MAX_RING_BYTES {
        return Err(format!(
            "a ring of {slots} slots of {} is {}, more than the {} a client may hold: ask for fewer slots",
            ByteSize(bytes),
            ByteSize(ring_bytes),
            ByteSize(MAX_RING_BYTES)
        ));
    }
    let reserved = memory.reserve(ring_bytes).ok_or_else(|| {
        format!(
            "a ring of {slots} slots of {} is {}, more than the sessions' buffers have left: {} of {} (serve --max-session-memory) are held; ask for fewer slots, or read batches over the socket",
            ByteSize(bytes),
            ByteSize(ring_bytes),
            ByteSize(memory.held_bytes()),
            ByteSize(memory.budget_bytes())
        )
    })?;
    let ring = Ring::create(slots, bytes).map_err(|e| format!("shared memory: {e}"))?;
    let mut frame = Vec::new();
    encode(
        &Message::ShmReady {
            slots,
            slot_bytes: bytes,
        },
        &mut frame,
    );
    send_with_fd(socket, &frame, ring.fd()).map_err(|e| format!("write: {e}"))?;
    Ok((ring, reserved))
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
///
/// They are the ones the client will ask for next if it goes on as its last two requests went: a
/// trainer asks for every micro-batch in turn (a stride of 1), a `DataLoader` worker of `W` for every
/// `W`-th (a stride of `W`, its own read-ahead included).
struct Ahead<'a> {
    /// (step, micro-step), its batch, and the bytes its frame holds of the sessions' budget.
    queue: std::collections::VecDeque<((u64, u64), Prepared, Option<Reservation<'a>>)>,
    /// The next position to prepare; `None` until the first request.
    next: Option<(u64, u64)>,
    /// The last request, as a micro-batch position ([`linear`]).
    last_asked: Option<u128>,
    /// Micro-batches between the last two requests; 1 without two requests in increasing order.
    stride: u64,
}

impl Default for Ahead<'_> {
    fn default() -> Self {
        Self {
            queue: std::collections::VecDeque::new(),
            next: None,
            last_asked: None,
            stride: 1,
        }
    }
}

impl Ahead<'_> {
    /// The client asked for `at`: the stride is the distance from its last request, when it went
    /// forward (by at most `u64::MAX` micro-batches), else 1.
    fn asked(&mut self, at: (u64, u64), micro_steps: u64) {
        let position = linear(at, micro_steps);
        self.stride = self
            .last_asked
            .and_then(|last| position.checked_sub(last))
            .and_then(|gap| u64::try_from(gap).ok())
            .filter(|&gap| gap > 0)
            .unwrap_or(1);
        self.last_asked = Some(position);
    }

    /// Throws away what was prepared, freeing its slots; returns how many micro-batches were.
    fn discard(&mut self, ring: Option<&mut Ring>) -> u64 {
        let mut ring = ring;
        let discarded = self.queue.len() as u64;
        for (_, prepared, _) in self.queue.drain(..) {
            if let (Ok((Ready::Slot(slot, _), _)), Some(ring)) = (prepared, ring.as_deref_mut()) {
                ring.discard(slot);
            }
        }
        discarded
    }
}

/// Micro-batch `(step, micro_step)`'s place in the job's sequence of micro-batches.
fn linear((step, micro_step): (u64, u64), micro_steps: u64) -> u128 {
    u128::from(step) * u128::from(micro_steps) + u128::from(micro_step)
}

/// The refusal of micro-batch `(step, micro_step)` when the job does not have it for every rank (the
/// last rank's samples lie past the job's end): [`END_OF_JOB`] and why.
fn end_of_job(stream: &Stream, (step, micro_step): (u64, u64), world_size: u32) -> Option<String> {
    let num_samples = stream.num_samples()?;
    let last_rank = stream
        .micro_batch_indices(step, micro_step, world_size.checked_sub(1)?, world_size)
        .ok()?;
    (last_rank.end > num_samples).then(|| {
        format!(
            "{END_OF_JOB}micro-batch ({step}, {micro_step}) of {world_size} ranks ends at sample {}, past the job's {num_samples} samples",
            last_rank.end
        )
    })
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
    if let Some(end) = end_of_job(stream, (step, micro_step), world_size) {
        return Some(Err(end));
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raw::{hello, http_get, metric, raw_exchange};
    use crate::spec::Order;

    /// `Hello` for `spec` as rank 0 of 1, then a request for the first micro-batch.
    fn hello_and_request(spec: &JobSpec) -> Vec<u8> {
        let mut bytes = hello(spec);
        encode(
            &Message::Request {
                step: 0,
                micro_step: 0,
            },
            &mut bytes,
        );
        bytes
    }

    #[test]
    fn a_panicking_session_is_answered_and_uncounted_and_the_others_carry_on() {
        let dir = tempfile::tempdir().unwrap();
        let running = serve_with(
            &ServerConfig {
                listen: vec![Endpoint::Unix(dir.path().join("s.sock"))],
                metrics: Some("127.0.0.1:0".into()),
                ..ServerConfig::default()
            },
            // Job 13 hits a bug while it is being opened (once under the server-wide lock).
            |_| {
                Box::new(|spec: &JobSpec| {
                    assert!(spec.seed != 13, "a bug in opening job 13");
                    let docs: Vec<Vec<u32>> = (0..20u32).map(|d| vec![d; 9]).collect();
                    Ok(vec![crate::stream::Dataset::Prepared(Box::new(docs))])
                })
            },
        )
        .unwrap();
        let Endpoint::Unix(socket) = &running.endpoints[0] else {
            panic!()
        };
        let metrics = running.metrics.unwrap();
        for _ in 0..2 {
            let answer = raw_exchange(
                socket,
                &hello_and_request(&JobSpec::for_test(13, Order::Flame, &[1.0], None)),
            );
            let [Message::Error { message }] = answer.as_slice() else {
                panic!("{answer:?}")
            };
            assert!(
                message.contains("internal server error")
                    && message.contains("a bug in opening job 13"),
                "{message}"
            );
            // Counted out before the connection closed; the job that never opened is not kept.
            assert_eq!(
                metric(&http_get(metrics, "/metrics"), "flame_stream_connections "),
                0
            );
            assert_eq!(
                metric(&http_get(metrics, "/metrics"), "flame_stream_jobs "),
                0
            );
        }
        // Every other job is served as before: nothing was poisoned.
        let answer = raw_exchange(
            socket,
            &hello_and_request(&JobSpec::for_test(1, Order::Flame, &[1.0], None)),
        );
        assert!(
            matches!(
                answer.as_slice(),
                [Message::Welcome { .. }, Message::Batch { .. }]
            ),
            "{answer:?}"
        );
        assert_eq!(
            metric(&http_get(metrics, "/metrics"), "flame_stream_connections "),
            0
        );
    }

    #[test]
    fn the_prefetch_stride_is_the_gap_between_the_last_two_requests_forward_else_one() {
        let mut ahead = Ahead::default();
        let micro_steps = 4;
        let mut strides = Vec::new();
        // First; 3 on (across a step); 3 on; back; the same again; u64::MAX steps on.
        for at in [(0, 1), (1, 0), (1, 3), (0, 0), (0, 0), (u64::MAX, 3)] {
            ahead.asked(at, micro_steps);
            strides.push(ahead.stride);
        }
        assert_eq!(
            strides,
            [1, 3, 3, 1, 1, 1],
            "a gap past u64::MAX falls back to 1"
        );
    }

    #[test]
    fn jobs_are_swept_every_quarter_idle_period_within_a_second_and_a_minute() {
        assert_eq!(sweep_period(Duration::from_secs(1)), Duration::from_secs(1));
        assert_eq!(
            sweep_period(Duration::from_mins(1)),
            Duration::from_secs(15)
        );
        assert_eq!(sweep_period(DEFAULT_JOB_IDLE), Duration::from_mins(1));
    }
}
