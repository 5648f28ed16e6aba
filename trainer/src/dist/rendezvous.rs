//! The rendezvous: every rank connects to rank 0 over TCP and proves it belongs to the job (`handshake`),
//! rank 0 hands out its bootstrap bytes, and the connections stay up as the run's [`Group`].
//!
//! **Retries.** A rank tries again, with a back-off of 50 ms doubling to 1 s, whenever an attempt fails
//! on the network: rank 0 not listening yet, a connection refused, reset or closed, one attempt taking
//! longer than [`ATTEMPT_TIMEOUT`]. Only its deadline, or a rank 0 that does not prove it holds the
//! secret, ends it. Rank 0 gives the place of a rank that comes back to its new connection once the old
//! one is closed; two live connections that prove the same rank are an error of the launch.
//!
//! **Floods.** Whoever reaches rank 0's port can open connections, so rank 0 bounds what each costs:
//! it keeps at most [`MAX_PENDING`] handshakes going (fewer under a low open-file limit), each a socket and
//! about 200 bytes; a connection must send its whole hello within [`HELLO_TIMEOUT`] of being accepted and
//! its proof within [`PROOF_TIMEOUT`] of the challenge; past the cap it drops first the connections that
//! have sent nothing, then those with part of a hello, then those it has challenged, the oldest first in
//! each. A rank sends its hello as it connects and its proof one round trip after the challenge, so
//! connections that only hold a place are dropped before it; a rank dropped anyway tries again. Rank 0
//! logs the first [`MAX_DROPS_LOGGED`] connections it drops and then only counts them.
//!
//! **Limits.** The secret keeps a stranger from taking a rank's place or reading the bootstrap, but not
//! from slowing the rendezvous: one who opens connections faster than rank 0 accepts them fills the
//! kernel's accept queue (128), and the ranks' connects wait; one who sends well-formed hellos (the
//! protocol is public) on [`MAX_PENDING`] new connections within a round trip of a rank's challenge drops
//! that rank's handshake. Each costs rank 0 an HMAC and 64 bytes sent; kept up until the deadline, either
//! fails the rendezvous. Against those, only the network helps: let only the job's hosts reach the port.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::handshake::{self, Admission, HandshakeError, Progress, prove_membership};
use super::{Launch, SECRET_VAR, Secret, SecretSource, is_loopback};

/// The most bootstrap bytes a rank accepts from rank 0 (NCCL's unique id is 128).
const MAX_BOOTSTRAP_BYTES: usize = 1024;

/// How long a rank's attempt may take to connect, and then to finish its handshake, before it tries again.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(5);

/// A rank's first pause between attempts; it doubles up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(50);

/// A rank's longest pause between attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// How long rank 0 waits, from accepting a connection, for its whole hello (a rank sends it at once).
const HELLO_TIMEOUT: Duration = Duration::from_secs(2);

/// How long rank 0 waits, from its challenge, for the proof (a rank's takes one round trip).
const PROOF_TIMEOUT: Duration = Duration::from_secs(5);

/// The most handshakes rank 0 keeps going at once, unless the open-file limit is low ([`max_pending`]).
const MAX_PENDING: usize = 512;

/// How many dropped connections rank 0 logs one by one.
const MAX_DROPS_LOGGED: usize = 16;

/// The processes of a run, every rank connected to rank 0.
#[derive(Debug)]
pub struct Group {
    rank: u32,
    world_size: u32,
    /// Rank 0: the connection of rank `r` at `r - 1`; the others: their connection to rank 0.
    links: Vec<TcpStream>,
}

fn io_error(what: &str, e: &std::io::Error) -> String {
    format!("{what}: {e}")
}

