//! Raw-text datasets through a live server (issue 19): prepared once into the server's cache
//! (`streaming = false`) and then served exactly as the prepared output is, or streamed with flame-prep's
//! reader and encoder (`streaming = true`); a corrupt record reaches the client as an error naming the
//! file and line while the server serves other jobs on.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use flame_preprocess::tokenize::{BosPolicy, TextEncoder};
use flame_streamer::client::{Client, resume_cursors};
use flame_streamer::protocol::{Limits, Message};
use flame_streamer::server::{Endpoint, ServerConfig, serve};
use flame_streamer::spec::JobSpec;
use flame_streamer::stream::{Stream, open_datasets};

use flame_streamer::transport::{Connection, read_message};

use crate::raw::{hello, http_get, metric};
use crate::util::{python, repo_root, spawn_server};

pub fn gpt2() -> PathBuf {
    repo_root().join("../shared/data/tokenizers/gpt2/tokenizer.json")
}

/// 300 documents of varied length in `dir/raw/part-{0,1}.jsonl`; returns their texts in file order.
fn write_raw(dir: &Path) -> Vec<String> {
    std::fs::create_dir_all(dir.join("raw")).unwrap();
    let texts: Vec<String> = (0..300)
        .map(|d| {
            format!(
                "Document {d}: {}",
                "the quick brown fox jumps over the lazy dog. ".repeat(d % 4 + 1)
            )
        })
        .collect();
    for (part, chunk) in texts.chunks(150).enumerate() {
        let lines: String = chunk
            .iter()
            .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
            .collect();
        std::fs::write(dir.join(format!("raw/part-{part}.jsonl")), lines).unwrap();
    }
    texts
}

fn raw_job(dir: &Path, streaming: bool) -> JobSpec {
    JobSpec::from_toml(&format!(
        r#"
        seed = 5
        seq_len = 128
        micro_batch_size = 2
        global_batch_size = 4
        tokenizer = "{}"
        append_eod = true
        streaming = {streaming}
        [[datasets]]
        dataset = "{}"
        "#,
        gpt2().display(),
        dir.join("raw/*.jsonl").display()
    ))
    .unwrap()
}

pub fn start(dir: &Path) -> Endpoint {
    serve(&ServerConfig {
        listen: vec![Endpoint::Unix(dir.join("s.sock"))],
        cache_dir: dir.join("cache"),
        ..ServerConfig::default()
    })
    .unwrap()
    .endpoints
    .remove(0)
}

pub fn batches(endpoint: &Endpoint, spec: &JobSpec, steps: u64) -> Vec<Vec<u32>> {
    let client = Client::connect(endpoint.clone(), spec, 0, 1, None, 0).unwrap();
    read_batches(client, steps)
}

/// [`batches`] from a client that reconnects (with backoff, up to about 40 s) when its server goes.
fn batches_with_retries(endpoint: &Endpoint, spec: &JobSpec, steps: u64) -> Vec<Vec<u32>> {
    let client = Client::connect(endpoint.clone(), spec, 0, 1, None, 20).unwrap();
    read_batches(client, steps)
}

fn read_batches(mut client: Client, steps: u64) -> Vec<Vec<u32>> {
    (0..steps)
        .flat_map(|step| (0..2).map(move |micro| (step, micro)))
        .map(|(step, micro)| {
            client
                .micro_batch(step, micro)
                .unwrap()
                .into_iter()
                .flat_map(|s| s.tokens)
                .collect()
        })
        .collect()
}

/// The micro-batches of `steps` steps (rank 0 of 1) of `spec` with its raw dataset replaced by the prepared
/// output in `dir`, opened as prepared data.
fn prepared_batches(spec: &JobSpec, dir: &Path, steps: u64) -> Vec<Vec<u32>> {
    let mut prepared = spec.clone();
    prepared.datasets[0] = flame_streamer::spec::DatasetSpec::prepared(dir.to_str().unwrap(), 1.0);
    prepared.tokenizer = None;
    prepared.append_eod = false;
    let reference = Stream::open(prepared).unwrap();
    (0..steps)
        .flat_map(|step| (0..2).map(move |micro| (step, micro)))
        .map(|(s, m)| {
            reference
                .micro_batch(s, m, 0, 1)
                .unwrap()
                .into_iter()
                .flat_map(|s| s.tokens)
                .collect()
        })
        .collect()
}

