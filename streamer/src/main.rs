//! `flame-stream`: serve jobs (`serve`) or print what a rank receives (`dump`).
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use flame_streamer::budget::{ByteSize, DEFAULT_MAX_JOB_MEMORY, DEFAULT_MAX_SESSION_MEMORY};
use flame_streamer::client::Client;
use flame_streamer::server::{
    DEFAULT_JOB_IDLE, DEFAULT_MAX_CONNECTIONS, DEFAULT_PREFETCH_DEPTH, DEFAULT_STREAM_CACHE_BYTES,
    Endpoint, ServerConfig, default_cache_dir, serve,
};
use flame_streamer::spec::JobSpec;
use sha2::Digest;

/// flame-stream: one server streams shuffled, mixed, packed batches to many trainers.
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:
  flame-stream serve --listen unix:///tmp/flame.sock --listen tcp://127.0.0.1:0
  flame-stream serve --listen unix:///tmp/flame.sock --data-root /data/tokens --max-job-memory 32GiB
  flame-stream dump --endpoint unix:///tmp/flame.sock --job job.toml --rank 0 --world-size 2 --steps 3 --hash"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Serve jobs until killed. Prints each bound endpoint (TCP port 0 picks one) on stdout; logs go
    /// to stderr (`RUST_LOG`, default `info`).
    ///
    /// Without --data-root, the server opens whatever dataset paths a job names, as the user it runs
    /// as: every client that can connect (with the token, if set) can read any file of that user's that
    /// parses as a dataset.
    Serve {
        /// `unix:///PATH` or `tcp://HOST:PORT`; repeat for several. Default: unix:///tmp/flame-stream.sock.
        #[arg(long)]
        listen: Vec<Endpoint>,
        /// Shared token clients must present (required for a non-loopback TCP address).
        #[arg(long, env = "FLAME_STREAM_TOKEN")]
        token: Option<String>,
        /// Connections served at once.
        #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
        max_connections: usize,
        /// Micro-batches computed ahead per client.
        #[arg(long, default_value_t = DEFAULT_PREFETCH_DEPTH)]
        prefetch: usize,
        /// `HOST:PORT` for Prometheus `/metrics`, `/healthz` and a status page at `/`.
        #[arg(long)]
        metrics: Option<String>,
        /// Jobs may name only datasets under DIR (symlinks and `..` resolved; relative paths are taken
        /// from DIR). Without it, every client is trusted with every file the server can read.
        #[arg(long, value_name = "DIR")]
        data_root: Option<PathBuf>,
        /// Where raw datasets (`dataset = ...` in a job) are prepared once and shared by jobs
        /// (`streaming = false`), and where streamed ones' hub and object-store files are fetched
        /// (`stream-files/`). Default: `$FLAME_CACHE/stream`, else `~/.cache/flame/stream`.
        #[arg(long, value_name = "DIR")]
        cache_dir: Option<PathBuf>,
        /// Disk the streamed datasets' hub and object-store files may take together under the cache
        /// directory, e.g. `100GiB`: each file is fetched as the stream reaches it (the next one ahead),
        /// and the least recently used files not being read are deleted to make room. A file larger
        /// than this, or one that does not fit beside the files being read, is an error for its job.
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_STREAM_CACHE_BYTES)]
        stream_cache_bytes: ByteSize,
        /// Memory all open jobs' state may take together (Megatron's indices, flame's caches; mapped
        /// files not counted), e.g. `8GiB`: a job that would exceed it is refused, after jobs without
        /// sessions are dropped to make room.
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_JOB_MEMORY)]
        max_job_memory: ByteSize,
        /// Memory all sessions' shared-memory rings and prefetched micro-batches may take together: a
        /// ring that would exceed it is refused, and prefetching waits for room. Each connection also
        /// holds the micro-batch it is serving (at most 1 GiB).
        #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_SESSION_MEMORY)]
        max_session_memory: ByteSize,
        /// Seconds a job is kept open after its last session leaves (reopening it costs its start-up); 0
        /// drops it as soon as that session ends.
        #[arg(long, value_name = "SECONDS", default_value_t = DEFAULT_JOB_IDLE.as_secs())]
        job_idle_seconds: u64,
    },
    /// Print one JSON line per micro-batch a rank receives.
    Dump {
        /// The server.
        #[arg(long)]
        endpoint: Endpoint,
        /// The job spec (TOML).
        #[arg(long)]
        job: PathBuf,
        /// This rank.
        #[arg(long, default_value_t = 0)]
        rank: u32,
        /// Ranks in the job.
        #[arg(long, default_value_t = 1)]
        world_size: u32,
        /// First step.
        #[arg(long, default_value_t = 0)]
        start_step: u64,
        /// Steps to print.
        #[arg(long, default_value_t = 1)]
        steps: u64,
        /// Print a SHA-256 per sample instead of its tokens.
        #[arg(long)]
        hash: bool,
        /// Receive batches through a shared-memory ring of this many slots (unix:// endpoints).
        #[arg(long)]
        shared_memory: Option<u32>,
        /// Shared token.
        #[arg(long, env = "FLAME_STREAM_TOKEN")]
        token: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("flame-stream: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve {
            mut listen,
            token,
            max_connections,
            prefetch,
            metrics,
            data_root,
            cache_dir,
            stream_cache_bytes,
            max_job_memory,
            max_session_memory,
            job_idle_seconds,
        } => {
            if listen.is_empty() {
                listen.push(Endpoint::Unix("/tmp/flame-stream.sock".into()));
            }
            let running = serve(&ServerConfig {
                listen,
                token,
                max_connections,
                prefetch_depth: prefetch,
                metrics,
                max_job_memory: max_job_memory.0,
                max_session_memory: max_session_memory.0,
                job_idle: std::time::Duration::from_secs(job_idle_seconds),
                data_root,
                cache_dir: cache_dir.unwrap_or_else(default_cache_dir),
                stream_cache_bytes: stream_cache_bytes.0,
                ..ServerConfig::default()
            })?;
            let mut stdout = std::io::stdout().lock();
            for endpoint in &running.endpoints {
                writeln!(stdout, "listening on {endpoint}")?;
            }
            if let Some(addr) = running.metrics {
                writeln!(stdout, "metrics on http://{addr}/metrics")?;
            }
            stdout.flush()?;
            drop(stdout);
            loop {
                std::thread::park();
            }
        }
        Command::Dump {
            endpoint,
            job,
            rank,
            world_size,
            start_step,
            steps,
            hash,
            shared_memory,
            token,
        } => {
            let text = std::fs::read_to_string(&job)
                .map_err(|e| anyhow::anyhow!("{}: {e}", job.display()))?;
            let spec =
                JobSpec::from_toml(&text).map_err(|e| anyhow::anyhow!("{}: {e}", job.display()))?;
            let mut client =
                Client::connect(endpoint, &spec, rank, world_size, token.as_deref(), 8)?;
            if let Some(slots) = shared_memory {
                client.open_shared_memory(slots)?;
            }
            let mut stdout = std::io::stdout().lock();
            for step in start_step..start_step + steps {
                for micro_step in 0..u64::from(client.micro_steps) {
                    let samples = client.micro_batch(step, micro_step)?;
                    let mut line = serde_json::json!({
                        "step": step,
                        "micro_step": micro_step,
                        "rank": rank,
                        "samples": samples.iter().map(|s| serde_json::json!({"dataset": s.dataset, "index": s.index})).collect::<Vec<_>>(),
                        "cu_seqlens": samples.iter().map(|s| s.cu_seqlens.clone()).collect::<Vec<_>>(),
                    });
                    if hash {
                        line["sha256"] = samples
                            .iter()
                            .map(|s| {
                                let bytes: Vec<u8> =
                                    s.tokens.iter().flat_map(|t| t.to_le_bytes()).collect();
                                hex::encode(sha2::Sha256::digest(&bytes))
                            })
                            .collect();
                    } else {
                        line["tokens"] = samples.iter().map(|s| s.tokens.clone()).collect();
                    }
                    writeln!(stdout, "{line}")?;
                }
            }
            Ok(())
        }
    }
}
