//! The server seen by clients: ranks receive exactly the stream's micro-batches over Unix and TCP
//! sockets; bad tokens, malformed frames and impossible requests close that connection with an error
//! while the server carries on; `flame-stream dump` prints what a rank receives.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;

use flame_formats::TokenDtype;
use flame_formats::megatron::IndexedDatasetBuilder;
use flame_streamer::async_client::AsyncClient;
use flame_streamer::client::{Client, ClientError};
use flame_streamer::protocol::{Limits, Message, VERSION, encode};
use flame_streamer::server::{Endpoint, ServerConfig, serve};
use flame_streamer::spec::JobSpec;
use flame_streamer::stream::Stream;

use crate::raw::{hello, http_get, metric, raw_exchange, wait_for_metric};
use crate::util::spawn_server;

pub fn write_dataset(prefix: &Path, seed: u32) {
    let mut builder = IndexedDatasetBuilder::create(prefix, TokenDtype::Uint16).unwrap();
    for d in 0..400u32 {
        let doc: Vec<u32> = (0..=(d * 37 + seed) % 300)
            .map(|t| (d * 131 + t + seed) % 50_000)
            .collect();
        builder.add_item(&doc).unwrap();
        builder.end_document().unwrap();
    }
    builder.finalize().unwrap();
}

pub fn job(dir: &Path) -> JobSpec {
    write_dataset(&dir.join("a"), 1);
    write_dataset(&dir.join("b"), 2);
    JobSpec::from_toml(&format!(
        r#"
        seed = 3
        seq_len = 64
        context_len = 32
        micro_batch_size = 2
        global_batch_size = 8
        [[datasets]]
        path = "{}"
        weight = 0.7
        [[datasets]]
        path = "{}"
        weight = 0.3
        "#,
        dir.join("a").display(),
        dir.join("b").display()
    ))
    .unwrap()
}

pub fn start(dir: &Path, token: Option<&str>) -> Vec<Endpoint> {
    serve(&ServerConfig {
        listen: vec![
            Endpoint::Unix(dir.join("s.sock")),
            Endpoint::Tcp("127.0.0.1:0".into()),
        ],
        token: token.map(str::to_owned),
        max_connections: 64,
        prefetch_depth: 3,
        ..ServerConfig::default()
    })
    .unwrap()
    .endpoints
}

#[test]
fn every_rank_receives_its_slice_of_the_stream_over_both_transports() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let reference = Stream::open(spec.clone()).unwrap();
    for endpoint in start(dir.path(), None) {
        for rank in 0..2 {
            let mut client = Client::connect(endpoint.clone(), &spec, rank, 2, None, 0).unwrap();
            assert_eq!(client.fingerprint, spec.fingerprint());
            assert_eq!(client.micro_steps, 2);
            // In order (served by the prefetch thread), repeated, and jumping back and forth.
            for (step, micro) in [
                (0, 0),
                (0, 1),
                (1, 0),
                (1, 0),
                (5, 1),
                (1000, 0),
                (1000, 1),
                (0, 0),
            ] {
                let got = client.micro_batch(step, micro).unwrap();
                let want = reference.micro_batch(step, micro, rank, 2).unwrap();
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!((g.index, g.dataset as usize), (w.index, w.dataset));
                    assert_eq!((&g.tokens, &g.cu_seqlens), (&w.tokens, &w.cu_seqlens));
                }
            }
        }
    }
}