#[test]
fn a_raw_dataset_is_prepared_once_and_served_as_its_prepared_output() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let endpoint = start(dir.path());
    let spec = raw_job(dir.path(), false);
    let served = batches(&endpoint, &spec, 6);
    // The preparation is flame-prep's output, in the cache, shared by the next job that names it.
    let manifests: Vec<PathBuf> = glob::glob(&format!(
        "{}/cache/prepared/*/**/manifest.json",
        dir.path().display()
    ))
    .unwrap()
    .map(Result::unwrap)
    .collect();
    assert_eq!(manifests.len(), 1, "{manifests:?}");
    assert_eq!(
        served,
        prepared_batches(&spec, manifests[0].parent().unwrap(), 6)
    );
    let mut again = spec.clone();
    again.seed = 6;
    batches(&endpoint, &again, 1);
    let count = glob::glob(&format!("{}/cache/prepared/*", dir.path().display()))
        .unwrap()
        .count();
    assert_eq!(
        count, 1,
        "a second job on the same source and tokenizer shares the preparation"
    );
}

#[test]
fn a_streaming_job_serves_flame_preps_ids_of_every_document() {
    let dir = tempfile::tempdir().unwrap();
    let texts = write_raw(dir.path());
    let endpoint = start(dir.path());
    let spec = raw_job(dir.path(), true);
    let encoder = TextEncoder::load(&gpt2(), BosPolicy::Tokenizer, true, false).unwrap();
    let mut ids = Vec::new();
    let documents: Vec<Vec<u32>> = texts
        .iter()
        .map(|t| {
            encoder.encode(t, &mut ids).unwrap();
            ids.clone()
        })
        .collect();
    let total: usize = documents.iter().map(Vec::len).sum();
    // One pass, as served (samples are windows of 128 tokens; every document ends with EOD, 50256).
    let windows = total / 128;
    let served: Vec<u32> = batches(&endpoint, &spec, (windows / 4) as u64).concat();
    let mut served_documents: Vec<Vec<u32>> = served
        .split_inclusive(|&t| t == 50256)
        .map(<[u32]>::to_vec)
        .collect();
    // Windows are shuffled within global batches, so only whole documents inside the pass are compared:
    // each served document that is whole is one of flame-prep's, and none is served twice.
    served_documents.retain(|d| d.len() > 4 && d.last() == Some(&50256) && documents.contains(d));
    let unique: std::collections::HashSet<&Vec<u32>> = served_documents.iter().collect();
    assert!(
        unique.len() > 200,
        "{} of 300 documents whole",
        unique.len()
    );
    assert_eq!(
        unique.len(),
        served_documents.len(),
        "a document served twice in one pass"
    );
}

#[test]
fn a_corrupt_record_is_an_error_naming_the_file_and_line_and_the_server_serves_on() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let bad = dir.path().join("raw/part-1.jsonl");
    let mut lines: Vec<String> = std::fs::read_to_string(&bad)
        .unwrap()
        .lines()
        .map(str::to_owned)
        .collect();
    lines[3] = "{\"text\": \"cut sh".into();
    std::fs::write(&bad, lines.join("\n") + "\n").unwrap();
    let endpoint = start(dir.path());
    let spec = raw_job(dir.path(), true);
    let mut client = Client::connect(endpoint.clone(), &spec, 0, 1, None, 0).unwrap();
    let err = (0..200u64)
        .find_map(|step| client.micro_batch(step, 0).err())
        .expect("the pass reaches the corrupt line");
    let message = err.to_string();
    assert!(
        message.contains("part-1.jsonl") && message.contains("line 4"),
        "{message}"
    );
    // Another job on the same server is served.
    let mut good = raw_job(dir.path(), true);
    good.datasets[0].dataset = Some(dir.path().join("raw/part-0.jsonl").display().to_string());
    assert_eq!(batches(&endpoint, &good, 2).len(), 4);
}

