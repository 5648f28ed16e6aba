//! The Rust clients seen from outside, through a recording proxy: both read ahead and release slots
//! alike (one sans-IO core drives them), both refuse an answer for another micro-batch, neither panics
//! when it has lost its connection, and an async call dropped mid-exchange costs only its connection.

use std::future::Future;
use std::io::{Read, Write};
use std::path::Path;
use std::sync::{Mutex, mpsc};
use std::task::Poll;

use flame_streamer::async_client::AsyncClient;
use flame_streamer::client::{Client, ClientError};
use flame_streamer::protocol::{Message, VERSION, WireSample, encode};
use flame_streamer::server::Endpoint;
use flame_streamer::spec::JobSpec;
use flame_streamer::stream::Stream;

use crate::server::{job, start};
use crate::util::{Proxy, Trace};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

/// Rank 1 of 2 asks for `asks` through `endpoint` with the blocking or the async client (over a ring of
/// two slots with `shared_memory`), then hangs up.
fn ask(
    endpoint: &Endpoint,
    spec: &JobSpec,
    asynchronous: bool,
    shared_memory: bool,
    asks: &[(u64, u64)],
) -> Vec<Result<Vec<WireSample>, ClientError>> {
    if asynchronous {
        return runtime().block_on(async {
            let mut client = AsyncClient::connect(endpoint.clone(), spec, 1, 2, None, 0)
                .await
                .unwrap();
            if shared_memory {
                client.open_shared_memory(2).await.unwrap();
            }
            let mut got = Vec::new();
            for &(step, micro_step) in asks {
                got.push(client.micro_batch(step, micro_step).await);
            }
            got
        });
    }
    let mut client = Client::connect(endpoint.clone(), spec, 1, 2, None, 0).unwrap();
    if shared_memory {
        client.open_shared_memory(2).unwrap();
    }
    asks.iter()
        .map(|&(step, micro_step)| client.micro_batch(step, micro_step))
        .collect()
}

fn only(mut traces: Vec<Trace>) -> Trace {
    assert_eq!(traces.len(), 1, "one connection: {traces:?}");
    traces.pop().unwrap()
}

#[test]
fn both_clients_ask_for_the_following_micro_batch_with_each_request_and_release_alike() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let reference = Stream::open(spec.clone()).unwrap();
    let endpoints = start(dir.path(), None);
    // In order, then a jump (the answer made ahead is read and thrown away), then the same again.
    let asks = [(0, 0), (0, 1), (1, 0), (3, 1), (3, 1)];
    for shared_memory in [false, true] {
        let mut sent = Vec::new();
        for asynchronous in [false, true] {
            let proxy = Proxy::start(
                &dir.path()
                    .join(format!("p{shared_memory}{asynchronous}.sock")),
                &endpoints[0],
            );
            for (got, &(step, micro_step)) in
                ask(&proxy.endpoint, &spec, asynchronous, shared_memory, &asks)
                    .into_iter()
                    .zip(&asks)
            {
                let want = reference.micro_batch(step, micro_step, 1, 2).unwrap();
                let got = got.unwrap();
                assert_eq!(got.len(), want.len());
                for (g, w) in got.iter().zip(&want) {
                    assert_eq!(
                        (g.index, &g.tokens, &g.cu_seqlens),
                        (w.index, &w.tokens, &w.cu_seqlens)
                    );
                }
            }
            let trace = only(proxy.traces());
            // (4, 0) was never asked for: it was asked ahead, along with (3, 1).
            let mut expected: Vec<String> = [
                "Hello",
                "Request(0,0)",
                "Request(0,1)",
                "Request(1,0)",
                "Request(1,1)",
                "Request(3,1)",
                "Request(4,0)",
                "Request(3,1)",
                "Request(4,0)",
            ]
            .map(str::to_owned)
            .to_vec();
            if shared_memory {
                // Each slot goes back with the next request, after the request for the micro-batch that
                // follows it was made: while the caller still held it. A slot of an answer made ahead
                // and not wanted goes back before the new request.
                let slots = trace.slots();
                let positions: Vec<_> = slots.iter().map(|(at, _)| *at).collect();
                assert_eq!(
                    positions,
                    [
                        (0, 0),
                        (0, 1),
                        (1, 0),
                        (1, 1),
                        (3, 1),
                        (4, 0),
                        (3, 1),
                        (4, 0)
                    ]
                );
                let release = |i: usize| format!("Release({})", slots[i].1);
                expected = [
                    "Hello".into(),
                    "ShmOpen".into(),
                    "Request(0,0)".into(),
                    "Request(0,1)".into(),
                    release(0),
                    "Request(1,0)".into(),
                    release(1),
                    "Request(1,1)".into(),
                    release(2),
                    release(3),
                    "Request(3,1)".into(),
                    "Request(4,0)".into(),
                    release(4),
                    release(5),
                    "Request(3,1)".into(),
                    "Request(4,0)".into(),
                ]
                .to_vec();
            }
            assert_eq!(trace.sent(), expected, "async: {asynchronous}");
            sent.push(trace.to_server);
        }
        assert_eq!(sent[0], sent[1], "the two clients send the same frames");
    }
}

#[test]
fn both_clients_refuse_an_answer_for_another_micro_batch() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let endpoints = start(dir.path(), None);
    // A server that answers with the step moved on by 100.
    let proxy = Proxy::rewriting(&dir.path().join("liar.sock"), &endpoints[0], |m| match m {
        Message::Batch {
            step,
            micro_step,
            samples,
        } => Message::Batch {
            step: step + 100,
            micro_step,
            samples,
        },
        Message::Slot {
            step,
            micro_step,
            slot,
            bytes,
        } => Message::Slot {
            step: step + 100,
            micro_step,
            slot,
            bytes,
        },
        other => other,
    });
    for shared_memory in [false, true] {
        for asynchronous in [false, true] {
            let got = ask(
                &proxy.endpoint,
                &spec,
                asynchronous,
                shared_memory,
                &[(2, 1)],
            );
            let Err(ClientError::Refused(message)) = &got[0] else {
                panic!("{got:?}")
            };
            let kind = if shared_memory { "Slot" } else { "Batch" };
            assert!(
                message.starts_with(&format!(
                    "expected the {kind} of (2, 1), got the {kind} of (102, 1)"
                )),
                "{message}"
            );
        }
    }
}