#[test]
fn shared_memory_serves_the_same_batches_in_place_from_a_private_read_only_ring() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let reference = Stream::open(spec.clone()).unwrap();
    let endpoints = start(dir.path(), None);
    let mut client = Client::connect(endpoints[0].clone(), &spec, 1, 2, None, 0).unwrap();
    client.open_shared_memory(2).unwrap();
    // The batch lies in an anonymous memfd (nothing named in /dev/shm), mapped shared and read-only.
    let address = client.micro_batch_in_place(0, 0).unwrap().tokens().as_ptr() as usize;
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mapping = maps
        .lines()
        .find(|l| {
            let (range, _) = l.split_once(' ').unwrap();
            let (lo, hi) = range.split_once('-').unwrap();
            (usize::from_str_radix(lo, 16).unwrap()..usize::from_str_radix(hi, 16).unwrap())
                .contains(&address)
        })
        .unwrap();
    assert!(
        mapping.contains(" r--s ") && mapping.contains("/memfd:flame-stream-ring"),
        "{mapping}"
    );
    for (step, micro) in [(0, 0), (0, 1), (1, 0), (7, 1), (7, 1), (0, 0)] {
        let want = reference.micro_batch(step, micro, 1, 2).unwrap();
        let batch = client.micro_batch_in_place(step, micro).unwrap();
        assert_eq!(
            (batch.step(), batch.micro_step(), batch.len()),
            (step, micro, want.len())
        );
        assert_eq!(batch.tokens_per_sample(), 64);
        for (i, w) in want.iter().enumerate() {
            assert_eq!(
                (batch.index(i), batch.dataset(i) as usize),
                (w.index, w.dataset)
            );
            assert_eq!(batch.sample_tokens(i), w.tokens.as_slice());
            assert_eq!(batch.cu_seqlens(i), w.cu_seqlens.as_slice());
        }
        let flat: Vec<u32> = want.iter().flat_map(|w| w.tokens.clone()).collect();
        assert_eq!(batch.tokens(), flat.as_slice());
    }
    // The copying call gives the same samples over the ring.
    let copied = client.micro_batch(3, 1).unwrap();
    assert_eq!(
        copied[0].tokens,
        reference.micro_batch(3, 1, 1, 2).unwrap()[0].tokens
    );
    // Shared memory is for the server's host: not over TCP.
    let mut tcp = Client::connect(endpoints[1].clone(), &spec, 0, 1, None, 0).unwrap();
    assert!(
        tcp.open_shared_memory(2)
            .unwrap_err()
            .to_string()
            .contains("unix://")
    );
}

#[test]
fn the_async_client_receives_the_same_batches_over_every_transport() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let reference = Stream::open(spec.clone()).unwrap();
    let endpoints = start(dir.path(), None);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for (endpoint, shared_memory) in [
        (&endpoints[0], false),
        (&endpoints[1], false),
        (&endpoints[0], true),
    ] {
        runtime.block_on(async {
            let mut client = AsyncClient::connect(endpoint.clone(), &spec, 1, 2, None, 0)
                .await
                .unwrap();
            assert_eq!(
                (client.micro_steps, client.fingerprint.clone()),
                (2, spec.fingerprint())
            );
            if shared_memory {
                client.open_shared_memory(2).await.unwrap();
                let batch = client.micro_batch_in_place(4, 1).await.unwrap();
                let want = reference.micro_batch(4, 1, 1, 2).unwrap();
                assert_eq!(batch.sample_tokens(1), want[1].tokens.as_slice());
            }
            for (step, micro) in [(0, 0), (0, 1), (1, 0), (9, 1), (0, 0)] {
                let got = client.micro_batch(step, micro).await.unwrap();
                let want = reference.micro_batch(step, micro, 1, 2).unwrap();
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(
                        (g.index, &g.tokens, &g.cu_seqlens),
                        (w.index, &w.tokens, &w.cu_seqlens)
                    );
                }
            }
            let err = client.micro_batch(0, 7).await.unwrap_err();
            assert!(err.to_string().contains("micro-step 7"), "{err}");
        });
    }
}

#[test]
fn a_client_that_breaks_the_ring_rules_is_cut_off_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let endpoints = start(dir.path(), None);
    let Endpoint::Unix(socket) = &endpoints[0] else {
        panic!()
    };
    let hello = hello(&spec);
    let frames = |messages: &[Message]| {
        let mut bytes = hello.clone();
        for m in messages {
            encode(m, &mut bytes);
        }
        bytes
    };
    let request = |step| Message::Request {
        step,
        micro_step: 0,
    };
    for (messages, reason) in [
        (vec![Message::ShmOpen { slots: 0 }], "1..=64"),
        (vec![Message::ShmOpen { slots: 65 }], "1..=64"),
        (
            vec![Message::Release { slot: 0 }],
            "without a shared-memory ring",
        ),
        (
            vec![Message::ShmOpen { slots: 1 }, Message::Release { slot: 0 }],
            "does not hold",
        ),
        // Holding the only slot and asking for more.
        (
            vec![Message::ShmOpen { slots: 1 }, request(0), request(1)],
            "holds all 1 slots",
        ),
    ] {
        let answer = raw_exchange(socket, &frames(&messages));
        let Some(Message::Error { message }) = answer.last() else {
            panic!("{messages:?}: {answer:?}")
        };
        assert!(message.contains(reason), "{message}");
    }
    // Released in time, the same client gets every batch.
    let answer = raw_exchange(
        socket,
        &frames(&[
            Message::ShmOpen { slots: 1 },
            request(0),
            Message::Release { slot: 0 },
            request(1),
        ]),
    );
    assert!(
        matches!(
            answer.as_slice(),
            [
                Message::Welcome { .. },
                Message::ShmReady { .. },
                Message::Slot { slot: 0, .. },
                Message::Slot {
                    slot: 0,
                    step: 1,
                    ..
                }
            ]
        ),
        "{answer:?}"
    );
    let mut fine = Client::connect(endpoints[0].clone(), &spec, 0, 1, None, 0).unwrap();
    fine.open_shared_memory(1).unwrap();
    assert_eq!(fine.micro_batch_in_place(2, 3).unwrap().len(), 2);
}