/// The cursors `streamer/python/tests/check_cursors.py` gets from `endpoint` for `spec` at `step`, after
/// handing it `given`.
fn python_cursors(
    endpoint: &Endpoint,
    dir: &Path,
    spec: &JobSpec,
    step: u64,
    given: Option<&[serde_json::Value]>,
) -> Vec<serde_json::Value> {
    let job = dir.join("cursor-job.toml");
    std::fs::write(&job, spec.to_toml()).unwrap();
    let mut command = std::process::Command::new(python());
    command
        .arg(repo_root().join("streamer/python/tests/check_cursors.py"))
        .arg(endpoint.to_string())
        .arg(&job)
        .arg(step.to_string());
    if let Some(given) = given {
        let file = dir.join("given.json");
        std::fs::write(&file, serde_json::to_vec(given).unwrap()).unwrap();
        command.arg(file);
    }
    let out = command.output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[test]
fn a_fresh_server_given_a_checkpoints_cursors_continues_the_stream() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let first = start(dir.path());
    let spec = raw_job(dir.path(), true);
    let served = batches(&first, &spec, 80);
    let step = 70;
    let cursors = resume_cursors(&first, &spec, (step, &[]), None, 0).unwrap();
    assert_eq!(cursors.len(), 1, "one streamed dataset");
    assert!(cursors[0].1.window > 0);

    // The Python client gets the same cursors.
    let as_json: Vec<serde_json::Value> = cursors
        .iter()
        .map(|(d, c)| {
            serde_json::json!([d, c.window, c.epoch, c.file, c.block, c.document, c.offset])
        })
        .collect();
    assert_eq!(
        python_cursors(&first, dir.path(), &spec, step, None),
        as_json
    );

    let other = tempfile::tempdir().unwrap();
    let fresh = start(other.path());
    assert_eq!(
        python_cursors(&fresh, other.path(), &spec, step, Some(&as_json)),
        as_json
    );
    assert_eq!(
        resume_cursors(&fresh, &spec, (step, &cursors), None, 0).unwrap(),
        cursors
    );
    let mut client = Client::connect(fresh, &spec, 0, 1, None, 0).unwrap();
    for s in step..80 {
        for micro in 0..2 {
            let tokens: Vec<u32> = client
                .micro_batch(s, micro)
                .unwrap()
                .into_iter()
                .flat_map(|s| s.tokens)
                .collect();
            assert_eq!(
                tokens,
                served[usize::try_from(2 * s + micro).unwrap()],
                "step {s}.{micro}"
            );
        }
    }
    // Without cursors, a server asked for a window far past the stream's start refuses: it never replays.
    let third = tempfile::tempdir().unwrap();
    let mut client = Client::connect(start(third.path()), &spec, 0, 1, None, 0).unwrap();
    let err = client.micro_batch(1 << 20, 0).unwrap_err().to_string();
    assert!(err.contains("checkpoint's cursor"), "{err}");
}

/// The lock of `spec`'s first dataset's preparation in `cache`, held (as another server preparing it
/// would) until the returned file is dropped.
fn hold_preparation_lock(spec: &JobSpec, cache: &Path) -> std::fs::File {
    let dir = flame_streamer::raw_text::preparation_dir(spec, &spec.datasets[0], cache);
    std::fs::create_dir_all(&dir).unwrap();
    let lock = std::fs::File::create(dir.join(".lock")).unwrap();
    rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).unwrap();
    lock
}

