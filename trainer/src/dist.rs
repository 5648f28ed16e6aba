//! Data parallelism: one process per GPU, each training on its own slice of every global batch, with
//! gradients averaged across the processes before each update.
//!
//! - [`Launch`] reads where this process sits from `torchrun`'s environment (`RANK`, `WORLD_SIZE`,
//!   `LOCAL_RANK`, `MASTER_ADDR`, `MASTER_PORT`) or Slurm's (`SLURM_PROCID`, `SLURM_NTASKS`,
//!   `SLURM_LOCALID`, the first host of `SLURM_JOB_NODELIST`).
//! - [`rendezvous`] connects every rank to rank 0 at `MASTER_ADDR:MASTER_PORT` over TCP, with a deadline;
//!   each rank and rank 0 prove to each other that they hold the job's [`Secret`] (`FLAME_RDZV_SECRET`;
//!   the handshake's bytes are in `dist/handshake.rs`), and rank 0 hands its bootstrap bytes (the NCCL
//!   unique id) to all of them. A rank retries on network failures until the deadline, and rank 0 bounds
//!   what strangers' connections cost (`dist/rendezvous.rs` says how, and what they can still do). The
//!   connections stay up as a [`Group`], whose collectives (through rank 0, in rank order) serve CPU runs
//!   and small values.
//! - [`plan`] groups the parameters into buckets in the order the backward pass finishes their gradients
//!   (the model's segments: output layer, layers from the last, embedding); [`Reducer`] all-reduces each
//!   bucket as soon as its last segment is done, on NCCL's own stream, while the backward pass goes on.
//! - [`Watchdog`] bounds each step of a run of several ranks (`dist/watchdog.rs`).

use std::net::{IpAddr, TcpListener};
use std::time::Duration;

use tch::{Kind, Tensor};

use crate::shim::Nccl;

mod handshake;
mod rendezvous;
mod watchdog;

pub use handshake::{SECRET_VAR, Secret, SecretSource};
pub use rendezvous::{Group, rendezvous};
pub use watchdog::{Expired, Watchdog};

/// Where this process sits in a data-parallel run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Launch {
    /// This process's rank, in `0..world_size`.
    pub rank: u32,
    /// Number of processes.
    pub world_size: u32,
    /// Rank on this host: the GPU it uses.
    pub local_rank: u32,
    /// `host:port` of rank 0's rendezvous.
    pub master: String,
    /// What the ranks prove they hold at the rendezvous.
    pub secret: Secret,
}

/// Default rendezvous port, as torchrun's.
pub const DEFAULT_PORT: u16 = 29500;

impl Launch {
    /// A run of one process.
    pub fn single() -> Self {
        Self {
            rank: 0,
            world_size: 1,
            local_rank: 0,
            master: String::new(),
            secret: Secret::absent(),
        }
    }

    /// From torchrun's variables, else Slurm's, else a single process. `var` reads the environment.
    ///
    /// The rendezvous secret is [`SECRET_VAR`], else the launcher's job id (torchrun's
    /// `TORCHELASTIC_RUN_ID`, Slurm's `SLURM_JOB_ID`: accepted with a warning at the rendezvous, as
    /// others may read them). Several processes with neither are an error unless rank 0's address is
    /// loopback.
    pub fn from_env(var: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        let number = |name: &str| -> Result<Option<u32>, String> {
            var(name)
                .map(|v| {
                    v.trim()
                        .parse::<u32>()
                        .map_err(|_| format!("{name}={v:?} is not a number"))
                })
                .transpose()
        };
        let (rank, world_size, local_rank, host) = if let (Some(rank), Some(world)) =
            (number("RANK")?, number("WORLD_SIZE")?)
        {
            (
                rank,
                world,
                number("LOCAL_RANK")?.unwrap_or(rank),
                var("MASTER_ADDR"),
            )
        } else if let (Some(rank), Some(world)) = (number("SLURM_PROCID")?, number("SLURM_NTASKS")?)
        {
            let host = var("MASTER_ADDR").or_else(|| {
                var("SLURM_JOB_NODELIST")
                    .or_else(|| var("SLURM_NODELIST"))
                    .map(|list| first_host(&list))
            });
            (rank, world, number("SLURM_LOCALID")?.unwrap_or(0), host)
        } else {
            return Ok(Self::single());
        };
        if world_size == 0 || rank >= world_size {
            return Err(format!("rank {rank} is not in 0..{world_size}"));
        }
        let port = match number("MASTER_PORT")? {
            None => DEFAULT_PORT,
            Some(p) => u16::try_from(p).map_err(|_| format!("MASTER_PORT={p} is not a port"))?,
        };
        let host = match host {
            Some(h) => h,
            None if world_size == 1 => "127.0.0.1".into(),
            None => return Err("MASTER_ADDR is not set (nor a Slurm node list)".into()),
        };
        let secret = Secret::from_env(&var)?;
        if world_size > 1 && secret.source() == SecretSource::Absent && !is_loopback(&host) {
            return Err(format!(
                "{SECRET_VAR} is not set (nor torchrun's --rdzv-id, nor a Slurm job id): set it to \
                 the same random value for every rank, e.g. `export {SECRET_VAR}=$(openssl rand -hex \
                 32)` where the job starts, so that no one else who reaches {host}:{port} joins"
            ));
        }
        Ok(Self {
            rank,
            world_size,
            local_rank,
            master: format!("{host}:{port}"),
            secret,
        })
    }
}

