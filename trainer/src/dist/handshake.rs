//! The rendezvous handshake: how a rank and rank 0 prove to each other that they belong to the same job,
//! without sending its secret.
//!
//! Every message has a fixed size, so nothing a peer sends decides how much is read:
//!
//! 1. rank → rank 0, [`Hello`] (48 bytes): magic `FLAMERD2`, rank `u32`, world size `u32` (little-endian),
//!    the rank's nonce (32 random bytes).
//! 2. rank 0 → rank, challenge (64 bytes): rank 0's nonce (32 random bytes), then rank 0's proof.
//! 3. rank → rank 0, the rank's proof (32 bytes).
//!
//! A proof is HMAC-SHA256 under the [`Secret`] of the prover's label (`host` or `rank`), the whole hello
//! and rank 0's nonce. It binds the claimed rank and world size, and both nonces are fresh, so a recorded
//! exchange cannot be replayed by either side; the labels keep one side's proof from serving as the
//! other's. The rank checks rank 0's proof before it gives its own, so a process that holds the port
//! without the secret learns nothing it could use. **Boundary:** only the peers are authenticated, not
//! the bytes after the handshake: someone who can rewrite the traffic between two hosts is out of scope.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Instant;

use hmac::{Hmac, Mac};
use sha2::Sha256;

/// The variable that holds the rendezvous secret: any string, the same for every rank of a job and hard
/// to guess (`--nproc-per-node` draws 32 random bytes for its ranks; elsewhere e.g.
/// `export FLAME_RDZV_SECRET=$(openssl rand -hex 32)` where the job is submitted).
pub const SECRET_VAR: &str = "FLAME_RDZV_SECRET";

/// The launchers' per-job ids that stand in for [`SECRET_VAR`], in the order they are tried: torchrun's
/// `--rdzv-id` (a random UUID with `--standalone`; its default, `none`, does not count) and Slurm's job id.
const JOB_ID_VARS: [&str; 2] = ["TORCHELASTIC_RUN_ID", "SLURM_JOB_ID"];

/// The key with which the ranks of a job prove to each other, at the rendezvous, that they belong to it.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret {
    key: Vec<u8>,
    source: SecretSource,
}

/// Where a [`Secret`] came from, which says whom it keeps out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretSource {
    /// [`SECRET_VAR`]: chosen for this job.
    Chosen,
    /// A launcher's job id (the variable named): it keeps out other jobs' ranks, but whoever can list
    /// the cluster's jobs can read it.
    JobId(&'static str),
    /// Nothing: the ranks only prove that they speak this protocol. Allowed on loopback only.
    Absent,
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Secret {
    /// No secret, for a run of one process or a loopback rendezvous.
    pub fn absent() -> Self {
        Self {
            key: Vec::new(),
            source: SecretSource::Absent,
        }
    }

    /// The secret `value` of [`SECRET_VAR`].
    pub fn chosen(value: &str) -> Self {
        Self {
            key: value.as_bytes().to_vec(),
            source: SecretSource::Chosen,
        }
    }

    /// [`SECRET_VAR`], else a launcher's job id, else [`Secret::absent`]. `var` reads the environment.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        if let Some(value) = var(SECRET_VAR) {
            if value.is_empty() {
                return Err(format!("{SECRET_VAR} is set but empty"));
            }
            return Ok(Self::chosen(&value));
        }
        for name in JOB_ID_VARS {
            if let Some(id) = var(name).filter(|id| !id.is_empty() && id != "none") {
                return Ok(Self {
                    key: id.into_bytes(),
                    source: SecretSource::JobId(name),
                });
            }
        }
        Ok(Self::absent())
    }

    /// Where it came from.
    pub fn source(&self) -> SecretSource {
        self.source
    }
}

/// 32 random bytes from the operating system, fresh for each handshake.
pub(super) type Nonce = [u8; 32];

const MAGIC: &[u8; 8] = b"FLAMERD2";
const PROOF_BYTES: usize = 32;
/// Size of a [`Hello`].
pub(super) const HELLO_BYTES: usize = 48;
/// Size of rank 0's challenge: its nonce and its proof.
pub(super) const CHALLENGE_BYTES: usize = 64;

/// Random bytes from the operating system.
pub(super) fn random_bytes<const N: usize>() -> Result<[u8; N], String> {
    let mut bytes = [0u8; N];
    getrandom::fill(&mut bytes).map_err(|e| format!("no random bytes from the OS: {e}"))?;
    Ok(bytes)
}

/// A rank's first message: who it says it is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Hello {
    pub rank: u32,
    pub world_size: u32,
    pub nonce: Nonce,
}

impl Hello {
    pub(super) fn to_bytes(self) -> [u8; HELLO_BYTES] {
        let mut bytes = [0u8; HELLO_BYTES];
        bytes[..8].copy_from_slice(MAGIC);
        bytes[8..12].copy_from_slice(&self.rank.to_le_bytes());
        bytes[12..16].copy_from_slice(&self.world_size.to_le_bytes());
        bytes[16..].copy_from_slice(&self.nonce);
        bytes
    }

