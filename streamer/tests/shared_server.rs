//! Issue 16, "The server is shared by many jobs: no client may hurt it or see what it should not": a job
//! may name only datasets under `--data-root`; job state stays within `--max-job-memory`; no size a
//! client controls crashes the server or makes it allocate without bound; jobs without sessions are
//! dropped; session errors are logged on the server.

use std::io::{BufRead, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use flame_formats::TokenDtype;
use flame_formats::megatron::IndexedDatasetBuilder;
use flame_streamer::client::Client;
use flame_streamer::protocol::{Message, VERSION, encode};
use flame_streamer::server::{Endpoint, ServerConfig, serve};

use crate::raw::{http_get, metric, raw_exchange, wait_for_metric};
use crate::server::write_dataset;

/// A job over `paths` (flame's order unless `extra` says otherwise).
fn job_toml(paths: &[&str], extra: &str) -> String {
    let datasets: Vec<String> = paths
        .iter()
        .map(|p| format!("[[datasets]]\npath = {p:?}\n"))
        .collect();
    let datasets = datasets.concat();
    format!(
        "seed = 3\nseq_len = 64\nmicro_batch_size = 2\nglobal_batch_size = 8\n{extra}\n{datasets}"
    )
}

/// `Hello` for `job` as `rank` of `world_size`, then `messages`.
fn frames(job: &str, rank: u32, world_size: u32, messages: &[Message]) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(
        &Message::Hello {
            version: VERSION,
            token: Vec::new(),
            job: job.to_owned(),
            rank,
            world_size,
        },
        &mut bytes,
    );
    for m in messages {
        encode(m, &mut bytes);
    }
    bytes
}

fn request(step: u64, micro_step: u64) -> Message {
    Message::Request { step, micro_step }
}

/// The `Error` a server answered, failing the test on anything else.
fn refusal(answer: &[Message]) -> &str {
    match answer.last() {
        Some(Message::Error { message }) => message,
        _ => panic!("expected an error, got {answer:?}"),
    }
}

fn start(dir: &Path, config: ServerConfig) -> (std::path::PathBuf, Option<std::net::SocketAddr>) {
    let running = serve(&ServerConfig {
        listen: vec![Endpoint::Unix(dir.join("s.sock"))],
        ..config
    })
    .unwrap();
    let Endpoint::Unix(socket) = &running.endpoints[0] else {
        panic!()
    };
    (socket.clone(), running.metrics)
}

#[test]
fn a_job_may_name_only_datasets_under_the_data_root() {
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    std::fs::create_dir_all(&root).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    write_dataset(&root.join("a"), 1);
    write_dataset(&outside.join("b"), 2);
    // A directory and a prefix inside the root that lead out of it.
    std::os::unix::fs::symlink(&outside, root.join("link")).unwrap();
    for ext in ["idx", "bin"] {
        std::os::unix::fs::symlink(
            outside.join(format!("b.{ext}")),
            root.join(format!("evil.{ext}")),
        )
        .unwrap();
    }
    let (socket, _) = start(
        dir.path(),
        ServerConfig {
            data_root: Some(root.clone()),
            ..ServerConfig::default()
        },
    );
    let canonical_root = root.canonicalize().unwrap();
    for inside in ["a", root.join("a").to_str().unwrap(), "link/../root/a"] {
        let answer = raw_exchange(
            &socket,
            &frames(&job_toml(&[inside], ""), 0, 1, &[request(0, 0)]),
        );
        assert!(
            matches!(
                answer.as_slice(),
                [Message::Welcome { .. }, Message::Batch { .. }]
            ),
            "{inside}: {answer:?}"
        );
    }
    for escape in [
        outside.join("b").to_str().unwrap(),
        "../outside/b",
        "link/b",
        "link/../a",
        "evil",
        "/etc/passwd",
    ] {
        // Refused alone, and beside a dataset that is allowed.
        for paths in [vec![escape], vec!["a", escape]] {
            let answer = raw_exchange(&socket, &frames(&job_toml(&paths, ""), 0, 1, &[]));
            let message = refusal(&answer);
            assert!(
                message.contains(&format!("{escape:?}"))
                    && message.contains(&format!(
                        "leads outside the server's data root {}",
                        canonical_root.display()
                    )),
                "{escape}: {message}"
            );
        }
    }
}