/// Whether `host` (a name or an address) is this host's loopback interface.
fn is_loopback(host: &str) -> bool {
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The first host of a Slurm node list: `node[01-04,07],gpu5` → `node01`.
pub fn first_host(list: &str) -> String {
    let mut depth = 0;
    let entry = list
        .split(|c| {
            match c {
                '[' => depth += 1,
                ']' => depth -= 1,
                _ => {}
            }
            c == ',' && depth == 0
        })
        .next()
        .unwrap_or("");
    match (entry.find('['), entry.find(']')) {
        (Some(open), Some(close)) if open < close => {
            let first = entry[open + 1..close]
                .split(',')
                .next()
                .and_then(|range| range.split('-').next())
                .unwrap_or("");
            format!("{}{first}{}", &entry[..open], &entry[close + 1..])
        }
        _ => entry.to_string(),
    }
}

/// Buckets of parameters for the all-reduce: `segments[i]` is the backward segment after which
/// parameter `i`'s gradient is final and `bytes[i]` its size in the reduction dtype. Parameters are taken
/// segment by segment in backward order and a bucket closes once it holds at least `cap` bytes and its
/// segment is complete, so each bucket can be reduced as soon as the backward pass leaves that segment.
/// Returns each bucket's parameters and the segment that completes it.
pub fn plan(segments: &[usize], bytes: &[u64], cap: u64) -> Vec<(Vec<usize>, usize)> {
    let mut order: Vec<usize> = (0..segments.len()).collect();
    order.sort_by_key(|&i| segments[i]);
    let mut buckets = Vec::new();
    let (mut current, mut size) = (Vec::new(), 0u64);
    for (k, &i) in order.iter().enumerate() {
        current.push(i);
        size += bytes[i];
        let segment_ends = order
            .get(k + 1)
            .is_none_or(|&next| segments[next] != segments[i]);
        if segment_ends && (size >= cap || k + 1 == order.len()) {
            buckets.push((std::mem::take(&mut current), segments[i]));
            size = 0;
        }
    }
    buckets
}

/// How gradients are averaged across the ranks.
#[derive(Debug)]
pub enum Backend {
    /// One process: nothing to do.
    Single,
    /// CPU tensors through the [`Group`]'s TCP connections.
    Tcp(Group),
    /// CUDA tensors through NCCL, on its own stream; the group remains for barriers.
    Nccl(Nccl, Group),
}

impl Backend {
    /// Averages `t` (float32) over the ranks in place, in order with the work queued before it.
    pub fn all_reduce_avg(&mut self, t: &Tensor) -> Result<(), String> {
        match self {
            Self::Single => Ok(()),
            Self::Nccl(nccl, _) => nccl.all_reduce_avg(t),
            Self::Tcp(group) => tcp_all_reduce(group, t),
        }
    }

    /// Waits until every rank has reached this point.
    pub fn barrier(&mut self) -> Result<(), String> {
        match self {
            Self::Single => Ok(()),
            Self::Tcp(group) | Self::Nccl(_, group) => group.barrier(),
        }
    }
}

fn tcp_all_reduce(group: &mut Group, t: &Tensor) -> Result<(), String> {
    let flat = t.to_kind(Kind::Float).reshape([-1]);
    let mut values = Vec::<f32>::try_from(&flat).map_err(|e: tch::TchError| e.to_string())?;
    group.all_reduce_avg(&mut values)?;
    let mean = Tensor::from_slice(&values)
        .view(t.size().as_slice())
        .to_kind(t.kind());
    tch::no_grad(|| t.shallow_clone().copy_(&mean));
    Ok(())
}

struct Bucket {
    params: Vec<usize>,
    segment: usize,
    /// Flat gradients in the reduction dtype, reused every step.
    buffer: Tensor,
    offsets: Vec<i64>,
}

/// Averages the gradients across the ranks bucket by bucket as the backward pass finishes them.
///
/// Reducing in float32, the gradients are views into the buckets (DDP's `gradient_as_bucket_view`): the
/// backward pass accumulates straight into the buffers that are all-reduced, with nothing copied, and
/// [`Reducer::zero_grads`] zeroes the buffers instead of dropping the gradients. In bfloat16 they are
/// copied into the buckets and back.
pub struct Reducer {
    params: Vec<(String, Tensor)>,
    buckets: Vec<Bucket>,
    views: bool,
}

impl std::fmt::Debug for Reducer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reducer")
            .field("buckets", &self.buckets.len())
            .finish_non_exhaustive()
    }
}