/// Connects the ranks of `launch` (rank 0 listens at the master's port, the others connect to it, all
/// within `timeout`) and returns the group with rank 0's `bootstrap` bytes, which only rank 0 computes.
///
/// Rank 0 listens on loopback when the master's address is loopback, else on all interfaces. Each
/// connection must prove it holds `launch.secret` (`dist/handshake.rs`); rank 0 drops, and logs to
/// stderr, one that does not or that is too slow, and goes on waiting for the ranks. A rank retries
/// until `timeout` on any network failure (see the module docs).
pub fn rendezvous(
    launch: &Launch,
    timeout: Duration,
    bootstrap: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<(Group, Vec<u8>), String> {
    if launch.rank != 0 {
        return join(launch, timeout);
    }
    let (host, port) = launch
        .master
        .rsplit_once(':')
        .and_then(|(host, port)| Some((host, port.parse::<u16>().ok()?)))
        .ok_or_else(|| format!("rendezvous address {:?} has no port", launch.master))?;
    let interface = if is_loopback(host) {
        "127.0.0.1"
    } else {
        "0.0.0.0"
    };
    let listener = TcpListener::bind((interface, port))
        .map_err(|e| io_error(&format!("rendezvous: listening on port {port}"), &e))?;
    host_rendezvous(&listener, launch, timeout, max_pending(), bootstrap)
}

/// [`MAX_PENDING`], or a quarter of the open-file limit if that is less (at least 16), so that a flood
/// cannot take the process's last file descriptors.
fn max_pending() -> usize {
    use rustix::process::{Resource, getrlimit};
    getrlimit(Resource::Nofile)
        .current
        .map_or(MAX_PENDING, |n| {
            usize::try_from(n / 4)
                .unwrap_or(usize::MAX)
                .clamp(16, MAX_PENDING)
        })
}

/// Why an attempt to join failed.
enum Failure {
    /// The network: worth another attempt.
    Retry(String),
    /// Nothing another attempt would change.
    Fatal(String),
}

/// A rank's side of [`rendezvous`]: connects to rank 0, proves itself, waits for the bootstrap, and
/// tries again on network failures until the deadline.
fn join(launch: &Launch, timeout: Duration) -> Result<(Group, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let addresses: Vec<_> = launch
        .master
        .to_socket_addrs()
        .map_err(|e| io_error(&format!("rendezvous: resolving {}", launch.master), &e))?
        .collect();
    let mut backoff = FIRST_BACKOFF;
    let mut has_connected = false;
    loop {
        let why = match attempt(launch, &addresses, deadline, &mut has_connected) {
            Ok(joined) => return Ok(joined),
            Err(Failure::Fatal(e)) => return Err(e),
            Err(Failure::Retry(why)) => why,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            let seconds = timeout.as_secs_f64();
            return Err(if has_connected {
                format!(
                    "rendezvous: no complete handshake with rank 0 at {} within {seconds:.1} s (the \
                     last attempt: {why})",
                    launch.master
                )
            } else {
                format!(
                    "rendezvous: rank 0 did not answer at {} within {seconds:.1} s (is it running? \
                     {why})",
                    launch.master
                )
            });
        }
        std::thread::sleep(backoff.min(left));
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One attempt of [`join`]; sets `has_connected` once a connection is made.
fn attempt(
    launch: &Launch,
    addresses: &[SocketAddr],
    deadline: Instant,
    has_connected: &mut bool,
) -> Result<(Group, Vec<u8>), Failure> {
    let left = || {
        deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1))
    };
    let mut last_error = None;
    let mut link = addresses
        .iter()
        .find_map(|a| {
            TcpStream::connect_timeout(a, left().min(ATTEMPT_TIMEOUT))
                .map_err(|e| last_error = Some(e))
                .ok()
        })
        .ok_or_else(|| {
            Failure::Retry(
                last_error.map_or_else(|| "no address".into(), |e| format!("connecting: {e}")),
            )
        })?;
    *has_connected = true;
    let handshake_time = left().min(ATTEMPT_TIMEOUT);
    link.set_nodelay(true)
        .and_then(|()| link.set_read_timeout(Some(handshake_time)))
        .and_then(|()| link.set_write_timeout(Some(handshake_time)))
        .map_err(|e| Failure::Fatal(io_error("rendezvous", &e)))?;
    prove_membership(&mut link, launch.rank, launch.world_size, &launch.secret).map_err(
        |e| match e {
            HandshakeError::Impostor => Failure::Fatal(format!(
                "rendezvous: the process at {} did not prove it holds this job's secret (is \
                 {SECRET_VAR} the same for every rank?)",
                launch.master
            )),
            HandshakeError::Io(e) => Failure::Retry(format!("the handshake failed: {e}")),
            HandshakeError::Local(e) => Failure::Fatal(format!("rendezvous: {e}")),
        },
    )?;
    // Admitted, unless rank 0 dropped the connection before it read the proof (then it is closed).
    link.set_read_timeout(Some(left()))
        .map_err(|e| Failure::Fatal(io_error("rendezvous", &e)))?;
    let payload = read_frame(&mut link, MAX_BOOTSTRAP_BYTES).map_err(|e| match e.kind() {
        ErrorKind::WouldBlock | ErrorKind::TimedOut => Failure::Fatal(format!(
            "rendezvous: no bootstrap from rank 0 at {} by the deadline ({e}): did every rank arrive?",
            launch.master
        )),
        ErrorKind::InvalidData => Failure::Fatal(format!(
            "rendezvous: the bootstrap from rank 0 at {}: {e}",
            launch.master
        )),
        _ => Failure::Retry(format!(
            "rank 0 closed the connection before the bootstrap ({e})"
        )),
    })?;
    link.set_read_timeout(None)
        .and_then(|()| link.set_write_timeout(None))
        .map_err(|e| Failure::Fatal(io_error("rendezvous", &e)))?;
    Ok((
        Group {
            rank: launch.rank,
            world_size: launch.world_size,
            links: vec![link],
        },
        payload,
    ))
}

/// Rank 0's side of [`rendezvous`] on `listener`: admits every other rank, then sends them the bootstrap.
///
/// The handshakes go on side by side (one `poll` over the listener and every pending connection), so a
/// connection that sends nothing, or sends it slowly, delays no one; at most `max_pending` go on at once
/// (see the module docs for which are dropped past it).
fn host_rendezvous(
    listener: &TcpListener,
    launch: &Launch,
    timeout: Duration,
    max_pending: usize,
    bootstrap: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<(Group, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let world = launch.world_size;
    warn_if_weak(&launch.secret, &launch.master);
    listener
        .set_nonblocking(true)
        .map_err(|e| io_error("rendezvous", &e))?;
    let mut host = Host {
        secret: &launch.secret,
        world,
        links: (1..world).map(|_| None).collect(),
        lobby: Vec::new(),
        max_pending,
        num_dropped: 0,
    };
    let admitted = host.admit_all(listener, launch, timeout, deadline);
    if host.num_dropped > MAX_DROPS_LOGGED {
        eprintln!(
            "flame-train: rendezvous: dropped {} connections in all",
            host.num_dropped
        );
    }
    admitted?;
    drop(host.lobby);
    let payload = bootstrap()?;
    if payload.len() > MAX_BOOTSTRAP_BYTES {
        return Err(format!(
            "rendezvous: a bootstrap of {} bytes (at most {MAX_BOOTSTRAP_BYTES})",
            payload.len()
        ));
    }
    let mut links: Vec<TcpStream> = host.links.into_iter().flatten().collect();
    for link in &mut links {
        link.set_nodelay(true)
            .and_then(|()| write_frame(link, &payload))
            .map_err(|e| io_error("rendezvous: sending the bootstrap", &e))?;
    }
    Ok((
        Group {
            rank: 0,
            world_size: world,
            links,
        },
        payload,
    ))
}

/// Rank 0 during the rendezvous.
struct Host<'a> {
    secret: &'a Secret,
    world: u32,
    /// The connection of rank `r` at `r - 1`, once it has proved itself.
    links: Vec<Option<TcpStream>>,
    /// The handshakes going on, in the order they were accepted.
    lobby: Vec<Admission>,
    max_pending: usize,
    num_dropped: usize,
}

impl Host<'_> {
    /// Runs the handshakes until every rank has its place.
    fn admit_all(
        &mut self,
        listener: &TcpListener,
        launch: &Launch,
        timeout: Duration,
        deadline: Instant,
    ) -> Result<(), String> {
        while !self.has_every_rank() {
            let now = Instant::now();
            if now >= deadline {
                let missing: Vec<String> = (1..self.world)
                    .filter(|r| self.links[*r as usize - 1].is_none())
                    .map(|r| r.to_string())
                    .collect();
                return Err(format!(
                    "rendezvous on {}: rank(s) {} of {} did not arrive within {:.1} s",
                    launch.master,
                    missing.join(", "),
                    self.world,
                    timeout.as_secs_f64()
                ));
            }
            for admission in std::mem::take(&mut self.lobby) {
                if expires(&admission) > now {
                    self.lobby.push(admission);
                } else {
                    let why = match admission.progress().0 {
                        Progress::Challenged => "no proof in time",
                        Progress::Silent | Progress::PartHello => "no hello in time",
                    };
                    self.log_dropped(&admission, why);
                }
            }
            let is_ready = wait_for_news(listener, &self.lobby, deadline)?;
            // The handshakes under way first, so that a rank's proof is read before new connections
            // can push it out; in the order of acceptance, which a rank that comes back relies on.
            let now = Instant::now();
            for (admission, is_ready) in std::mem::take(&mut self.lobby).into_iter().zip(is_ready) {
                if is_ready {
                    self.advance(admission, now)?;
                } else {
                    self.lobby.push(admission);
                }
            }
            self.accept_pending(listener)?;
        }
        Ok(())
    }

    /// Whether every rank has its place on a connection that is still open. A rank whose connection
    /// closed after it was admitted is coming back (it retries), so its place is freed for it.
    fn has_every_rank(&mut self) -> bool {
        if self.links.iter().any(Option::is_none) {
            return false;
        }
        for (slot, rank) in self.links.iter_mut().zip(1..) {
            if slot.as_ref().is_some_and(has_closed) {
                eprintln!(
                    "flame-train: rendezvous: rank {rank}'s connection closed before the bootstrap; \
                     waiting for it to come back"
                );
                *slot = None;
            }
        }
        self.links.iter().all(Option::is_some)
    }

    /// Starts a handshake with the connections waiting on `listener` (at most `max_pending` at a time,
    /// so that a flood cannot keep rank 0 from the others).
    fn accept_pending(&mut self, listener: &TcpListener) -> Result<(), String> {
        let is_out_of_files = |e: &std::io::Error| {
            [rustix::io::Errno::MFILE, rustix::io::Errno::NFILE]
                .iter()
                .any(|errno| e.raw_os_error() == Some(errno.raw_os_error()))
        };
        for _ in 0..self.max_pending {
            let (stream, peer) = match listener.accept() {
                Ok(accepted) => accepted,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(()),
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::Interrupted | ErrorKind::ConnectionAborted
                    ) =>
                {
                    continue;
                }
                // The connection waits in the queue while a pending one makes room.
                Err(e) if is_out_of_files(&e) && !self.lobby.is_empty() => {
                    self.evict("no file descriptor left");
                    continue;
                }
                Err(e) => return Err(io_error("rendezvous: accepting a connection", &e)),
            };
            if self.lobby.len() >= self.max_pending {
                self.evict("too many handshakes at once");
            }
            stream
                .set_nonblocking(true)
                .map_err(|e| io_error("rendezvous", &e))?;
            let now = Instant::now();
            // Its hello is often there already: then it is challenged, and outlasts a flood.
            self.advance(Admission::new(stream, peer, now)?, now)?;
        }
        Ok(())
    }

    /// Takes what `admission`'s peer has sent: keeps it pending, admits its rank, or drops it.
    fn advance(&mut self, mut admission: Admission, now: Instant) -> Result<(), String> {
        match admission.advance(self.secret, now) {
            Ok(None) => self.lobby.push(admission),
            Ok(Some(hello)) => {
                let peer = admission.peer;
                self.admit(hello, peer, admission.into_stream())?;
            }
            Err(why) => self.log_dropped(&admission, &why),
        }
        Ok(())
    }

    /// Drops the least advanced pending connection, the oldest of those.
    fn evict(&mut self, why: &str) {
        let victim = (0..self.lobby.len())
            .min_by_key(|&i| self.lobby[i].progress())
            .expect("the lobby is not empty");
        let admission = self.lobby.remove(victim);
        self.log_dropped(&admission, why);
    }

    /// Gives an authenticated rank its place. A claim that does not fit this run comes from a rank of
    /// this job (it holds the secret), so it is the launch that is wrong: an error. So is a second live
    /// connection for one rank; one whose earlier connection has closed is coming back.
    fn admit(
        &mut self,
        hello: handshake::Hello,
        peer: SocketAddr,
        stream: TcpStream,
    ) -> Result<(), String> {
        let (rank, world) = (hello.rank, self.world);
        if hello.world_size != world || rank == 0 || rank >= world {
            return Err(format!(
                "rendezvous: a process says it is rank {rank} of {}; this run has {world}",
                hello.world_size
            ));
        }
        stream
            .set_nonblocking(false)
            .map_err(|e| io_error("rendezvous", &e))?;
        let slot = &mut self.links[rank as usize - 1];
        if let Some(earlier) = slot {
            if !has_closed(earlier) {
                return Err(format!("rendezvous: rank {rank} arrived twice"));
            }
            eprintln!(
                "flame-train: rendezvous: rank {rank} came back from {peer}; its earlier connection \
                 had closed"
            );
        }
        *slot = Some(stream);
        Ok(())
    }

    fn log_dropped(&mut self, admission: &Admission, why: &str) {
        self.num_dropped += 1;
        if self.num_dropped <= MAX_DROPS_LOGGED {
            eprintln!(
                "flame-train: rendezvous: dropped the connection from {}: {why}",
                admission.peer
            );
        }
        if self.num_dropped == MAX_DROPS_LOGGED {
            eprintln!("flame-train: rendezvous: (further drops are only counted)");
        }
    }
}