/// Welcomes one client on `socket`, then goes away for good.
fn serve_once(socket: &Path) -> std::thread::JoinHandle<()> {
    let listener = std::os::unix::net::UnixListener::bind(socket).unwrap();
    let socket = socket.to_owned();
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let _ = conn.read(&mut [0u8; 4096]).unwrap();
        let mut welcome = Vec::new();
        encode(
            &Message::Welcome {
                version: VERSION,
                fingerprint: "x".into(),
                seq_len: 64,
                micro_steps: 2,
            },
            &mut welcome,
        );
        conn.write_all(&welcome).unwrap();
        std::fs::remove_file(&socket).unwrap();
    })
}

#[test]
fn a_client_that_could_not_reconnect_returns_errors_instead_of_panicking() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let socket = dir.path().join("once.sock");
    let endpoint = Endpoint::Unix(socket.clone());

    let server = serve_once(&socket);
    let mut client = Client::connect(endpoint.clone(), &spec, 0, 1, None, 0).unwrap();
    server.join().unwrap();
    let lost = client.micro_batch(0, 0).unwrap_err();
    assert!(matches!(lost, ClientError::Unreachable { .. }), "{lost}");
    // No connection now: each call tries to make one, and says why it cannot.
    for _ in 0..2 {
        let err = client.open_shared_memory(2).unwrap_err();
        assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
        assert!(client.micro_batch_in_place(0, 0).is_err());
    }

    let server = serve_once(&socket);
    runtime().block_on(async {
        let mut client = AsyncClient::connect(endpoint, &spec, 0, 1, None, 0)
            .await
            .unwrap();
        server.join().unwrap();
        let lost = client.micro_batch(0, 0).await.unwrap_err();
        assert!(matches!(lost, ClientError::Unreachable { .. }), "{lost}");
        for _ in 0..2 {
            let err = client.open_shared_memory(2).await.unwrap_err();
            assert!(matches!(err, ClientError::Unreachable { .. }), "{err}");
            assert!(client.micro_batch_in_place(0, 0).await.is_err());
        }
    });
}

/// An async call dropped mid-exchange (its request out, its answer not read) leaves that answer on the
/// connection; the next call is served on a new connection instead of reading it: opening shared memory
/// (which read the stale `Batch` and failed with "expected the Slot") and asking again.
#[test]
fn an_async_call_dropped_mid_exchange_leaves_the_next_call_a_new_connection() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let reference = Stream::open(spec.clone()).unwrap();
    let endpoints = start(dir.path(), None);
    // The first answer is held back until the test lets it through.
    let (let_through, held) = mpsc::channel::<()>();
    let held = Mutex::new(Some(held));
    let proxy = Proxy::rewriting(&dir.path().join("held.sock"), &endpoints[0], move |m| {
        if matches!(m, Message::Batch { .. })
            && let Some(held) = held.lock().unwrap().take()
        {
            held.recv().unwrap();
        }
        m
    });
    runtime().block_on(async {
        let mut client = AsyncClient::connect(proxy.endpoint.clone(), &spec, 1, 2, None, 0)
            .await
            .unwrap();
        {
            let mut call = std::pin::pin!(client.micro_batch(0, 0));
            let polled = std::future::poll_fn(|cx| Poll::Ready(call.as_mut().poll(cx))).await;
            assert!(polled.is_pending(), "its answer is held back");
        }
        let_through.send(()).unwrap();
        client.open_shared_memory(2).await.unwrap();
        for (step, micro_step) in [(0, 0), (0, 1)] {
            let batch = client.micro_batch_in_place(step, micro_step).await.unwrap();
            let want = reference.micro_batch(step, micro_step, 1, 2).unwrap();
            assert_eq!(batch.sample_tokens(0), want[0].tokens.as_slice());
        }
    });
    let traces = proxy.traces();
    assert_eq!(traces.len(), 2, "{traces:?}");
    assert_eq!(
        traces[0].sent(),
        ["Hello", "Request(0,0)", "Request(0,1)"],
        "the dropped call's connection is given up"
    );
    assert_eq!(traces[1].sent()[..3], ["Hello", "ShmOpen", "Request(0,0)"]);
}

#[test]
fn both_clients_report_the_servers_tokens_per_sample_before_the_first_batch() {
    let dir = tempfile::tempdir().unwrap();
    let flame = job(dir.path());
    let mut megatron = flame.clone();
    megatron.order = flame_streamer::spec::Order::Megatron;
    megatron.num_samples = Some(64);
    let endpoints = start(dir.path(), None);
    // Megatron's samples carry one token more than the inputs: its labels' last.
    for (spec, tokens_per_sample) in [(flame, 64), (megatron, 65)] {
        for endpoint in &endpoints {
            let client = Client::connect(endpoint.clone(), &spec, 0, 2, None, 0).unwrap();
            assert_eq!(client.tokens_per_sample, tokens_per_sample, "{endpoint}");
            let client = runtime()
                .block_on(AsyncClient::connect(endpoint.clone(), &spec, 0, 2, None, 0))
                .unwrap();
            assert_eq!(client.tokens_per_sample, tokens_per_sample, "{endpoint}");
        }
    }
}