#[test]
fn clients_waiting_for_a_preparation_hear_its_progress_and_the_status_page_shows_it() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let spec = raw_job(dir.path(), false);
    let label = spec.datasets[0].label().to_owned();
    // Another server is preparing the dataset (the test holds the preparation's lock): this one waits.
    let cache = dir.path().join("cache");
    let lock = hold_preparation_lock(&spec, &cache);
    let running = serve(&ServerConfig {
        listen: vec![Endpoint::Unix(dir.path().join("s.sock"))],
        cache_dir: cache,
        metrics: Some("127.0.0.1:0".into()),
        progress_every: Duration::from_millis(1),
        ..ServerConfig::default()
    })
    .unwrap();
    let status = running.metrics.unwrap();
    let socket = UnixStream::connect(dir.path().join("s.sock")).unwrap();
    // A server that never says how far it is would keep the test waiting: fail instead.
    socket
        .set_read_timeout(Some(Duration::from_mins(1)))
        .unwrap();
    let mut conn: Box<dyn Connection> = Box::new(socket);
    conn.write_all(&hello(&spec)).unwrap();
    let mut buf = Vec::new();
    let mut next = || read_message(conn.as_mut(), &mut buf, Limits::SERVER_FRAMES).unwrap();
    assert_eq!(
        next(),
        Some(Message::Preparing {
            dataset: label.clone(),
            input_bytes: 0,
            total_bytes: 0,
        })
    );
    let line = format!("flame_stream_preparation_input_bytes{{dataset={label:?}}} ");
    assert_eq!(metric(&http_get(status, "/metrics"), &line), 0);
    assert!(http_get(status, "/").contains(&label));
    // The other server is gone: this one prepares, then welcomes the client.
    drop(lock);
    let welcome = loop {
        match next() {
            Some(Message::Preparing { dataset, .. }) => assert_eq!(dataset, label),
            other => break other,
        }
    };
    assert!(
        matches!(welcome, Some(Message::Welcome { .. })),
        "{welcome:?}"
    );
    let metrics = http_get(status, "/metrics");
    assert!(
        !metrics.contains(&line),
        "the preparation ended:\n{metrics}"
    );
}

#[test]
fn a_preparation_cut_by_a_crash_resumes_on_the_restarted_server_and_its_client_waits_through() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let spec = raw_job(dir.path(), false);
    let socket = dir.path().join("s.sock");
    let cache = dir.path().join("cache");
    let cache_arg = ["--cache-dir", cache.to_str().unwrap()];
    // The first server dies (abort(), as abrupt as a kill -9) after tokenizing 100 of the 300 documents.
    let mut first = spawn_server(
        &socket,
        &cache_arg,
        &[("FLAME_PREP_ABORT_AFTER_DOCUMENTS", "100")],
    );
    let client = std::thread::spawn({
        let (socket, spec) = (socket.clone(), spec.clone());
        move || batches_with_retries(&Endpoint::Unix(socket), &spec, 6)
    });
    let died = first.wait().unwrap();
    assert!(!died.success(), "the first server was to abort: {died:?}");
    let mut second = spawn_server(&socket, &cache_arg, &[]);
    let served = client.join().unwrap();
    second.kill().unwrap();
    second.wait().unwrap();
    // What the client got is the dataset prepared without interruption.
    let metrics = flame_streamer::metrics::Metrics::default();
    let straight = dir.path().join("straight");
    let output =
        flame_streamer::raw_text::prepare(&spec, &spec.datasets[0], &straight, &metrics).unwrap();
    assert_eq!(served, prepared_batches(&spec, &output, 6));
}

#[test]
fn a_prepared_dataset_of_another_tokenizer_is_refused_in_a_job_with_raw_datasets() {
    use flame_streamer::file_cache::FileCache;
    use flame_streamer::metrics::Metrics;
    use flame_streamer::spec::DatasetSpec;
    use std::sync::Arc;
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let cache = dir.path().join("cache");
    let metrics = Metrics::default();
    let files = Arc::new(FileCache::new(cache.join("stream-files"), 1 << 30));
    // The same text prepared with the job's tokenizer (GPT-2) and with Mistral's.
    let prepared_with = |tokenizer: &Path, into: &str| {
        let mut spec = raw_job(dir.path(), false);
        spec.tokenizer = Some(tokenizer.to_str().unwrap().to_owned());
        let out = flame_streamer::raw_text::prepare(
            &spec,
            &spec.datasets[0],
            &dir.path().join(into),
            &metrics,
        )
        .unwrap();
        DatasetSpec::prepared(out.to_str().unwrap(), 1.0)
    };
    let same = prepared_with(&gpt2(), "gpt2");
    let mistral = repo_root().join("../shared/data/tokenizers/mistral-7b-v0.1/tokenizer.json");
    let other = prepared_with(&mistral, "mistral");
    let mut spec = raw_job(dir.path(), true);
    spec.datasets.push(same);
    let opened = open_datasets(&spec, None, (&cache, &files), &metrics).unwrap();
    assert_eq!(opened.len(), 2);
    spec.datasets[1] = other;
    let refused = open_datasets(&spec, None, (&cache, &files), &metrics)
        .unwrap_err()
        .to_string();
    assert!(
        refused.contains("was tokenized with") && refused.contains("one tokenizer serves a job"),
        "{refused}"
    );
    assert!(
        refused.contains(&mistral.display().to_string()) || refused.contains("mistral"),
        "{refused}"
    );
}