/// When rank 0 gives up on a pending handshake.
fn expires(admission: &Admission) -> Instant {
    match admission.progress() {
        (Progress::Challenged, since) => since + PROOF_TIMEOUT,
        (Progress::Silent | Progress::PartHello, _) => admission.accepted + HELLO_TIMEOUT,
    }
}

/// Whether an admitted rank's connection has been closed (or broken) by its end. A rank sends nothing
/// between its proof and the bootstrap, so anything to read is the end of the stream or an error.
fn has_closed(link: &TcpStream) -> bool {
    use rustix::net::{RecvFlags, recv};
    match recv(
        link,
        &mut [0u8; 1][..],
        RecvFlags::PEEK | RecvFlags::DONTWAIT,
    ) {
        Ok((n, _)) => n == 0,
        Err(e) => e != rustix::io::Errno::AGAIN && e != rustix::io::Errno::INTR,
    }
}

/// Says on stderr whom a secret that was not chosen for the job lets in.
fn warn_if_weak(secret: &Secret, master: &str) {
    match secret.source() {
        SecretSource::Chosen => {}
        SecretSource::JobId(name) => eprintln!(
            "flame-train: rendezvous: the ranks authenticate with {name}, which others may read; set \
             {SECRET_VAR} to a random value to keep out anyone who can reach {master}"
        ),
        SecretSource::Absent => eprintln!(
            "flame-train: rendezvous: no {SECRET_VAR}: any process on this host can join as a rank"
        ),
    }
}