impl Reducer {
    /// Buckets for `params` (named, with the backward segment that completes each), reduced in `kind`
    /// (float32 or bfloat16), at least `cap_bytes` each; in float32 the parameters' gradients become
    /// views into the buckets. Not `distributed` (one process): no buckets, nothing allocated.
    pub fn new(
        params: Vec<(String, Tensor)>,
        segments: &[usize],
        kind: Kind,
        cap_bytes: u64,
        distributed: bool,
    ) -> Result<Self, String> {
        if !distributed {
            return Ok(Self {
                params,
                buckets: Vec::new(),
                views: false,
            });
        }
        let element = if kind == Kind::BFloat16 { 2 } else { 4 };
        let bytes: Vec<u64> = params
            .iter()
            .map(|(_, p)| u64::try_from(p.numel()).expect("sizes fit u64") * element)
            .collect();
        let buckets = plan(segments, &bytes, cap_bytes)
            .into_iter()
            .map(|(members, segment)| {
                let mut offsets = Vec::with_capacity(members.len());
                let mut total = 0i64;
                for &i in &members {
                    offsets.push(total);
                    total += i64::try_from(params[i].1.numel()).expect("sizes fit i64");
                }
                let device = params[members[0]].1.device();
                Bucket {
                    params: members,
                    segment,
                    buffer: Tensor::zeros([total], (kind, device)),
                    offsets,
                }
            })
            .collect();
        let reducer = Self {
            views: kind == Kind::Float,
            params,
            buckets,
        };
        if reducer.views {
            for bucket in &reducer.buckets {
                for (&i, &offset) in bucket.params.iter().zip(&bucket.offsets) {
                    let param = &reducer.params[i].1;
                    let view = bucket
                        .buffer
                        .narrow(
                            0,
                            offset,
                            i64::try_from(param.numel()).expect("sizes fit i64"),
                        )
                        .view(param.size().as_slice());
                    crate::shim::set_grad(param, &view)?;
                }
            }
        }
        Ok(reducer)
    }

    /// Whether the gradients are views into the buckets (then [`Self::zero_grads`] must replace the
    /// optimizer's set-to-none).
    pub fn owns_grads(&self) -> bool {
        self.views
    }

    /// Zeroes the gradients (the buckets they are views of).
    pub fn zero_grads(&mut self) {
        for bucket in &mut self.buckets {
            let _ = bucket.buffer.zero_();
        }
    }

    /// Number of buckets.
    pub fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Starts the all-reduce of every bucket that backward segment `segment` completes.
    pub fn segment_done(&mut self, segment: usize, backend: &mut Backend) -> Result<(), String> {
        if matches!(backend, Backend::Single) {
            return Ok(());
        }
        let views = self.views;
        for bucket in self.buckets.iter_mut().filter(|b| b.segment == segment) {
            tch::no_grad(|| -> Result<(), String> {
                if views {
                    return Ok(());
                }
                for (&i, &offset) in bucket.params.iter().zip(&bucket.offsets) {
                    let (name, param) = &self.params[i];
                    let grad = param.grad();
                    if !grad.defined() {
                        return Err(format!("{name} has no gradient"));
                    }
                    let mut slot = bucket.buffer.narrow(
                        0,
                        offset,
                        i64::try_from(param.numel()).expect("sizes fit i64"),
                    );
                    slot.copy_(&grad.reshape([-1]));
                }
                Ok(())
            })?;
            match backend {
                Backend::Nccl(nccl, _) => nccl.all_reduce_avg_async(&bucket.buffer)?,
                Backend::Tcp(group) => tcp_all_reduce(group, &bucket.buffer)?,
                Backend::Single => {}
            }
        }
        Ok(())
    }