#[test]
fn a_streaming_client_carries_on_exactly_across_a_kill_9_and_restart_of_the_server() {
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let spec = raw_job(dir.path(), true);
    let expected = batches(&start(dir.path()), &spec, 6);
    let socket = dir.path().join("killed.sock");
    let cache = dir.path().join("killed-cache");
    let cache_arg = ["--cache-dir", cache.to_str().unwrap()];
    let mut server = spawn_server(&socket, &cache_arg, &[]);
    let mut client =
        Client::connect(Endpoint::Unix(socket.clone()), &spec, 0, 1, None, 20).unwrap();
    let mut served = Vec::new();
    for step in 0..6 {
        for micro in 0..2 {
            let batch = client.micro_batch(step, micro).unwrap();
            served.push(
                batch
                    .into_iter()
                    .flat_map(|s| s.tokens)
                    .collect::<Vec<u32>>(),
            );
        }
        if step == 2 {
            server.kill().unwrap();
            server.wait().unwrap();
            server = spawn_server(&socket, &cache_arg, &[]);
        }
    }
    server.kill().unwrap();
    server.wait().unwrap();
    assert_eq!(served, expected);
}

/// The sequences of flame-prep's prepared output of `spec`'s raw dataset, in order.
fn prepared_sequences(spec: &JobSpec, cache: &Path) -> Vec<Vec<u32>> {
    let metrics = flame_streamer::metrics::Metrics::default();
    let mut prepared = spec.clone();
    prepared.streaming = false;
    let dir = flame_streamer::raw_text::prepare(&prepared, &prepared.datasets[0], cache, &metrics)
        .unwrap();
    let corpus = flame_formats::Corpus::open(&dir).unwrap();
    (0..corpus.num_sequences())
        .map(|i| {
            let ids = corpus.sequence(i).unwrap().to_i64_vec();
            ids.into_iter().map(|t| u32::try_from(t).unwrap()).collect()
        })
        .collect()
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]

    /// Both modes over random corpora and window sizes, against flame-prep's encoder: the prepared output
    /// holds each document's ids once, in order; one pass of the streaming job (flame-prep's reader and
    /// encoder in the server's producer) serves windows whose tokens are their pieces' ids, no document
    /// twice, and leaves out only the epoch's last partial window: the same documents as prepared.
    #[test]
    fn both_modes_serve_flame_preps_documents_each_once_per_pass(
        files in proptest::collection::vec(
            proptest::collection::vec("[a-z \n.é中0-9]{0,80}", 1..40), 1..4),
        seq_len in 1u32..48,
    ) {
        use flame_streamer::online::{Cursor, Producer};
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("raw")).unwrap();
        for (f, texts) in files.iter().enumerate() {
            let lines: String = texts
                .iter()
                .map(|t| serde_json::json!({ "text": t }).to_string() + "\n")
                .collect();
            std::fs::write(dir.path().join(format!("raw/part-{f}.jsonl")), lines).unwrap();
        }
        let mut spec = raw_job(dir.path(), true);
        spec.seq_len = seq_len;
        let encoder = TextEncoder::load(&gpt2(), BosPolicy::Tokenizer, true, false).unwrap();
        let ids: Vec<Vec<Vec<u32>>> = files
            .iter()
            .map(|texts| {
                texts
                    .iter()
                    .map(|t| {
                        let mut out = Vec::new();
                        encoder.encode(t, &mut out).unwrap();
                        out
                    })
                    .collect()
            })
            .collect();
        // Prepared: every document with ids, in order (one without ids has no sequence).
        let expected: Vec<Vec<u32>> = ids.iter().flatten().filter(|d| !d.is_empty()).cloned().collect();
        proptest::prop_assert_eq!(prepared_sequences(&spec, &dir.path().join("cache")), expected);
        let total: usize = ids.iter().flatten().map(Vec::len).sum();
        proptest::prop_assume!(total >= seq_len as usize);
        // Streamed: the first pass's windows (those after which the producer is still in epoch 0).
        let config = flame_streamer::raw_text::streaming_config(
            &spec,
            &spec.datasets[0],
            &dir.path().join("listings"),
        )
        .unwrap();
        let files_cache = std::sync::Arc::new(flame_streamer::file_cache::FileCache::new(
            dir.path().join("files"),
            1 << 30,
        ));
        let source = flame_streamer::raw_text::raw_source(&config, &files_cache, None).unwrap();
        let mut producer = Producer::new(source, (seq_len, 3), Cursor::default());
        let mut served: std::collections::BTreeMap<(usize, usize), Vec<std::ops::Range<u64>>> =
            std::collections::BTreeMap::new();
        loop {
            let window = producer.next_window().unwrap();
            if producer.cursor().epoch > 0 {
                break;
            }
            let mut tokens = Vec::new();
            for piece in &window.pieces {
                let file = usize::try_from(piece.document >> 40).unwrap();
                let record = usize::try_from(piece.document & ((1 << 40) - 1)).unwrap();
                let range = usize::try_from(piece.tokens.start).unwrap()
                    ..usize::try_from(piece.tokens.end).unwrap();
                tokens.extend_from_slice(&ids[file][record][range]);
                served.entry((file, record)).or_default().push(piece.tokens.clone());
            }
            proptest::prop_assert_eq!(&window.tokens, &tokens);
        }
        let mut left_out = 0;
        for (file, documents) in ids.iter().enumerate() {
            for (record, document) in documents.iter().enumerate() {
                let mut ranges = served.remove(&(file, record)).unwrap_or_default();
                ranges.sort_by_key(|r| r.start);
                let mut at = 0;
                for r in &ranges {
                    proptest::prop_assert_eq!(r.start, at, "document {}/{} served twice or with a gap", file, record);
                    at = r.end;
                }
                left_out += document.len() - usize::try_from(at).unwrap();
            }
        }
        proptest::prop_assert!(served.is_empty(), "documents that do not exist: {:?}", served.keys());
        proptest::prop_assert!(left_out < seq_len as usize, "{} tokens left out of the pass", left_out);
    }
}