/// Waits until the listener or a pending connection may have news, or the first handshake or the
/// rendezvous runs out of time. Returns, for each pending connection, whether it has news.
fn wait_for_news(
    listener: &TcpListener,
    lobby: &[Admission],
    deadline: Instant,
) -> Result<Vec<bool>, String> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let until = lobby.iter().map(expires).fold(deadline, Instant::min);
    let left = until.saturating_duration_since(Instant::now());
    let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(listener, PollFlags::IN))
        .chain(lobby.iter().map(|a| PollFd::new(a.stream(), PollFlags::IN)))
        .collect();
    let timeout = Timespec {
        tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(left.subsec_nanos()),
    };
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => {
            Ok(fds[1..].iter().map(|fd| !fd.revents().is_empty()).collect())
        }
        Err(e) => Err(format!("rendezvous: waiting for the ranks: {e}")),
    }
}

fn write_frame(link: &mut TcpStream, bytes: &[u8]) -> std::io::Result<()> {
    let len = u64::try_from(bytes.len()).expect("lengths fit u64");
    link.write_all(&len.to_le_bytes())?;
    link.write_all(bytes)
}

/// Reads a frame (its length, `u64` little-endian, then its bytes) of at most `max_bytes`, the most the
/// caller expects: a longer length is an error before anything is allocated.
fn read_frame(link: &mut TcpStream, max_bytes: usize) -> std::io::Result<Vec<u8>> {
    let mut len = [0u8; 8];
    link.read_exact(&mut len)?;
    let len = u64::from_le_bytes(len);
    let len = usize::try_from(len)
        .ok()
        .filter(|&len| len <= max_bytes)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::InvalidData,
                format!("the peer announced a frame of {len} bytes, at most {max_bytes} expected"),
            )
        })?;
    let mut bytes = vec![0u8; len];
    link.read_exact(&mut bytes)?;
    Ok(bytes)
}