/// Review of issue 16: every file of a dataset under the data root is checked before it is opened (a
/// link out of the root to a FIFO would hang the session that opened it; a manifest outside would be
/// read and parsed), and the refusal names only what the client named, not where the link leads.
#[test]
fn links_out_of_the_data_root_are_refused_before_anything_is_opened_or_read() {
    let dir = tempfile::tempdir().unwrap();
    let (root, outside) = (dir.path().join("root"), dir.path().join("outside"));
    std::fs::create_dir_all(root.join("dir")).unwrap();
    std::fs::create_dir_all(root.join("manifest")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    write_dataset(&outside.join("b"), 2);
    let fifo = outside.join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().unwrap();
    assert!(made.success());
    std::fs::write(
        outside.join("manifest.json"),
        "not json: the server must not read it",
    )
    .unwrap();
    let link =
        |target: &Path, name: &str| std::os::unix::fs::symlink(target, root.join(name)).unwrap();
    // A prefix and a directory of prefixes whose .idx is a FIFO outside; a manifest outside.
    link(&fifo, "evil.idx");
    link(&outside.join("b.bin"), "evil.bin");
    link(&fifo, "dir/x.idx");
    link(&outside.join("b.bin"), "dir/x.bin");
    link(&outside.join("manifest.json"), "manifest/manifest.json");
    let (socket, _) = start(
        dir.path(),
        ServerConfig {
            data_root: Some(root.clone()),
            ..ServerConfig::default()
        },
    );
    let outside = outside.canonicalize().unwrap();
    // Named through the directory, a file of the dataset leads out; named itself, the path does.
    for (path, through) in [
        ("evil", " (through its file evil.idx)"),
        ("dir", " (through its file dir/x.idx)"),
        ("manifest", " (through its file manifest/manifest.json)"),
        ("evil.idx", ""),
        ("manifest/manifest.json", ""),
    ] {
        let answer = raw_exchange(&socket, &frames(&job_toml(&[path], ""), 0, 1, &[]));
        let message = refusal(&answer);
        assert_eq!(
            message,
            format!(
                "dataset {path:?} leads outside the server's data root {}{through}",
                root.canonicalize().unwrap().display()
            ),
        );
        assert!(
            !message.contains(outside.to_str().unwrap()),
            "{path}: the link's target told to the client: {message}"
        );
    }
}

#[test]
fn a_job_whose_state_exceeds_the_memory_budget_is_refused_with_the_figures() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("a"), 1);
    let path = dir.path().join("a");
    let path = path.to_str().unwrap();
    let (socket, _) = start(
        dir.path(),
        ServerConfig {
            max_job_memory: 1 << 20,
            ..ServerConfig::default()
        },
    );
    // 100 000 Megatron samples: over 2 MB of sample and shuffle indices. The largest num_samples TOML
    // can say overflows any index (and Megatron's epoch arithmetic).
    for num_samples in [100_000, i64::MAX.cast_unsigned()] {
        let job = job_toml(
            &[path],
            &format!("order = \"megatron\"\nnum_samples = {num_samples}"),
        );
        let answer = raw_exchange(&socket, &frames(&job, 0, 1, &[request(0, 0)]));
        let message = refusal(&answer);
        assert!(
            message.contains("the job's state needs an estimated")
                && message.contains("the server's budget for job state is 1 MiB"),
            "{message}"
        );
    }
    // A job that fits is served.
    let job = job_toml(&[path], "order = \"megatron\"\nnum_samples = 1000");
    let answer = raw_exchange(&socket, &frames(&job, 0, 1, &[request(0, 0)]));
    assert!(
        matches!(
            answer.as_slice(),
            [Message::Welcome { .. }, Message::Batch { .. }]
        ),
        "{answer:?}"
    );
}

