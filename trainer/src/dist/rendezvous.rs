//! The rendezvous: every rank connects to rank 0 over TCP and proves it belongs to the job (`handshake`),
//! rank 0 hands out its bootstrap bytes, and the connections stay up as the run's [`Group`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::handshake::{self, Admission, HandshakeError, prove_membership};
use super::{Launch, SECRET_VAR, Secret, SecretSource, is_loopback};

/// The most bootstrap bytes a rank accepts from rank 0 (NCCL's unique id is 128).
const MAX_BOOTSTRAP_BYTES: usize = 1024;

/// How long rank 0 waits for one connection to finish its handshake (a rank's takes one round trip).
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The most handshakes rank 0 keeps going at once; past it, the oldest is dropped.
const MAX_PENDING: usize = 64;

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
/// stderr, one that does not or that takes longer than 10 s, and goes on waiting for the ranks.
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
    host_rendezvous(&listener, launch, timeout, bootstrap)
}

/// A rank's side of [`rendezvous`]: connects to rank 0, proves itself, waits for the bootstrap.
fn join(launch: &Launch, timeout: Duration) -> Result<(Group, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let addresses: Vec<_> = launch
        .master
        .to_socket_addrs()
        .map_err(|e| io_error(&format!("rendezvous: resolving {}", launch.master), &e))?
        .collect();
    let mut link = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(format!(
                "rendezvous: rank 0 did not answer at {} within {:.1} s (is it running?)",
                launch.master,
                timeout.as_secs_f64()
            ));
        }
        match addresses
            .iter()
            .find_map(|a| TcpStream::connect_timeout(a, left.min(Duration::from_secs(5))).ok())
        {
            Some(stream) => break stream,
            // Rank 0 is not listening yet: retry after a short back-off.
            None => std::thread::sleep(Duration::from_millis(100).min(left)),
        }
    };
    let left = deadline
        .saturating_duration_since(Instant::now())
        .max(Duration::from_millis(1));
    link.set_nodelay(true)
        .and_then(|()| link.set_read_timeout(Some(left)))
        .and_then(|()| link.set_write_timeout(Some(left)))
        .map_err(|e| io_error("rendezvous", &e))?;
    prove_membership(&mut link, launch.rank, launch.world_size, &launch.secret).map_err(
        |e| match e {
            HandshakeError::Impostor => format!(
                "rendezvous: the process at {} did not prove it holds this job's secret (is \
                 {SECRET_VAR} the same for every rank?)",
                launch.master
            ),
            HandshakeError::Io(e) => format!(
                "rendezvous: rank 0 at {} did not complete the handshake ({e})",
                launch.master
            ),
            HandshakeError::Local(e) => format!("rendezvous: {e}"),
        },
    )?;
    let payload = read_frame(&mut link, MAX_BOOTSTRAP_BYTES).map_err(|e| {
        format!(
            "rendezvous: no bootstrap from rank 0 at {} within {:.1} s ({e}): did every rank arrive?",
            launch.master,
            timeout.as_secs_f64()
        )
    })?;
    link.set_read_timeout(None)
        .and_then(|()| link.set_write_timeout(None))
        .map_err(|e| io_error("rendezvous", &e))?;
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
/// connection that sends nothing, or sends it slowly, delays no one; it is dropped after
/// [`HANDSHAKE_TIMEOUT`].
fn host_rendezvous(
    listener: &TcpListener,
    launch: &Launch,
    timeout: Duration,
    bootstrap: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<(Group, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    let world = launch.world_size;
    warn_if_weak(&launch.secret, &launch.master);
    listener
        .set_nonblocking(true)
        .map_err(|e| io_error("rendezvous", &e))?;
    let mut links: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
    let mut pending: Vec<Admission> = Vec::new();
    while links.iter().any(Option::is_none) {
        let now = Instant::now();
        if now >= deadline {
            let missing: Vec<String> = (1..world)
                .filter(|r| links[*r as usize - 1].is_none())
                .map(|r| r.to_string())
                .collect();
            return Err(format!(
                "rendezvous on {}: rank(s) {} of {world} did not arrive within {:.1} s",
                launch.master,
                missing.join(", "),
                timeout.as_secs_f64()
            ));
        }
        pending.retain(|admission| {
            let is_live = admission.expires > now;
            if !is_live {
                log_dropped(admission, "no complete handshake in time");
            }
            is_live
        });
        wait_for_news(listener, &pending, deadline)?;
        accept_pending(listener, &mut pending)?;
        for mut admission in std::mem::take(&mut pending) {
            match admission.advance(&launch.secret) {
                Ok(None) => pending.push(admission),
                Ok(Some(hello)) => admit(&mut links, hello, admission.into_stream(), world)?,
                Err(why) => log_dropped(&admission, &why),
            }
        }
    }
    let payload = bootstrap()?;
    if payload.len() > MAX_BOOTSTRAP_BYTES {
        return Err(format!(
            "rendezvous: a bootstrap of {} bytes (at most {MAX_BOOTSTRAP_BYTES})",
            payload.len()
        ));
    }
    let mut links: Vec<TcpStream> = links.into_iter().flatten().collect();
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

fn log_dropped(admission: &Admission, why: &str) {
    eprintln!(
        "flame-train: rendezvous: dropped the connection from {}: {why}",
        admission.peer
    );
}

/// Waits until the listener or a pending connection may have news, or the first handshake or the
/// rendezvous runs out of time.
fn wait_for_news(
    listener: &TcpListener,
    pending: &[Admission],
    deadline: Instant,
) -> Result<(), String> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    let until = pending
        .iter()
        .map(|a| a.expires)
        .fold(deadline, Instant::min);
    let left = until.saturating_duration_since(Instant::now());
    let mut fds: Vec<PollFd<'_>> = std::iter::once(PollFd::new(listener, PollFlags::IN))
        .chain(
            pending
                .iter()
                .map(|a| PollFd::new(a.stream(), PollFlags::IN)),
        )
        .collect();
    let timeout = Timespec {
        tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
        tv_nsec: i64::from(left.subsec_nanos()),
    };
    match poll(&mut fds, Some(&timeout)) {
        Ok(_) | Err(rustix::io::Errno::INTR) => Ok(()),
        Err(e) => Err(format!("rendezvous: waiting for the ranks: {e}")),
    }
}

/// Starts a handshake with every connection waiting on `listener`.
fn accept_pending(listener: &TcpListener, pending: &mut Vec<Admission>) -> Result<(), String> {
    use std::io::ErrorKind;
    loop {
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
            Err(e) => return Err(io_error("rendezvous: accepting a connection", &e)),
        };
        if pending.len() == MAX_PENDING {
            log_dropped(&pending.remove(0), "too many handshakes at once");
        }
        stream
            .set_nonblocking(true)
            .map_err(|e| io_error("rendezvous", &e))?;
        pending.push(Admission::new(
            stream,
            peer,
            Instant::now() + HANDSHAKE_TIMEOUT,
        )?);
    }
}