/// Reads a frame of exactly `num_bytes` (the ranks disagree on the size otherwise).
fn read_exact_frame(link: &mut TcpStream, num_bytes: usize) -> std::io::Result<Vec<u8>> {
    let bytes = read_frame(link, num_bytes)?;
    if bytes.len() != num_bytes {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!(
                "ranks disagree on the size: {} bytes, {num_bytes} expected",
                bytes.len()
            ),
        ));
    }
    Ok(bytes)
}

impl Group {
    /// This process's rank.
    pub fn rank(&self) -> u32 {
        self.rank
    }

    /// Number of processes.
    pub fn world_size(&self) -> u32 {
        self.world_size
    }

    /// Averages `values` element-wise over the ranks, in place: rank 0 adds the ranks' values in rank
    /// order and sends the mean back, so every rank gets the same bits. Each side reads frames of
    /// exactly `values`' size.
    pub fn all_reduce_avg(&mut self, values: &mut [f32]) -> Result<(), String> {
        let as_bytes = |v: &[f32]| -> Vec<u8> { v.iter().flat_map(|x| x.to_le_bytes()).collect() };
        let num_bytes = values.len() * 4;
        #[allow(clippy::cast_precision_loss)]
        let world = self.world_size as f32;
        if self.rank == 0 {
            for (link, rank) in self.links.iter_mut().zip(1..) {
                let theirs = read_exact_frame(link, num_bytes)
                    .map_err(|e| format!("all-reduce: rank {rank}: {e}"))?;
                for (v, b) in values.iter_mut().zip(theirs.chunks_exact(4)) {
                    *v += f32::from_le_bytes(b.try_into().expect("4 bytes"));
                }
            }
            for v in values.iter_mut() {
                *v /= world;
            }
            let bytes = as_bytes(values);
            for (link, rank) in self.links.iter_mut().zip(1..) {
                write_frame(link, &bytes).map_err(|e| format!("all-reduce: rank {rank}: {e}"))?;
            }
        } else {
            let lost = |e: std::io::Error| format!("all-reduce: rank 0: {e}");
            let link = &mut self.links[0];
            write_frame(link, &as_bytes(values)).map_err(lost)?;
            let mean = read_exact_frame(link, num_bytes).map_err(lost)?;
            for (v, b) in values.iter_mut().zip(mean.chunks_exact(4)) {
                *v = f32::from_le_bytes(b.try_into().expect("4 bytes"));
            }
        }
        Ok(())
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&mut self) -> Result<(), String> {
        self.all_reduce_avg(&mut [0.0])
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::handshake::{CHALLENGE_BYTES, HELLO_BYTES, Hello, Prover, proof};
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    const SECRET: &str = "this job's secret";

    fn launch(rank: u32, world_size: u32, port: u16) -> Launch {
        Launch {
            rank,
            world_size,
            local_rank: rank,
            master: format!("127.0.0.1:{port}"),
            secret: Secret::chosen(SECRET),
        }
    }

    #[test]
    #[allow(clippy::float_cmp)] // small integers and their means are exact in f32
    fn the_rendezvous_hands_out_the_bootstrap_and_averages_values() {
        let port = free_port();
        let timeout = Duration::from_secs(30);
        let joiners: Vec<_> = (1..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let (mut group, id) =
                        rendezvous(&launch(rank, 3, port), timeout, || unreachable!()).unwrap();
                    #[allow(clippy::cast_precision_loss)]
                    let mut values = [rank as f32, 10.0];
                    group.all_reduce_avg(&mut values).unwrap();
                    group.barrier().unwrap();
                    (id, values)
                })
            })
            .collect();
        let (mut group, id) =
            rendezvous(&launch(0, 3, port), timeout, || Ok(b"nccl-id".to_vec())).unwrap();
        assert_eq!((group.world_size(), id.as_slice()), (3, &b"nccl-id"[..]));
        let mut values = [0.0, 1.0];
        group.all_reduce_avg(&mut values).unwrap();
        group.barrier().unwrap();
        assert_eq!(values, [1.0, 7.0]);
        for joiner in joiners {
            assert_eq!(joiner.join().unwrap(), (b"nccl-id".to_vec(), [1.0, 7.0]));
        }
    }

    #[test]
    fn a_rank_that_never_arrives_is_named_after_the_timeout() {
        let port = free_port();
        let error = rendezvous(&launch(0, 3, port), Duration::from_millis(300), || {
            Ok(Vec::new())
        })
        .unwrap_err();
        assert!(
            error.contains("rank(s) 1, 2 of 3 did not arrive within"),
            "{error}"
        );
        // And a rank whose rank 0 never listens.
        let error = rendezvous(
            &launch(1, 2, free_port()),
            Duration::from_millis(300),
            || Ok(Vec::new()),
        )
        .unwrap_err();
        assert!(error.contains("rank 0 did not answer"), "{error}");
    }

    /// Issue 16: frame lengths come from the peer, so each is checked against what the reader expects
    /// (the values it reduces, at most 1024 bootstrap bytes) before anything is allocated.
    #[test]
    fn frames_longer_than_the_reader_expects_are_refused_before_allocating() {
        const HUGE: u64 = u64::MAX;
        let timeout = Duration::from_secs(30);
        let port = free_port();
        let joiners: Vec<_> = (1..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let (mut group, _) =
                        rendezvous(&launch(rank, 3, port), timeout, || unreachable!()).unwrap();
                    if rank == 1 {
                        group.links[0].write_all(&HUGE.to_le_bytes()).unwrap();
                    } else {
                        // Fails once rank 0 gives up.
                        let _ = group.all_reduce_avg(&mut [0.0, 0.0]);
                    }
                })
            })
            .collect();
        let (mut group, _) = rendezvous(&launch(0, 3, port), timeout, || Ok(Vec::new())).unwrap();
        let error = group.all_reduce_avg(&mut [0.0, 0.0]).unwrap_err();
        assert!(
            error.contains(&format!(
                "rank 1: the peer announced a frame of {HUGE} bytes, at most 8 expected"
            )),
            "{error}"
        );
        drop(group);
        for joiner in joiners {
            joiner.join().unwrap();
        }

        // A rank 0 (with the secret) that announces a huge bootstrap.
        let (listener, port) = listen();
        let fake = std::thread::spawn(move || {
            let (stream, peer) = listener.accept().unwrap();
            let mut admission = Admission::new(stream, peer, Instant::now()).unwrap();
            assert!(
                admission
                    .advance(&Secret::chosen(SECRET), Instant::now())
                    .unwrap()
                    .is_some()
            );
            admission
                .into_stream()
                .write_all(&HUGE.to_le_bytes())
                .unwrap();
        });
        let error = rendezvous(&launch(1, 2, port), timeout, || unreachable!()).unwrap_err();
        assert!(
            error.contains(&format!("a frame of {HUGE} bytes, at most 1024 expected")),
            "{error}"
        );
        fake.join().unwrap();
    }

    fn listen() -> (TcpListener, u16) {
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        (listener, port)
    }

    /// Ranks 1 and 2 of 3 joining the rank 0 at `port`; each all-reduces `[rank, 10]`.
    fn ranks_1_and_2(port: u16) -> Vec<std::thread::JoinHandle<(Vec<u8>, [f32; 2])>> {
        (1..3)
            .map(|rank| {
                std::thread::spawn(move || {
                    let timeout = Duration::from_secs(30);
                    let (mut group, id) =
                        rendezvous(&launch(rank, 3, port), timeout, || unreachable!()).unwrap();
                    #[allow(clippy::cast_precision_loss)]
                    let mut values = [rank as f32, 10.0];
                    group.all_reduce_avg(&mut values).unwrap();
                    (id, values)
                })
            })
            .collect()
    }

    /// Rank 0 of 3 on `listener`, keeping at most `max_pending` handshakes: hands out a bootstrap and
    /// checks the mean of its `[0, 1]` and the others' values.
    #[allow(clippy::float_cmp)] // small integers and their means are exact in f32
    fn rank_0(listener: &TcpListener, port: u16, timeout: Duration, max_pending: usize) {
        let (mut group, id) =
            host_rendezvous(listener, &launch(0, 3, port), timeout, max_pending, || {
                Ok(b"nccl-id".to_vec())
            })
            .unwrap();
        assert_eq!(id, b"nccl-id");
        let mut values = [0.0, 1.0];
        group.all_reduce_avg(&mut values).unwrap();
        assert_eq!(values, [1.0, 7.0]);
    }

    /// Issue 16: rank 0 handled one connection at a time, so a connection that sent nothing held up
    /// every rank until the deadline.
    #[test]
    #[allow(clippy::float_cmp)]
    fn connections_that_send_nothing_or_half_a_hello_hold_up_no_rank() {
        let (listener, port) = listen();
        let _idle = TcpStream::connect(("127.0.0.1", port)).unwrap();
        let mut slow = TcpStream::connect(("127.0.0.1", port)).unwrap();
        slow.write_all(b"FLAME").unwrap();
        let joiners = ranks_1_and_2(port);
        // Less than the two hello timeouts that waiting on them in turn would take.
        let timeout = HELLO_TIMEOUT + Duration::from_millis(1500);
        rank_0(&listener, port, timeout, max_pending());
        for joiner in joiners {
            assert_eq!(joiner.join().unwrap(), (b"nccl-id".to_vec(), [1.0, 7.0]));
        }
    }

    /// Issue 16: anyone who reached the port could claim a rank.
    #[test]
    #[allow(clippy::float_cmp)]
    fn a_process_without_the_secret_cannot_claim_a_rank() {
        let (listener, port) = listen();
        let timeout = Duration::from_secs(30);
        let host = std::thread::spawn(move || rank_0(&listener, port, timeout, max_pending()));
        let hello = Hello {
            rank: 1,
            world_size: 3,
            nonce: [1; 32],
        };
        // A guessed secret, and a proof recorded from another exchange (another challenge).
        let guessed = |host_nonce: &[u8; 32]| {
            proof(&Secret::chosen("guess"), Prover::Rank, hello, host_nonce)
        };
        let replayed = |_: &[u8; 32]| proof(&Secret::chosen(SECRET), Prover::Rank, hello, &[0; 32]);
        for (what, answer) in [
            (
                "a guessed secret",
                &guessed as &dyn Fn(&[u8; 32]) -> [u8; 32],
            ),
            ("a replayed proof", &replayed),
        ] {
            let mut impostor = TcpStream::connect(("127.0.0.1", port)).unwrap();
            impostor.set_read_timeout(Some(timeout)).unwrap();
            impostor.write_all(&hello.to_bytes()).unwrap();
            let mut challenge = [0u8; CHALLENGE_BYTES];
            impostor.read_exact(&mut challenge).unwrap();
            let host_nonce: [u8; 32] = challenge[..32].try_into().unwrap();
            impostor.write_all(&answer(&host_nonce)).unwrap();
            let hung_up = impostor.read(&mut [0u8; 1]).unwrap() == 0;
            assert!(hung_up, "rank 0 hangs up on {what}");
        }
        // The real rank 1 still gets its place.
        for joiner in ranks_1_and_2(port) {
            assert_eq!(joiner.join().unwrap(), (b"nccl-id".to_vec(), [1.0, 7.0]));
        }
        host.join().unwrap();
    }

    #[test]
    fn a_rank_0_without_the_secret_is_not_believed() {
        let (listener, port) = listen();
        let fake = std::thread::spawn(move || {
            let (stream, peer) = listener.accept().unwrap();
            let mut admission = Admission::new(stream, peer, Instant::now()).unwrap();
            // The rank hangs up instead of proving itself.
            admission
                .advance(&Secret::chosen("guess"), Instant::now())
                .unwrap_err()
        });
        let error = rendezvous(
            &launch(1, 2, port),
            Duration::from_secs(30),
            || unreachable!(),
        )
        .unwrap_err();
        assert!(
            error.contains("did not prove it holds this job's secret"),
            "{error}"
        );
        assert!(fake.join().unwrap().contains("hung up"));
    }

    /// How many connections wait in the accept queue of the listener on 127.0.0.1:`port`: Linux shows
    /// it as a listening socket's receive queue in `/proc/net/tcp`.
    fn accept_queue_len(port: u16) -> usize {
        let local = format!("0100007F:{port:04X}");
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let fields = table
            .lines()
            .map(|line| line.split_whitespace().collect::<Vec<_>>())
            .find(|fields| fields[1] == local && fields[3] == "0A")
            .expect("the listener is in /proc/net/tcp");
        let (_, rx_queue) = fields[4].split_once(':').unwrap();
        usize::from_str_radix(rx_queue, 16).unwrap()
    }

    /// Waits (a bounded time) until `condition` holds.
    fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !condition() {
            assert!(Instant::now() < deadline, "waited in vain until {what}");
            std::thread::yield_now();
        }
    }

    /// A stranger's connection to the rank 0 at `port`, idle or, for `is_half_hello`, with half a hello.
    fn stranger(port: u16, is_half_hello: bool) -> std::io::Result<TcpStream> {
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
        if is_half_hello {
            // Rank 0 may have dropped it already, which changes nothing here.
            let _ = stream.write_all(&b"FLAMERD2\x01\0\0\0\x03"[..]);
        }
        Ok(stream)
    }

    fn strangers(port: u16, n: usize) -> Vec<TcpStream> {
        (0..n)
            .map(|i| stranger(port, i % 2 == 1).unwrap())
            .collect()
    }

    /// Review of issue 16: rank 0 dropped the oldest handshake once 64 were pending, and a rank gave up
    /// at its first failed handshake, so 64 connections from anyone made a rank fail.
    #[test]
    #[allow(clippy::float_cmp)]
    fn a_flood_of_idle_and_half_hello_connections_fails_no_rank() {
        for max_pending in [max_pending(), 8] {
            let (listener, port) = listen();
            // Queued before rank 0 accepts any: 40 strangers, the two ranks, 70 more strangers (the
            // accept queue holds 128), so that rank 0 accepts 70 connections after the ranks' at once.
            let mut flood = strangers(port, 40);
            let joiners = ranks_1_and_2(port);
            wait_until("the ranks have connected", || accept_queue_len(port) == 42);
            flood.extend(strangers(port, 70));
            // And more while rank 0 runs, up to 200.
            let is_done = Arc::new(AtomicBool::new(false));
            let stranger_thread = {
                let is_done = Arc::clone(&is_done);
                std::thread::spawn(move || {
                    while !is_done.load(Ordering::Relaxed) && flood.len() < 200 {
                        match stranger(port, flood.len() % 2 == 1) {
                            Ok(stream) => flood.push(stream),
                            Err(_) => break,
                        }
                    }
                    flood
                })
            };
            rank_0(&listener, port, Duration::from_secs(20), max_pending);
            // Its connects are refused from now on, not queued.
            drop(listener);
            is_done.store(true, Ordering::Relaxed);
            for joiner in joiners {
                assert_eq!(joiner.join().unwrap(), (b"nccl-id".to_vec(), [1.0, 7.0]));
            }
            drop(stranger_thread.join().unwrap());
        }
    }

    /// Past its cap, rank 0 drops the connections that have sent nothing or part of a hello before a
    /// rank it has challenged, however many arrive after it.
    #[test]
    fn a_rank_mid_handshake_outlasts_more_strangers_than_the_cap() {
        const MAX_PENDING: usize = 4;
        let (listener, port) = listen();
        let host = std::thread::spawn(move || {
            let launch = launch(0, 2, port);
            let bootstrap = || Ok(b"nccl-id".to_vec());
            host_rendezvous(
                &listener,
                &launch,
                Duration::from_secs(20),
                MAX_PENDING,
                bootstrap,
            )
            .map(|(_, id)| id)
        });
        // Rank 1 by hand, up to rank 0's challenge.
        let mut rank_1 = TcpStream::connect(("127.0.0.1", port)).unwrap();
        rank_1
            .set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let hello = Hello {
            rank: 1,
            world_size: 2,
            nonce: [1; 32],
        };
        rank_1.write_all(&hello.to_bytes()).unwrap();
        let mut challenge = [0u8; CHALLENGE_BYTES];
        rank_1.read_exact(&mut challenge).unwrap();
        // Three times the cap, all accepted (and as many dropped) before the rank answers.
        let flood = strangers(port, 3 * MAX_PENDING);
        wait_until("rank 0 has accepted the strangers", || {
            accept_queue_len(port) == 0
        });
        let host_nonce: [u8; 32] = challenge[..32].try_into().unwrap();
        let answer = proof(&Secret::chosen(SECRET), Prover::Rank, hello, &host_nonce);
        rank_1.write_all(&answer).unwrap();
        assert_eq!(
            read_frame(&mut rank_1, MAX_BOOTSTRAP_BYTES).unwrap(),
            b"nccl-id"
        );
        assert_eq!(host.join().unwrap().unwrap(), b"nccl-id");
        drop(flood);
    }

    /// Review of issue 16: a rank gave up at its first failed handshake.
    #[test]
    fn a_rank_whose_connection_is_reset_or_closed_tries_again() {
        let timeout = Duration::from_secs(20);
        let (listener, port) = listen();
        let host = std::thread::spawn(move || {
            // The rank's first connection is reset once its hello has arrived, its second closed.
            for is_reset in [true, false] {
                let (mut stream, _) = listener.accept().unwrap();
                stream.read_exact(&mut [0u8; HELLO_BYTES]).unwrap();
                if is_reset {
                    rustix::net::sockopt::set_socket_linger(&stream, Some(Duration::ZERO)).unwrap();
                }
            }
            let bootstrap = || Ok(b"nccl-id".to_vec());
            host_rendezvous(
                &listener,
                &launch(0, 2, port),
                timeout,
                max_pending(),
                bootstrap,
            )
            .unwrap()
            .1
        });
        let (group, id) = rendezvous(&launch(1, 2, port), timeout, || unreachable!()).unwrap();
        assert_eq!((group.rank(), id.as_slice()), (1, &b"nccl-id"[..]));
        assert_eq!(host.join().unwrap(), b"nccl-id");
    }

    /// Rank `rank` of `world_size` by hand: proves itself to the rank 0 at `port`, which admits it.
    fn prove_by_hand(port: u16, rank: u32, world_size: u32) -> TcpStream {
        let mut link = TcpStream::connect(("127.0.0.1", port)).unwrap();
        link.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        prove_membership(&mut link, rank, world_size, &Secret::chosen(SECRET)).unwrap();
        link
    }

    /// A rank whose connection broke after rank 0 admitted it tries again: it gets its place back. Two
    /// live connections for one rank are still an error of the launch.
    #[test]
    #[allow(clippy::float_cmp)]
    fn a_rank_that_comes_back_takes_its_place_unless_its_connection_is_live() {
        let timeout = Duration::from_secs(20);
        let (listener, port) = listen();
        let host = std::thread::spawn(move || rank_0(&listener, port, timeout, max_pending()));
        drop(prove_by_hand(port, 1, 3));
        for joiner in ranks_1_and_2(port) {
            assert_eq!(joiner.join().unwrap(), (b"nccl-id".to_vec(), [1.0, 7.0]));
        }
        host.join().unwrap();

        let (listener, port) = listen();
        let host = std::thread::spawn(move || {
            host_rendezvous(
                &listener,
                &launch(0, 3, port),
                timeout,
                max_pending(),
                || unreachable!(),
            )
            .unwrap_err()
        });
        let _live = prove_by_hand(port, 1, 3);
        let second = rendezvous(
            &launch(1, 3, port),
            Duration::from_millis(500),
            || unreachable!(),
        );
        assert!(second.is_err());
        let error = host.join().unwrap();
        assert!(error.contains("rank 1 arrived twice"), "{error}");
    }
}