    /// `None`: not a hello (wrong magic).
    pub(super) fn parse(bytes: &[u8; HELLO_BYTES]) -> Option<Self> {
        let u32_at = |i: usize| u32::from_le_bytes(bytes[i..i + 4].try_into().expect("4 bytes"));
        (&bytes[..8] == MAGIC).then(|| Self {
            rank: u32_at(8),
            world_size: u32_at(12),
            nonce: bytes[16..].try_into().expect("32 bytes"),
        })
    }
}

/// Who proves: rank 0 or a rank.
#[derive(Clone, Copy, Debug)]
pub(super) enum Prover {
    Host,
    Rank,
}

fn mac(secret: &Secret, prover: Prover, hello: Hello, host_nonce: &Nonce) -> Hmac<Sha256> {
    let mut mac =
        Hmac::<Sha256>::new_from_slice(&secret.key).expect("HMAC takes keys of any length");
    mac.update(match prover {
        Prover::Host => b"flame-rdzv host\0",
        Prover::Rank => b"flame-rdzv rank\0",
    });
    mac.update(&hello.to_bytes());
    mac.update(host_nonce);
    mac
}

/// The proof that `prover` holds `secret`, for the exchange of `hello` and rank 0's nonce.
pub(super) fn proof(
    secret: &Secret,
    prover: Prover,
    hello: Hello,
    host_nonce: &Nonce,
) -> [u8; PROOF_BYTES] {
    mac(secret, prover, hello, host_nonce)
        .finalize()
        .into_bytes()
        .into()
}

/// Whether `candidate` is `prover`'s proof for this exchange (compared in constant time).
pub(super) fn is_proof(
    secret: &Secret,
    prover: Prover,
    hello: Hello,
    host_nonce: &Nonce,
    candidate: &[u8],
) -> bool {
    mac(secret, prover, hello, host_nonce)
        .verify_slice(candidate)
        .is_ok()
}

/// A rank's side, on its connection to rank 0 (blocking, under the connection's timeouts): says who it
/// is, checks rank 0's proof, gives its own.
pub(super) fn prove_membership(
    link: &mut TcpStream,
    rank: u32,
    world_size: u32,
    secret: &Secret,
) -> Result<(), HandshakeError> {
    let hello = Hello {
        rank,
        world_size,
        nonce: random_bytes().map_err(HandshakeError::Local)?,
    };
    link.write_all(&hello.to_bytes())?;
    let mut challenge = [0u8; CHALLENGE_BYTES];
    link.read_exact(&mut challenge)?;
    let (host_nonce, host_proof) = challenge.split_at(32);
    let host_nonce: Nonce = host_nonce.try_into().expect("32 bytes");
    if !is_proof(secret, Prover::Host, hello, &host_nonce, host_proof) {
        return Err(HandshakeError::Impostor);
    }
    link.write_all(&proof(secret, Prover::Rank, hello, &host_nonce))?;
    Ok(())
}

/// Why a rank's handshake with rank 0 failed.
#[derive(Debug)]
pub(super) enum HandshakeError {
    /// The connection failed or timed out.
    Io(std::io::Error),
    /// The process at rank 0's address did not prove it holds the secret.
    Impostor,
    /// No nonce.
    Local(String),
}

impl From<std::io::Error> for HandshakeError {
    fn from(e: std::io::Error) -> Self {
        Self::Io(e)
    }
}

/// How far a connection has got with its handshake, least first: under a flood, rank 0 gives up on the
/// least advanced connections first (`dist/rendezvous.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Progress {
    /// Nothing received.
    Silent,
    /// Part of a hello.
    PartHello,
    /// The whole hello: rank 0 has sent its challenge and waits for the proof.
    Challenged,
}

/// Rank 0's side of one connection's handshake, on a non-blocking socket: [`Admission::advance`] reads
/// whatever has arrived, so a connection that sends nothing holds up no one.
#[derive(Debug)]
pub(super) struct Admission {
    stream: TcpStream,
    /// Who connected, for the log.
    pub peer: SocketAddr,
    /// When rank 0 accepted the connection.
    pub accepted: Instant,
    progress: Progress,
    /// When it reached `progress`.
    since: Instant,
    host_nonce: Nonce,
    /// The hello, then the rank's proof: all that a rank sends before the bootstrap.
    received: [u8; HELLO_BYTES + PROOF_BYTES],
    num_received: usize,
}

impl Admission {
    /// Starts the handshake on `stream`, which must be non-blocking and was accepted at `accepted`.
    pub(super) fn new(
        stream: TcpStream,
        peer: SocketAddr,
        accepted: Instant,
    ) -> Result<Self, String> {
        Ok(Self {
            stream,
            peer,
            accepted,
            progress: Progress::Silent,
            since: accepted,
            host_nonce: random_bytes()?,
            received: [0; HELLO_BYTES + PROOF_BYTES],
            num_received: 0,
        })
    }

