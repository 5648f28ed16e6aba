//! Throughput and latency of `flame-stream` as clients see it: aggregate tokens/s delivered to 1, 8 and 64
//! concurrent clients over shared memory and over TCP loopback, p50/p99 of a prefetched micro-batch, and
//! the server's CPU time per second.
//!
//! The data (built once under `~/.cache/flame/bench/stream/throughput/`) is two `int32` Megatron
//! datasets of random-length documents (1 to 4000 tokens); the job mixes them 0.7/0.3 with `seq_len` 2048,
//! varlen, micro-batch 4. Each client is one rank of a job with as many ranks as clients, asks for its
//! micro-batches in order (so the server's prefetch is what it measures) and reads every token it gets
//! (a wrapping sum), as a trainer copying the batch out would. The server is the release
//! `flame-stream serve` binary beside this example, a separate process, so its CPU time is its own.
//!
//! Usage: `cargo build --release -p flame-streamer --examples --bins &&
//! target/release/examples/throughput [SECONDS_PER_CASE]`; prints one JSON object per case and writes
//! the data directory's path as the first line (for `tools/bench/stream.py`, which runs Grain on it).

use std::io::BufRead;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use flame_formats::TokenDtype;
use flame_formats::megatron::IndexedDatasetBuilder;
use flame_streamer::client::Client;
use flame_streamer::server::Endpoint;
use flame_streamer::spec::JobSpec;

const TOKENS_PER_DATASET: u64 = 40_000_000;

fn cache_dir() -> PathBuf {
    std::env::var_os("FLAME_CACHE")
        .map_or_else(
            || PathBuf::from(std::env::var("HOME").unwrap_or_default()).join(".cache/flame"),
            PathBuf::from,
        )
        .join("bench/stream/throughput")
}

/// Two int32 datasets of random-length documents, written once.
fn write_data(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut prefixes = Vec::new();
    for (k, seed) in [(0u64, 11u64), (1, 23)] {
        let prefix = dir.join(format!("ds{k}"));
        prefixes.push(prefix.clone());
        if prefix.with_extension("idx").exists() {
            continue;
        }
        let mut builder = IndexedDatasetBuilder::create(&prefix, TokenDtype::Int32)?;
        let mut state = seed;
        let mut next = move || {
            state = state
                .wrapping_mul(6_364_136_223_846_793_005)
                .wrapping_add(1_442_695_040_888_963_407);
            state >> 33
        };
        let mut written = 0;
        let mut doc = Vec::new();
        while written < TOKENS_PER_DATASET {
            let len = 1 + next() % 4000;
            doc.clear();
            doc.extend((0..len).map(|_| u32::try_from(next() % 100_000).expect("small")));
            builder.add_item(&doc)?;
            builder.end_document()?;
            written += len;
        }
        builder.finalize()?;
    }
    Ok(prefixes)
}

fn job(prefixes: &[PathBuf], world_size: u32) -> JobSpec {
    JobSpec::from_toml(&format!(
        r#"
        seed = 1
        seq_len = 2048
        varlen = true
        micro_batch_size = 4
        global_batch_size = {}
        [[datasets]]
        path = "{}"
        weight = 0.7
        [[datasets]]
        path = "{}"
        weight = 0.3
        "#,
        4 * world_size,
        prefixes[0].display(),
        prefixes[1].display()
    ))
    .expect("a valid job")
}

