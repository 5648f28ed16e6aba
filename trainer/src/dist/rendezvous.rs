//! The rendezvous: every rank connects to rank 0 over TCP, rank 0 hands out its bootstrap bytes, and the
//! connections stay up as the run's [`Group`].

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

use super::Launch;

const MAGIC: &[u8; 8] = b"FLAMERDV";

/// The most bootstrap bytes a rank accepts from rank 0 (NCCL's unique id is 128).
const MAX_BOOTSTRAP_BYTES: usize = 1024;

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
pub fn rendezvous(
    launch: &Launch,
    timeout: Duration,
    bootstrap: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<(Group, Vec<u8>), String> {
    let deadline = Instant::now() + timeout;
    if launch.rank == 0 {
        return host(launch, timeout, deadline, bootstrap);
    }
    let world = launch.world_size;
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
    let mut hello = Vec::with_capacity(16);
    hello.extend_from_slice(MAGIC);
    hello.extend_from_slice(&launch.rank.to_le_bytes());
    hello.extend_from_slice(&world.to_le_bytes());
    link.set_nodelay(true)
        .and_then(|()| link.write_all(&hello))
        .and_then(|()| {
            link.set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
        })
        .map_err(|e| io_error("rendezvous", &e))?;
    let payload = read_frame(&mut link, MAX_BOOTSTRAP_BYTES).map_err(|e| {
        format!(
            "rendezvous: no bootstrap from rank 0 at {} within {:.1} s ({e}): did every rank arrive?",
            launch.master,
            timeout.as_secs_f64()
        )
    })?;
    link.set_read_timeout(None)
        .map_err(|e| io_error("rendezvous", &e))?;
    Ok((
        Group {
            rank: launch.rank,
            world_size: world,
            links: vec![link],
        },
        payload,
    ))
}

/// Rank 0's side of [`rendezvous`]: waits for every other rank, then sends them the bootstrap.
fn host(
    launch: &Launch,
    timeout: Duration,
    deadline: Instant,
    bootstrap: impl FnOnce() -> Result<Vec<u8>, String>,
) -> Result<(Group, Vec<u8>), String> {
    let world = launch.world_size;
    let port = launch
        .master
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .ok_or_else(|| format!("rendezvous address {:?} has no port", launch.master))?;
    let listener = TcpListener::bind(("0.0.0.0", port))
        .map_err(|e| io_error(&format!("rendezvous: listening on port {port}"), &e))?;
    let mut links: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
    while links.iter().any(Option::is_none) {
        let missing: Vec<String> = (1..world)
            .filter(|r| links[*r as usize - 1].is_none())
            .map(|r| r.to_string())
            .collect();
        let (mut stream, _) = accept_until(&listener, deadline).map_err(|_| {
            format!(
                "rendezvous on port {port}: rank(s) {} of {world} did not arrive within {:.1} s",
                missing.join(", "),
                timeout.as_secs_f64()
            )
        })?;
        stream
            .set_read_timeout(Some(
                deadline
                    .saturating_duration_since(Instant::now())
                    .max(Duration::from_millis(1)),
            ))
            .map_err(|e| io_error("rendezvous", &e))?;
        let mut hello = [0u8; 16];
        if stream.read_exact(&mut hello).is_err() || &hello[..8] != MAGIC {
            continue; // not one of ours (a port scan, a stale client): ignore it
        }
        let rank = u32::from_le_bytes(hello[8..12].try_into().expect("4 bytes"));
        let their_world = u32::from_le_bytes(hello[12..16].try_into().expect("4 bytes"));
        if their_world != world || rank == 0 || rank >= world {
            return Err(format!(
                "rendezvous: a process says it is rank {rank} of {their_world}; this run has {world}"
            ));
        }
        if links[rank as usize - 1].replace(stream).is_some() {
            return Err(format!("rendezvous: rank {rank} arrived twice"));
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
        link.set_read_timeout(None)
            .and_then(|()| link.set_nodelay(true))
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

/// Accepts one connection, waiting at most until `deadline`.
fn accept_until(
    listener: &TcpListener,
    deadline: Instant,
) -> std::io::Result<(TcpStream, std::net::SocketAddr)> {
    use rustix::event::{PollFd, PollFlags, Timespec, poll};
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        let mut fds = [PollFd::new(listener, PollFlags::IN)];
        let timeout = Timespec {
            tv_sec: i64::try_from(left.as_secs()).unwrap_or(i64::MAX),
            tv_nsec: i64::from(left.subsec_nanos()),
        };
        poll(&mut fds, Some(&timeout))?;
        if !fds[0].revents().is_empty() {
            let (stream, address) = listener.accept()?;
            stream.set_nonblocking(false)?;
            return Ok((stream, address));
        }
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
    use super::*;

    fn free_port() -> u16 {
        TcpListener::bind(("127.0.0.1", 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    fn launch(rank: u32, world_size: u32, port: u16) -> Launch {
        Launch {
            rank,
            world_size,
            local_rank: rank,
            master: format!("127.0.0.1:{port}"),
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

        // A rank 0 that announces a huge bootstrap.
        let listener = TcpListener::bind(("127.0.0.1", 0)).unwrap();
        let port = listener.local_addr().unwrap().port();
        let fake = std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream.read_exact(&mut [0u8; 16]).unwrap();
            stream.write_all(&HUGE.to_le_bytes()).unwrap();
        });
        let error = rendezvous(&launch(1, 2, port), timeout, || unreachable!()).unwrap_err();
        assert!(
            error.contains(&format!("a frame of {HUGE} bytes, at most 1024 expected")),
            "{error}"
        );
        fake.join().unwrap();
    }
}