#[test]
fn no_size_a_client_controls_crashes_the_server_or_makes_it_allocate_without_bound() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("a"), 1);
    // Long enough for windows of 2^17 tokens.
    let long = dir.path().join("long");
    let mut builder = IndexedDatasetBuilder::create(&long, TokenDtype::Uint16).unwrap();
    builder.add_item(&vec![7; 140_000]).unwrap();
    builder.end_document().unwrap();
    builder.finalize().unwrap();
    let (socket, metrics) = start(
        dir.path(),
        ServerConfig {
            metrics: Some("127.0.0.1:0".into()),
            ..ServerConfig::default()
        },
    );
    let a = dir.path().join("a");
    let job = job_toml(&[a.to_str().unwrap()], "");
    // A world size whose product with the micro-batch overflows 32 bits; the last step there is.
    for (world_size, messages, reason) in [
        (1 << 31, vec![], "not a multiple"),
        (
            1,
            vec![request(u64::MAX, 0)],
            "past the largest sample index",
        ),
        (
            1,
            vec![request(u64::MAX / 8, 3)],
            "past the largest sample index",
        ),
    ] {
        let answer = raw_exchange(&socket, &frames(&job, 0, world_size, &messages));
        let message = refusal(&answer);
        assert!(message.contains(reason), "{message}");
    }
    // 64 slots of 64 samples of 2^17 tokens: a ring of over 4 GiB.
    let wide = job_toml(&[long.to_str().unwrap()], "")
        .replace("seq_len = 64", "seq_len = 131072")
        .replace(
            "micro_batch_size = 2\nglobal_batch_size = 8",
            "micro_batch_size = 64\nglobal_batch_size = 64",
        );
    let answer = raw_exchange(
        &socket,
        &frames(&wide, 0, 1, &[Message::ShmOpen { slots: 64 }]),
    );
    let message = refusal(&answer);
    assert!(
        message.contains("more than the 4 GiB a client may hold"),
        "{message}"
    );
    // A micro-batch larger than any client could receive.
    let huge = job.replace(
        "micro_batch_size = 2\nglobal_batch_size = 8",
        "micro_batch_size = 8388608\nglobal_batch_size = 8388608",
    );
    let message = refusal(&raw_exchange(&socket, &frames(&huge, 0, 1, &[]))).to_owned();
    assert!(
        message.contains("a micro-batch of 8388608 × 64 tokens"),
        "{message}"
    );
    // And the server is none the worse.
    let answer = raw_exchange(&socket, &frames(&job, 0, 1, &[request(5, 1)]));
    assert!(
        matches!(
            answer.as_slice(),
            [Message::Welcome { .. }, Message::Batch { .. }]
        ),
        "{answer:?}"
    );
    assert_eq!(
        metric(
            &http_get(metrics.unwrap(), "/metrics"),
            "flame_stream_connections "
        ),
        0
    );
}

#[test]
fn a_job_without_sessions_is_dropped_after_the_idle_period() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("a"), 1);
    let a = dir.path().join("a");
    let job = job_toml(&[a.to_str().unwrap()], "");
    for (idle, open_after) in [(Duration::ZERO, 0), (Duration::from_hours(1), 1)] {
        let run = tempfile::tempdir().unwrap();
        let (socket, metrics) = start(
            run.path(),
            ServerConfig {
                metrics: Some("127.0.0.1:0".into()),
                job_idle: idle,
                ..ServerConfig::default()
            },
        );
        // The session has ended (and left its job) by the time the server closes the connection.
        let answer = raw_exchange(&socket, &frames(&job, 0, 1, &[request(0, 0)]));
        assert!(matches!(
            answer.as_slice(),
            [Message::Welcome { .. }, Message::Batch { .. }]
        ));
        let text = http_get(metrics.unwrap(), "/metrics");
        assert_eq!(
            metric(&text, "flame_stream_jobs "),
            open_after,
            "idle {idle:?}\n{text}"
        );
        let state = metric(&text, "flame_stream_job_state_bytes ");
        assert_eq!(state > 0, open_after == 1, "{text}");
        // A dropped job's per-rank rows go with it.
        assert_eq!(
            text.contains("flame_stream_clients{"),
            open_after == 1,
            "{text}"
        );
    }
}