/// `flame-stream serve` from the same build, on a Unix socket and a TCP port.
fn spawn_server(socket: &Path) -> anyhow::Result<(Child, Vec<Endpoint>)> {
    let exe = std::env::current_exe()?;
    let server = exe
        .parent()
        .and_then(Path::parent)
        .map(|d| d.join("flame-stream"))
        .ok_or_else(|| anyhow::anyhow!("no flame-stream beside {}", exe.display()))?;
    let mut child = Command::new(&server)
        .args(["serve", "--max-connections", "256", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .args(["--listen", "tcp://127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| anyhow::anyhow!("{}: {e} (build it with --bins)", server.display()))?;
    let mut lines = std::io::BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut endpoints = Vec::new();
    for _ in 0..2 {
        let line = lines.next().transpose()?.unwrap_or_default();
        let endpoint = line
            .strip_prefix("listening on ")
            .ok_or_else(|| anyhow::anyhow!("unexpected server output {line:?}"))?;
        endpoints.push(endpoint.parse().map_err(|e| anyhow::anyhow!("{e}"))?);
    }
    Ok((child, endpoints))
}

/// CPU seconds (user + system) the process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or(vec![], |(_, rest)| rest.split_whitespace().collect());
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| {
        f.iter().filter_map(|v| v.parse::<f64>().ok()).sum()
    });
    ticks / 100.0
}

struct Outcome {
    tokens: u64,
    latencies: Vec<Duration>,
    checksum: u64,
}

fn run_client(
    endpoint: &Endpoint,
    spec: &JobSpec,
    (rank, world_size): (u32, u32),
    shared_memory: bool,
    think: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Outcome> {
    let mut client = Client::connect(endpoint.clone(), spec, rank, world_size, None, 5)?;
    if shared_memory {
        client.open_shared_memory(6)?;
    }
    let mut outcome = Outcome {
        tokens: 0,
        latencies: Vec::new(),
        checksum: 0,
    };
    let micro_steps = u64::from(client.micro_steps);
    let mut at = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let (step, micro_step) = (at / micro_steps, at % micro_steps);
        let start = Instant::now();
        if shared_memory {
            let batch = client.micro_batch_in_place(step, micro_step)?;
            outcome.latencies.push(start.elapsed());
            let tokens = batch.tokens();
            outcome.checksum = tokens
                .iter()
                .fold(outcome.checksum, |a, &t| a.wrapping_add(u64::from(t)));
            outcome.tokens += tokens.len() as u64;
        } else {
            let samples = client.micro_batch(step, micro_step)?;
            outcome.latencies.push(start.elapsed());
            for s in &samples {
                outcome.checksum = s
                    .tokens
                    .iter()
                    .fold(outcome.checksum, |a, &t| a.wrapping_add(u64::from(t)));
                outcome.tokens += s.tokens.len() as u64;
            }
        }
        at += 1;
        if !think.is_zero() {
            // A training step between batches: the server prepares the next one meanwhile.
            std::thread::sleep(think);
        }
    }
    Ok(outcome)
}

#[allow(clippy::cast_precision_loss)]
fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// The ceiling: micro-batches computed in this process, on one thread, with no transport.
fn ceiling(prefixes: &[PathBuf], seconds: f64) -> anyhow::Result<()> {
    let stream = flame_streamer::stream::Stream::open(job(prefixes, 1))?;
    let mut out = flame_streamer::stream::BatchBuffers::default();
    stream.micro_batch_into((0, 0), (0, 1), &mut out)?;
    let start = Instant::now();
    let mut step = 0;
    let mut checksum = 0u64;
    while start.elapsed().as_secs_f64() < seconds {
        stream.micro_batch_into((step, 0), (0, 1), &mut out)?;
        checksum = out
            .tokens
            .iter()
            .fold(checksum, |a, &t| a.wrapping_add(u64::from(t)));
        step += 1;
    }
    #[allow(clippy::cast_precision_loss)]
    let tokens_per_s = (step * 4 * 2048) as f64 / start.elapsed().as_secs_f64();
    println!(
        "{}",
        serde_json::json!({"transport": "none (compute, one thread)", "clients": 1, "tokens_per_s": tokens_per_s, "checksum": checksum})
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let seconds: f64 = std::env::args().nth(1).map_or(Ok(3.0), |a| a.parse())?;
    // Optional filters: a transport (shm, tcp) and a client count.
    let only_transport = std::env::args().nth(2);
    let only_clients: Option<u32> = std::env::args().nth(3).map(|a| a.parse()).transpose()?;
    let dir = cache_dir();
    let prefixes = write_data(&dir)?;
    println!("{}", dir.display());
    ceiling(&prefixes, seconds)?;
    let socket = std::env::temp_dir().join(format!("flame-bench-{}.sock", std::process::id()));
    let (mut server, endpoints) = spawn_server(&socket)?;
    let server_pid = server.id();
    for &(transport, shared_memory) in &[("shm", true), ("tcp", false)] {
        if only_transport.as_deref().is_some_and(|t| t != transport) {
            continue;
        }
        let endpoint = if transport == "tcp" {
            &endpoints[1]
        } else {
            &endpoints[0]
        };
        // Saturated (clients ask as fast as they can), then paced: 64 clients each taking a 2 ms
        // training step between micro-batches, about half the capacity, for the latency of a batch the
        // server had time to prepare.
        for (clients, think) in [
            (1u32, Duration::ZERO),
            (8, Duration::ZERO),
            (64, Duration::ZERO),
            (64, Duration::from_millis(2)),
        ] {
            if only_clients.is_some_and(|c| c != clients) {
                continue;
            }
            let spec = Arc::new(job(&prefixes, clients));
            // Warm the job (index open, page cache) outside the measurement.
            Client::connect(endpoint.clone(), &spec, 0, clients, None, 5)?.micro_batch(0, 0)?;
            let stop = Arc::new(AtomicBool::new(false));
            let cpu_before = cpu_seconds(server_pid);
            let start = Instant::now();
            let handles: Vec<_> = (0..clients)
                .map(|rank| {
                    let (endpoint, spec, stop) =
                        (endpoint.clone(), Arc::clone(&spec), Arc::clone(&stop));
                    std::thread::spawn(move || {
                        run_client(
                            &endpoint,
                            &spec,
                            (rank, clients),
                            shared_memory,
                            think,
                            &stop,
                        )
                    })
                })
                .collect();
            std::thread::sleep(Duration::from_secs_f64(seconds));
            stop.store(true, Ordering::Relaxed);
            let outcomes: Vec<Outcome> = handles
                .into_iter()
                .map(|h| h.join().expect("client thread"))
                .collect::<anyhow::Result<_>>()?;
            let elapsed = start.elapsed().as_secs_f64();
            let cpu = cpu_seconds(server_pid) - cpu_before;
            let tokens: u64 = outcomes.iter().map(|o| o.tokens).sum();
            let mut latencies: Vec<Duration> = outcomes
                .iter()
                .flat_map(|o| o.latencies.iter().copied())
                .collect();
            latencies.sort_unstable();
            let checksum = outcomes.iter().fold(0u64, |a, o| a ^ o.checksum);
            #[allow(clippy::cast_precision_loss)]
            let line = serde_json::json!({
                "transport": transport,
                "clients": clients,
                "step_ms": think.as_secs_f64() * 1e3,
                "tokens_per_s": tokens as f64 / elapsed,
                "micro_batches": latencies.len(),
                "p50_ms": percentile(&latencies, 0.5),
                "p99_ms": percentile(&latencies, 0.99),
                "server_cpu_per_s": cpu / elapsed,
                "checksum": checksum,
            });
            println!("{line}");
        }
    }
    server.kill()?;
    server.wait()?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