    /// How far it has got, and since when.
    pub(super) fn progress(&self) -> (Progress, Instant) {
        (self.progress, self.since)
    }

    /// The socket, to poll.
    pub(super) fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// The admitted rank's connection.
    pub(super) fn into_stream(self) -> TcpStream {
        self.stream
    }

    /// Takes what the peer has sent (by `now`): `Ok(Some(hello))` once it has proved its hello,
    /// `Ok(None)` while it has more to send, `Err(why)` when it is not a rank of this job (or hung up).
    pub(super) fn advance(
        &mut self,
        secret: &Secret,
        now: Instant,
    ) -> Result<Option<Hello>, String> {
        loop {
            let wanted = if self.num_received < HELLO_BYTES {
                HELLO_BYTES
            } else {
                self.received.len()
            };
            match self
                .stream
                .read(&mut self.received[self.num_received..wanted])
            {
                Ok(0) => return Err("hung up during the handshake".into()),
                Ok(n) => {
                    if self.progress == Progress::Silent {
                        (self.progress, self.since) = (Progress::PartHello, now);
                    }
                    self.num_received += n;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Ok(None),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e.to_string()),
            }
            if self.num_received == HELLO_BYTES {
                let hello = self.hello().ok_or("not a flame rank (wrong magic)")?;
                let mut challenge = [0u8; CHALLENGE_BYTES];
                challenge[..32].copy_from_slice(&self.host_nonce);
                challenge[32..].copy_from_slice(&proof(
                    secret,
                    Prover::Host,
                    hello,
                    &self.host_nonce,
                ));
                // The first bytes rank 0 sends: they fit the empty send buffer, so they go at once.
                self.stream
                    .write_all(&challenge)
                    .map_err(|e| e.to_string())?;
                (self.progress, self.since) = (Progress::Challenged, now);
            } else if self.num_received == self.received.len() {
                let hello = self.hello().expect("its magic was checked");
                let candidate = &self.received[HELLO_BYTES..];
                return if is_proof(secret, Prover::Rank, hello, &self.host_nonce, candidate) {
                    Ok(Some(hello))
                } else {
                    Err(format!(
                        "claimed rank {} of {} without this job's secret ({SECRET_VAR})",
                        hello.rank, hello.world_size
                    ))
                };
            }
        }
    }

    fn hello(&self) -> Option<Hello> {
        Hello::parse(self.received[..HELLO_BYTES].try_into().expect("48 bytes"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::tests::env;

    #[test]
    fn the_secret_is_flame_rdzv_secret_else_a_launchers_job_id() {
        let both = env(&[(SECRET_VAR, "s3cret"), ("SLURM_JOB_ID", "4242")]);
        assert_eq!(Secret::from_env(both).unwrap(), Secret::chosen("s3cret"));
        for (vars, source) in [
            (
                vec![("TORCHELASTIC_RUN_ID", "f00d"), ("SLURM_JOB_ID", "4242")],
                SecretSource::JobId("TORCHELASTIC_RUN_ID"),
            ),
            // torchrun's default --rdzv-id is the word `none`: not an id.
            (
                vec![("TORCHELASTIC_RUN_ID", "none"), ("SLURM_JOB_ID", "4242")],
                SecretSource::JobId("SLURM_JOB_ID"),
            ),
            (vec![("TORCHELASTIC_RUN_ID", "none")], SecretSource::Absent),
            (vec![], SecretSource::Absent),
        ] {
            assert_eq!(Secret::from_env(env(&vars)).unwrap().source(), source);
        }
        let error = Secret::from_env(env(&[(SECRET_VAR, "")])).unwrap_err();
        assert!(error.contains("set but empty"), "{error}");
        // Debug output never shows the key.
        assert!(!format!("{:?}", Secret::chosen("s3cret")).contains("s3cret"));
    }

    #[test]
    fn a_proof_binds_the_secret_the_prover_the_claim_and_both_nonces() {
        let secret = Secret::chosen("job-secret");
        let hello = Hello {
            rank: 1,
            world_size: 3,
            nonce: [7; 32],
        };
        assert_eq!(Hello::parse(&hello.to_bytes()), Some(hello));
        let host_nonce = [9; 32];
        let given = proof(&secret, Prover::Rank, hello, &host_nonce);
        assert!(is_proof(&secret, Prover::Rank, hello, &host_nonce, &given));
        let other_claims = [
            Hello { rank: 2, ..hello },
            Hello {
                world_size: 4,
                ..hello
            },
            Hello {
                nonce: [8; 32],
                ..hello
            },
        ];
        for claim in other_claims {
            assert!(!is_proof(&secret, Prover::Rank, claim, &host_nonce, &given));
        }
        // A replay against a fresh challenge, rank 0's proof passed off as a rank's, another key.
        assert!(!is_proof(&secret, Prover::Rank, hello, &[10; 32], &given));
        assert!(!is_proof(&secret, Prover::Host, hello, &host_nonce, &given));
        let other = Secret::chosen("guess");
        assert!(!is_proof(&other, Prover::Rank, hello, &host_nonce, &given));
    }
}