#[test]
fn session_errors_are_logged_on_the_server_with_the_peer_job_and_rank() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("logged.sock");
    let mut server = Command::new(env!("CARGO_BIN_EXE_flame-stream"))
        .args(["serve", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(server.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on unix://"), "{line}");
    let missing = dir.path().join("no-such-dataset");
    let job = job_toml(&[missing.to_str().unwrap()], "");
    let fingerprint = flame_streamer::spec::JobSpec::from_toml(&job)
        .unwrap()
        .fingerprint();
    let answer = raw_exchange(&socket, &frames(&job, 1, 2, &[]));
    let message = refusal(&answer).to_owned();
    // The server logs before it answers, so the line is written by now.
    server.kill().unwrap();
    server.wait().unwrap();
    let mut log = String::new();
    server
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut log)
        .unwrap();
    let line = log
        .lines()
        .find(|l| l.contains("Session ended with an error."))
        .unwrap_or_else(|| panic!("no session error in the log:\n{log}"));
    for field in [
        format!("endpoint=unix://{}", socket.display()),
        format!("peer=\"pid {}\"", std::process::id()),
        format!("job=\"{fingerprint}\""),
        "rank=1".to_owned(),
        "world_size=2".to_owned(),
        "no-such-dataset".to_owned(),
    ] {
        assert!(line.contains(&field), "{field} not in {line}");
    }
    assert!(
        line.contains(message.split(':').next().unwrap()),
        "{message} / {line}"
    );
}

/// The job's end is the last micro-batch every rank has, and a request past it, of any rank, is refused
/// with an `Error` that says so (`protocol::END_OF_JOB`), for a job of `num_samples` as for one of
/// `epochs`: clients that do not know the job's length (the Python client of an `epochs` job) stop there.
#[test]
fn a_request_past_the_jobs_end_is_refused_as_the_end_for_every_rank_alike() {
    let dir = tempfile::tempdir().unwrap();
    write_dataset(&dir.path().join("a"), 1);
    let a = dir.path().join("a");
    let (socket, _) = start(dir.path(), ServerConfig::default());
    let epochs_spec =
        flame_streamer::spec::JobSpec::from_toml(&job_toml(&[a.to_str().unwrap()], "epochs = 1"))
            .unwrap();
    let epoch_samples = flame_streamer::stream::Stream::open(epochs_spec)
        .unwrap()
        .num_samples()
        .unwrap();
    // 10 samples: micro-step (1, 0) of 2 ranks holds samples 8..12, rank 0's 8..10 and rank 1's 10..12:
    // it is past the end for both.
    for (extra, num_samples) in [("num_samples = 10", 10), ("epochs = 1", epoch_samples)] {
        let job = job_toml(&[a.to_str().unwrap()], extra);
        // Micro-batches of 2 samples, 2 ranks: 4 samples a micro-step, 2 micro-steps a step.
        let complete = num_samples / 4;
        let last = ((complete - 1) / 2, (complete - 1) % 2);
        let past = (complete / 2, complete % 2);
        for rank in 0..2 {
            let answer = raw_exchange(
                &socket,
                &frames(
                    &job,
                    rank,
                    2,
                    &[request(last.0, last.1), request(past.0, past.1)],
                ),
            );
            assert!(
                matches!(answer[1], Message::Batch { step, micro_step, .. } if (step, micro_step) == last),
                "{extra}, rank {rank}: {answer:?}"
            );
            let message = refusal(&answer);
            assert!(
                message.starts_with(flame_streamer::protocol::END_OF_JOB)
                    && message.contains(&format!("past the job's {num_samples} samples")),
                "{extra}, rank {rank}: {message}"
            );
        }
    }
}

/// Review of issue 16: the sessions' rings and prefetched micro-batches stay within
/// `--max-session-memory` together. A ring that does not fit beside the others is refused with the
/// figures and opens once they are given back; a socket client whose prefetching finds no room is
/// served all the same, on demand.
#[test]
fn the_sessions_rings_and_prefetched_batches_stay_within_their_budget() {
    let dir = tempfile::tempdir().unwrap();
    let spec = crate::server::job(dir.path());
    // Rings of 2 slots of 2 samples of 64 tokens: room for one, and less than a micro-batch beside it.
    let ring = 2 * flame_streamer::shm::slot_bytes(2, 64);
    let frame = flame_streamer::protocol::batch_frame_bound(2, 64);
    let (socket, metrics) = start(
        dir.path(),
        ServerConfig {
            max_session_memory: ring + frame - 1,
            metrics: Some("127.0.0.1:0".into()),
            ..ServerConfig::default()
        },
    );
    let (endpoint, metrics) = (Endpoint::Unix(socket), metrics.unwrap());
    let mut first = Client::connect(endpoint.clone(), &spec, 0, 2, None, 0).unwrap();
    first.open_shared_memory(2).unwrap();
    first.micro_batch_in_place(0, 0).unwrap();
    let mut second = Client::connect(endpoint.clone(), &spec, 1, 2, None, 0).unwrap();
    let refused = second.open_shared_memory(2).unwrap_err().to_string();
    assert!(
        refused.contains("more than the sessions' buffers have left: 8 KiB of")
            && refused.contains("(serve --max-session-memory) are held"),
        "{refused}"
    );
    // Nor can a socket client prepare anything ahead beside the ring: it is served on demand.
    let mut third = Client::connect(endpoint.clone(), &spec, 1, 2, None, 0).unwrap();
    third.set_read_ahead(false);
    for (step, micro_step) in [(0, 0), (0, 1), (1, 0), (1, 1)] {
        assert_eq!(third.micro_batch(step, micro_step).unwrap().len(), 2);
    }
    let text = http_get(metrics, "/metrics");
    let fp = spec.fingerprint();
    assert_eq!(
        metric(
            &text,
            &format!("flame_stream_prefetched_total{{job=\"{fp}\",rank=\"1\"}}")
        ),
        0,
        "{text}"
    );
    assert_eq!(metric(&text, "flame_stream_session_bytes "), ring);
    // Once the first client has gone, its ring is given back and the second one's fits.
    drop((first, third));
    wait_for_metric(metrics, "flame_stream_session_bytes ", 0);
    second.open_shared_memory(2).unwrap();
    assert_eq!(second.micro_batch_in_place(0, 0).unwrap().len(), 2);
}