#[test]
fn sixty_four_concurrent_clients_each_get_exactly_their_slice() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = job(dir.path());
    spec.global_batch_size = 128; // 64 ranks × micro-batches of 2
    let reference = Arc::new(Stream::open(spec.clone()).unwrap());
    let endpoints = start(dir.path(), None);
    let steps = 6;
    let handles: Vec<_> = (0..64u32)
        .map(|rank| {
            let (spec, reference) = (spec.clone(), Arc::clone(&reference));
            // A third each over TCP, the Unix socket, and shared memory.
            let endpoint = endpoints[usize::from(rank % 3 == 0)].clone();
            std::thread::spawn(move || {
                let mut client = Client::connect(endpoint, &spec, rank, 64, None, 3).unwrap();
                if rank % 3 == 1 {
                    client.open_shared_memory(3).unwrap();
                }
                let mut indices = Vec::new();
                for step in 0..steps {
                    let got = client.micro_batch(step, 0).unwrap();
                    let want = reference.micro_batch(step, 0, rank, 64).unwrap();
                    assert_eq!(got.len(), want.len());
                    for (g, w) in got.iter().zip(&want) {
                        assert_eq!(
                            (g.index, &g.tokens, &g.cu_seqlens),
                            (w.index, &w.tokens, &w.cu_seqlens)
                        );
                        indices.push(g.index);
                    }
                }
                indices
            })
        })
        .collect();
    let mut all: Vec<u64> = handles
        .into_iter()
        .flat_map(|h| h.join().unwrap())
        .collect();
    all.sort_unstable();
    // Together the ranks read every sample of the steps exactly once.
    assert_eq!(all, (0..steps * 128).collect::<Vec<_>>());
}

#[test]
fn bad_clients_get_an_error_and_the_server_carries_on() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let endpoints = start(dir.path(), Some("sesame"));
    let Endpoint::Unix(socket) = &endpoints[0] else {
        panic!()
    };

    let wrong = Client::connect(endpoints[0].clone(), &spec, 0, 1, Some("guess"), 0).unwrap_err();
    assert!(
        matches!(&wrong, ClientError::Refused(m) if m.contains("wrong token")),
        "{wrong}"
    );
    let shape = Client::connect(endpoints[0].clone(), &spec, 0, 3, Some("sesame"), 0).unwrap_err();
    assert!(shape.to_string().contains("not a multiple"), "{shape}");

    for garbage in [
        &b"\x05\x00\x00\x00\x01FLMX"[..],
        b"\xff\xff\xff\xff",
        b"\x01\x00\x00\x00\x09",
    ] {
        let answer = raw_exchange(socket, garbage);
        assert!(
            matches!(answer.as_slice(), [Message::Error { .. }]),
            "{garbage:?}: {answer:?}"
        );
    }
    // An impossible request ends that connection only.
    let mut client = Client::connect(endpoints[1].clone(), &spec, 1, 2, Some("sesame"), 0).unwrap();
    assert!(
        client
            .micro_batch(0, 9)
            .unwrap_err()
            .to_string()
            .contains("micro-step 9")
    );
    let mut fine = Client::connect(endpoints[0].clone(), &spec, 0, 1, Some("sesame"), 0).unwrap();
    assert_eq!(fine.micro_batch(2, 3).unwrap().len(), 2);
}

#[test]
fn dump_prints_one_json_line_per_micro_batch() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, spec.to_toml()).unwrap();
    let endpoints = start(dir.path(), None);
    let reference = Stream::open(spec).unwrap();
    let dump_from = |endpoint: &Endpoint, extra: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_flame-stream"))
            .args(["dump", "--endpoint", &endpoint.to_string(), "--job"])
            .arg(&job_file)
            .args([
                "--rank",
                "1",
                "--world-size",
                "2",
                "--start-step",
                "4",
                "--steps",
                "2",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
            .collect::<Vec<_>>()
    };
    let dump = |extra: &[&str]| dump_from(&endpoints[1], extra);
    let lines = dump(&[]);
    assert_eq!(lines.len(), 4, "2 steps × 2 micro-steps");
    for line in &lines {
        let (step, micro) = (
            line["step"].as_u64().unwrap(),
            line["micro_step"].as_u64().unwrap(),
        );
        let want = reference.micro_batch(step, micro, 1, 2).unwrap();
        assert_eq!(line["rank"], 1);
        for (i, sample) in want.iter().enumerate() {
            assert_eq!(line["samples"][i]["index"], sample.index);
            assert_eq!(line["samples"][i]["dataset"], sample.dataset);
            assert_eq!(line["tokens"][i], serde_json::json!(sample.tokens));
            assert_eq!(line["cu_seqlens"][i], serde_json::json!(sample.cu_seqlens));
        }
    }
    let hashed = dump(&["--hash"]);
    assert_eq!(hashed.len(), 4);
    assert!(hashed[0]["tokens"].is_null());
    assert_eq!(hashed[0]["sha256"][0].as_str().unwrap().len(), 64);
    // The same lines through a shared-memory ring on the Unix socket.
    assert_eq!(dump_from(&endpoints[0], &["--shared-memory", "2"]), lines);
}