    /// Waits for the all-reduces and writes the averaged gradients back.
    pub fn finish(&mut self, backend: &mut Backend) -> Result<(), String> {
        match backend {
            Backend::Single => return Ok(()),
            Backend::Nccl(nccl, _) => nccl.wait()?,
            Backend::Tcp(_) => {}
        }
        if self.views {
            return Ok(());
        }
        tch::no_grad(|| {
            for bucket in &self.buckets {
                for (&i, &offset) in bucket.params.iter().zip(&bucket.offsets) {
                    let param = &self.params[i].1;
                    let mut grad = param.grad();
                    let mean = bucket.buffer.narrow(
                        0,
                        offset,
                        i64::try_from(param.numel()).expect("sizes fit i64"),
                    );
                    grad.copy_(&mean.view(param.size().as_slice()));
                }
            }
        });
        Ok(())
    }
}

/// Starts `n` local ranks of this program with `args` (its arguments, without the program), each with
/// torchrun's variables (rank `i` on GPU `i`, rank 0's rendezvous on `MASTER_PORT` or a free port) and a
/// fresh random [`SECRET_VAR`], and waits for them: the first to fail stops the others. Returns whether
/// all succeeded.
pub fn launch_local(n: u32, args: &[String]) -> Result<bool, String> {
    let program = std::env::current_exe().map_err(|e| format!("the program's path: {e}"))?;
    let port = match std::env::var("MASTER_PORT") {
        Ok(port) => port,
        Err(_) => TcpListener::bind(("127.0.0.1", 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| format!("a free port for the rendezvous: {e}"))?
            .port()
            .to_string(),
    };
    let secret: String = handshake::random_bytes::<32>()
        .map_err(|e| format!("a secret for the rendezvous: {e}"))?
        .iter()
        .fold(String::new(), |hex, b| hex + &format!("{b:02x}"));
    let mut children = Vec::new();
    for rank in 0..n {
        let child = std::process::Command::new(&program)
            .args(args)
            .envs(local_env(rank, n, &port, &secret))
            .spawn()
            .map_err(|e| format!("starting rank {rank}: {e}"))?;
        children.push(Some(child));
    }
    let mut ok = true;
    while children.iter().any(Option::is_some) {
        for (rank, slot) in children.iter_mut().enumerate() {
            let Some(child) = slot else { continue };
            match child.try_wait() {
                Ok(None) => continue,
                Ok(Some(status)) if status.success() => {}
                Ok(Some(status)) => {
                    eprintln!("flame-train: rank {rank} failed ({status}); stopping the others");
                    ok = false;
                }
                Err(e) => {
                    eprintln!("flame-train: rank {rank}: {e}");
                    ok = false;
                }
            }
            *slot = None;
        }
        if !ok {
            for child in children.iter_mut().flatten() {
                let _ = child.kill();
                let _ = child.wait();
            }
            break;
        }
        // Like torchrun's monitor: look at the ranks a few times a second.
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(ok)
}

/// The variables [`launch_local`] gives rank `rank` of `n`.
fn local_env(rank: u32, n: u32, port: &str, secret: &str) -> [(&'static str, String); 7] {
    [
        ("RANK", rank.to_string()),
        ("LOCAL_RANK", rank.to_string()),
        ("WORLD_SIZE", n.to_string()),
        ("LOCAL_WORLD_SIZE", n.to_string()),
        ("MASTER_ADDR", "127.0.0.1".into()),
        ("MASTER_PORT", port.into()),
        (SECRET_VAR, secret.into()),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An environment of `vars` only, as `Launch::from_env` and `Secret::from_env` read one.
    pub(crate) fn env(vars: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let vars: Vec<(String, String)> = vars
            .iter()
            .map(|(k, v)| ((*k).to_string(), (*v).to_string()))
            .collect();
        move |name| vars.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone())
    }

    #[test]
    fn the_launch_comes_from_torchrun_or_slurm_or_is_a_single_process() {
        assert_eq!(Launch::from_env(env(&[])).unwrap(), Launch::single());
        let torchrun = env(&[
            ("RANK", "3"),
            ("WORLD_SIZE", "8"),
            ("LOCAL_RANK", "1"),
            ("MASTER_ADDR", "10.0.0.2"),
            ("MASTER_PORT", "29400"),
            (SECRET_VAR, "s3cret"),
        ]);
        assert_eq!(
            Launch::from_env(torchrun).unwrap(),
            Launch {
                rank: 3,
                world_size: 8,
                local_rank: 1,
                master: "10.0.0.2:29400".into(),
                secret: Secret::chosen("s3cret"),
            }
        );
        let slurm = env(&[
            ("SLURM_PROCID", "5"),
            ("SLURM_NTASKS", "16"),
            ("SLURM_LOCALID", "5"),
            ("SLURM_JOB_NODELIST", "gpu-a[07-08,11],gpu-b3"),
            ("SLURM_JOB_ID", "4242"),
        ]);
        let launch = Launch::from_env(slurm).unwrap();
        assert_eq!(
            (launch.rank, launch.world_size, launch.local_rank),
            (5, 16, 5)
        );
        assert_eq!(launch.master, format!("gpu-a07:{DEFAULT_PORT}"));
        assert_eq!(launch.secret.source(), SecretSource::JobId("SLURM_JOB_ID"));
        for (bad, says) in [
            (
                vec![("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "h")],
                "not in 0..2",
            ),
            (
                vec![("RANK", "x"), ("WORLD_SIZE", "2")],
                "RANK=\"x\" is not a number",
            ),
            (
                vec![("RANK", "1"), ("WORLD_SIZE", "2")],
                "MASTER_ADDR is not set",
            ),
            (
                vec![
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "h"),
                    ("MASTER_PORT", "70000"),
                ],
                "not a port",
            ),
            (
                vec![
                    ("RANK", "0"),
                    ("WORLD_SIZE", "2"),
                    ("MASTER_ADDR", "10.0.0.2"),
                ],
                "FLAME_RDZV_SECRET is not set",
            ),
        ] {
            let error = Launch::from_env(env(&bad)).unwrap_err();
            assert!(error.contains(says), "{error}");
        }
        // Without a secret, a rendezvous on loopback still runs (with a warning).
        for host in ["127.0.0.1", "localhost", "::1"] {
            let vars = [("RANK", "0"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", host)];
            assert_eq!(
                Launch::from_env(env(&vars)).unwrap().secret.source(),
                SecretSource::Absent
            );
        }
    }

    #[test]
    fn launch_local_gives_each_rank_the_same_secret() {
        for rank in 0..2 {
            let vars = local_env(rank, 2, "29555", "c0ffee");
            let launch = Launch::from_env(|name| {
                vars.iter()
                    .find(|(k, _)| *k == name)
                    .map(|(_, v)| v.clone())
            })
            .unwrap();
            assert_eq!(
                launch,
                Launch {
                    rank,
                    world_size: 2,
                    local_rank: rank,
                    master: "127.0.0.1:29555".into(),
                    secret: Secret::chosen("c0ffee"),
                }
            );
        }
    }

    #[test]
    fn the_first_host_of_a_slurm_node_list() {
        assert_eq!(first_host("node[01-04,07],gpu5"), "node01");
        assert_eq!(first_host("gpu5,node[1-2]"), "gpu5");
        assert_eq!(first_host("single"), "single");
        assert_eq!(first_host("rack[3,5]-gpu"), "rack3-gpu");
    }

    #[test]
    fn buckets_follow_the_backward_order_and_close_at_segment_ends() {
        // Parameters (segment, bytes): two per layer segment, a head and an embedding.
        let segments = [3, 0, 1, 1, 2, 2, 0];
        let bytes = [100, 10, 30, 30, 30, 30, 10];
        let buckets = plan(&segments, &bytes, 50);
        // Segment 0 (20 bytes) is too small alone and joins segment 1; segment 2 closes its own.
        assert_eq!(
            buckets,
            vec![(vec![1, 6, 2, 3], 1), (vec![4, 5], 2), (vec![0], 3)]
        );
        let mut all: Vec<usize> = buckets.iter().flat_map(|b| b.0.clone()).collect();
        all.sort_unstable();
        assert_eq!(
            all,
            (0..segments.len()).collect::<Vec<_>>(),
            "each parameter once"
        );
        // A cap of 0 gives one bucket per segment; a huge cap one bucket.
        assert_eq!(plan(&segments, &bytes, 0).len(), 4);
        assert_eq!(plan(&segments, &bytes, u64::MAX).len(), 1);
    }
}