/// Gives an authenticated rank its place. A claim that does not fit this run comes from a rank of this
/// job (it holds the secret), so it is the launch that is wrong: an error.
fn admit(
    links: &mut [Option<TcpStream>],
    hello: handshake::Hello,
    stream: TcpStream,
    world: u32,
) -> Result<(), String> {
    let rank = hello.rank;
    if hello.world_size != world || rank == 0 || rank >= world {
        return Err(format!(
            "rendezvous: a process says it is rank {rank} of {}; this run has {world}",
            hello.world_size
        ));
    }
    stream
        .set_nonblocking(false)
        .map_err(|e| io_error("rendezvous", &e))?;
    if links[rank as usize - 1].replace(stream).is_some() {
        return Err(format!("rendezvous: rank {rank} arrived twice"));
    }
    Ok(())
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
    use super::handshake::{CHALLENGE_BYTES, Hello, Prover, proof};
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
                    .advance(&Secret::chosen(SECRET))
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

    /// Rank 0 of 3 on `listener`: hands out a bootstrap and checks the mean of its `[0, 1]` and the
    /// others' values.
    #[allow(clippy::float_cmp)] // small integers and their means are exact in f32
    fn rank_0(listener: &TcpListener, port: u16, timeout: Duration) {
        let (mut group, id) = host_rendezvous(listener, &launch(0, 3, port), timeout, || {
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
        // Less than the two handshake timeouts that waiting on them in turn would take.
        rank_0(&listener, port, HANDSHAKE_TIMEOUT + Duration::from_secs(5));
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
        let host = std::thread::spawn(move || rank_0(&listener, port, timeout));
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
            admission.advance(&Secret::chosen("guess")).unwrap_err()
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
}