#[test]
fn the_python_client_logs_a_preparations_progress_and_then_reads_its_batches() {
    use std::io::BufRead;
    let dir = tempfile::tempdir().unwrap();
    write_raw(dir.path());
    let spec = raw_job(dir.path(), false);
    let cache = dir.path().join("cache");
    let lock = hold_preparation_lock(&spec, &cache);
    let endpoint = serve(&ServerConfig {
        listen: vec![Endpoint::Unix(dir.path().join("s.sock"))],
        cache_dir: cache,
        progress_every: Duration::from_millis(1),
        ..ServerConfig::default()
    })
    .unwrap()
    .endpoints
    .remove(0);
    let job = dir.path().join("job.toml");
    std::fs::write(&job, spec.to_toml()).unwrap();
    let mut child = std::process::Command::new(python())
        .arg(repo_root().join("streamer/python/tests/check_preparing.py"))
        .arg(endpoint.to_string())
        .arg(&job)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // The client logs the server's progress while the preparation waits for the lock the test holds.
    // Read on a thread, so that a client that never logs fails the test instead of hanging it.
    let (first, first_line) = std::sync::mpsc::channel();
    let stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut log = std::io::BufReader::new(stderr);
        let mut line = String::new();
        log.read_line(&mut line).unwrap();
        first.send(line).unwrap();
        // Then to the end (the client exits once it has its batch), or its lines would fill the pipe.
        let mut rest = String::new();
        std::io::Read::read_to_string(&mut log, &mut rest).unwrap();
        rest
    });
    let line = first_line.recv_timeout(Duration::from_mins(1));
    let line = line.unwrap_or_else(|_| {
        let _ = child.kill();
        panic!("the Python client logged nothing about the preparation in a minute")
    });
    assert!(
        line.starts_with("flame_stream: the server is preparing the job's raw dataset")
            && line.contains(spec.datasets[0].label()),
        "{line}"
    );
    drop(lock);
    let rest = reader.join().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{rest}");
    let tokens: Vec<Vec<u32>> = serde_json::from_slice(&out.stdout).unwrap();
    let expected: Vec<u32> = batches(&endpoint, &spec, 1).remove(0);
    assert_eq!(tokens.concat(), expected);
}