#[test]
fn a_client_carries_on_exactly_across_a_kill_9_and_restart_of_the_server() {
    for shared_memory in [false, true] {
        kill_9_and_restart(shared_memory);
    }
}

fn kill_9_and_restart(shared_memory: bool) {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let socket = dir.path().join("server.sock");
    let reference = Stream::open(spec.clone()).unwrap();
    let mut server = spawn_server(&socket, &[], &[]);
    let mut client =
        Client::connect(Endpoint::Unix(socket.clone()), &spec, 0, 1, None, 20).unwrap();
    if shared_memory {
        // The ring of the killed server dies with it; the reconnection opens a new one.
        client.open_shared_memory(2).unwrap();
    }
    let mut received = Vec::new();
    for step in 0..3 {
        for micro in 0..4 {
            received.extend(client.micro_batch(step, micro).unwrap());
        }
        if step == 1 {
            // kill -9: the socket file stays behind, stale; the new server must replace it.
            server.kill().unwrap();
            server.wait().unwrap();
            assert!(socket.exists());
            server = spawn_server(&socket, &[], &[]);
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    for (k, sample) in received.iter().enumerate() {
        let want = reference.sample(k as u64).unwrap();
        assert_eq!(
            (sample.index, &sample.tokens),
            (want.index, &want.tokens),
            "sample {k}"
        );
    }
    assert_eq!(received.len(), 24);
}

#[test]
fn metrics_count_batches_tokens_per_dataset_lag_and_clients() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let running = serve(&ServerConfig {
        listen: vec![Endpoint::Unix(dir.path().join("m.sock"))],
        token: None,
        max_connections: 8,
        prefetch_depth: 2,
        metrics: Some("127.0.0.1:0".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    let addr = running.metrics.unwrap();
    let mut rank0 = Client::connect(running.endpoints[0].clone(), &spec, 0, 2, None, 0).unwrap();
    let mut rank1 = Client::connect(running.endpoints[0].clone(), &spec, 1, 2, None, 0).unwrap();
    // Without reading ahead, the server has sent exactly what was asked for when the answer arrives.
    rank0.set_read_ahead(false);
    rank1.set_read_ahead(false);
    let mut tokens0 = [0u64; 2];
    for step in 0..3 {
        for micro in 0..2 {
            for s in rank0.micro_batch(step, micro).unwrap() {
                tokens0[s.dataset as usize] += s.tokens.len() as u64;
            }
        }
    }
    rank1.micro_batch(0, 0).unwrap();
    let text = http_get(addr, "/metrics");
    let fp = spec.fingerprint();
    let labels = |rank| format!("{{job=\"{fp}\",rank=\"{rank}\"");
    assert_eq!(
        metric(&text, &format!("flame_stream_batches_total{}}}", labels(0))),
        6
    );
    assert_eq!(
        metric(&text, &format!("flame_stream_batches_total{}}}", labels(1))),
        1
    );
    for (d, &t) in tokens0.iter().enumerate() {
        assert_eq!(
            metric(
                &text,
                &format!(
                    "flame_stream_dataset_tokens_total{},dataset=\"{d}\"}}",
                    labels(0)
                )
            ),
            t
        );
    }
    assert_eq!(
        metric(&text, &format!("flame_stream_tokens_total{}}}", labels(0))),
        tokens0.iter().sum::<u64>()
    );
    assert_eq!(
        metric(&text, &format!("flame_stream_lag_steps{}}}", labels(1))),
        2
    );
    assert_eq!(
        metric(&text, &format!("flame_stream_clients{}}}", labels(0))),
        1
    );
    assert_eq!(metric(&text, "flame_stream_connections "), 2);
    assert!(http_get(addr, "/healthz").ends_with("ok\n"));
    let page = http_get(addr, "/");
    assert!(page.contains("<table") && page.contains(&fp), "{page}");
    let not_found = http_get(addr, "/nope");
    assert!(
        not_found.lines().next().unwrap().contains(" 404 "),
        "{not_found}"
    );
}

#[test]
fn a_server_that_keeps_dropping_the_connection_is_given_up_on() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let socket = dir.path().join("dropper.sock");
    let listener = std::os::unix::net::UnixListener::bind(&socket).unwrap();
    // Welcomes every client, reads its request, and hangs up without an answer.
    std::thread::spawn(move || {
        for mut conn in listener.incoming().flatten() {
            let mut buf = [0u8; 4096];
            let _ = conn.read(&mut buf);
            let mut welcome = Vec::new();
            flame_streamer::protocol::encode(
                &Message::Welcome {
                    version: flame_streamer::protocol::VERSION,
                    fingerprint: "x".into(),
                    seq_len: 64,
                    micro_steps: 4,
                },
                &mut welcome,
            );
            let _ = conn.write_all(&welcome);
            let _ = conn.read(&mut buf);
        }
    });
    let mut client = Client::connect(Endpoint::Unix(socket), &spec, 0, 1, None, 2).unwrap();
    let err = client.micro_batch(0, 0).unwrap_err();
    assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
    assert!(err.to_string().contains("dropped 3 times"), "{err}");
}

/// A `DataLoader` worker of `W` asks for every `W`-th micro-batch, the next one along with each request;
/// the server prepares ahead at the stride of the client's last two requests, so each request after the
/// second is served from what was prepared and nothing prepared is thrown away. A client that asks for
/// every micro-batch in turn is served as before.
#[test]
fn the_server_prefetches_at_the_stride_the_client_asks_at() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let running = serve(&ServerConfig {
        listen: vec![Endpoint::Unix(dir.path().join("stride.sock"))],
        prefetch_depth: 1,
        metrics: Some("127.0.0.1:0".into()),
        ..ServerConfig::default()
    })
    .unwrap();
    let (Endpoint::Unix(socket), Some(addr)) = (&running.endpoints[0], running.metrics) else {
        panic!()
    };
    let fp = spec.fingerprint();
    // Rank 0 as worker 1 of 3 (micro-batches 1, 4, 7, ... of 2 a step), rank 1 in turn.
    for (rank, first, stride) in [(0u32, 1u64, 3u64), (1, 0, 1)] {
        let counter = |name: &str| format!("flame_stream_{name}{{job=\"{fp}\",rank=\"{rank}\"}} ");
        let at = |k: u64| {
            let position = first + k * stride;
            (position / 2, position % 2)
        };
        let request = |k: u64| {
            let (step, micro_step) = at(k);
            Message::Request { step, micro_step }
        };
        let mut conn = UnixStream::connect(socket).unwrap();
        let mut hello = Vec::new();
        encode(
            &Message::Hello {
                version: VERSION,
                token: Vec::new(),
                job: spec.to_toml(),
                rank,
                world_size: 2,
            },
            &mut hello,
        );
        conn.write_all(&hello).unwrap();
        let mut buf = Vec::new();
        let mut read = |conn: &mut UnixStream| {
            flame_streamer::transport::read_message(conn, &mut buf, Limits::SERVER_FRAMES)
                .unwrap()
                .unwrap()
        };
        assert!(matches!(read(&mut conn), Message::Welcome { .. }));
        // The first request and, in the same write, the one made ahead.
        let mut frames = Vec::new();
        encode(&request(0), &mut frames);
        encode(&request(1), &mut frames);
        conn.write_all(&frames).unwrap();
        let batches = 8;
        for k in 0..batches {
            if k >= 2 {
                // The server has prepared one ahead (the depth) since it answered the last request.
                wait_for_metric(addr, &counter("prefetched_total"), k - 1);
                let mut frame = Vec::new();
                encode(&request(k), &mut frame);
                conn.write_all(&frame).unwrap();
            }
            let Message::Batch {
                step, micro_step, ..
            } = read(&mut conn)
            else {
                panic!("rank {rank}: no batch for {:?}", at(k))
            };
            assert_eq!((step, micro_step), at(k));
        }
        wait_for_metric(addr, &counter("prefetched_total"), batches - 1);
        let text = http_get(addr, "/metrics");
        assert_eq!(metric(&text, &counter("batches_total")), batches);
        assert_eq!(
            metric(&text, &counter("prefetch_discarded_total")),
            0,
            "rank {rank}, stride {stride}: prepared for nothing\n{text}"
        );
    }
}
