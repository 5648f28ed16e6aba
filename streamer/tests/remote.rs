//! Streaming jobs over remote raw datasets (issue 19): an S3 prefix through the local S3 server and a hub
//! dataset through a local hub, each file fetched into the server's bounded cache as the stream reaches it
//! (the next one ahead), serving what the same files serve from a local directory; the hub dataset again
//! offline, from the caches; a download that fails is an error naming the URL.

use std::path::{Path, PathBuf};
use std::process::Child;

use flame_e2e::fake_hub::{COMMIT, FakeHub, dead_endpoint};
use flame_e2e::s3_server::S3Server;
use flame_streamer::client::Client;
use flame_streamer::server::Endpoint;
use flame_streamer::spec::JobSpec;

use crate::raw_text::{batches, gpt2, start};
use crate::util::{python, spawn_server};

/// `count` JSON-lines files of 200 documents each, `dir/raw/part-N.jsonl`, of nearly equal size.
fn write_files(dir: &Path, count: usize) -> Vec<PathBuf> {
    std::fs::create_dir_all(dir.join("raw")).unwrap();
    (0..count)
        .map(|part| {
            let lines: String = (0..200)
                .map(|d| {
                    let text = format!(
                        "Part {part}, document {d:03}: {}",
                        "a stream of words fetched ahead of use. ".repeat(d % 3 + 1)
                    );
                    serde_json::json!({ "text": text }).to_string() + "\n"
                })
                .collect();
            let path = dir.join(format!("raw/part-{part}.jsonl"));
            std::fs::write(&path, lines).unwrap();
            path
        })
        .collect()
}

fn job(dataset: &str, name: Option<&str>) -> JobSpec {
    let name = name.map_or(String::new(), |n| format!("name = \"{n}\""));
    JobSpec::from_toml(&format!(
        r#"
        seed = 11
        seq_len = 128
        micro_batch_size = 2
        global_batch_size = 4
        tokenizer = "{}"
        append_eod = true
        streaming = true
        [[datasets]]
        dataset = "{dataset}"
        {name}
        "#,
        gpt2().display(),
    ))
    .unwrap()
}

/// Four files of [`write_files`] in `dir`, and the same uploaded to bucket `corpus` of a local S3 server
/// as `raw/part-N.jsonl`.
fn four_files_in_s3(dir: &Path) -> (Vec<PathBuf>, S3Server) {
    let local = write_files(dir, 4);
    let keys: Vec<String> = (0..4).map(|p| format!("raw/part-{p}.jsonl")).collect();
    let uploads: Vec<(&Path, &str)> = local
        .iter()
        .zip(&keys)
        .map(|(p, k)| (p.as_path(), k.as_str()))
        .collect();
    let s3 = S3Server::start(&python(), "corpus", &uploads);
    (local, s3)
}

/// A `flame-stream serve` process on `dir/remote.sock` with `env` and `args`; killed when dropped.
struct Server {
    child: Child,
    endpoint: Endpoint,
}

impl Server {
    fn spawn(dir: &Path, env: &[(&str, String)], args: &[&str]) -> Self {
        let socket = dir.join("remote.sock");
        let _ = std::fs::remove_file(&socket);
        let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
        Self {
            child: spawn_server(&socket, args, &env),
            endpoint: Endpoint::Unix(socket),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Bytes of every regular file under `dir` (temporary names included).
fn bytes_under(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match std::fs::symlink_metadata(e.path()) {
            Ok(m) if m.is_dir() => bytes_under(&e.path()),
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        })
        .sum()
}

/// The micro-batches of `steps` steps, the bytes under `files` checked after each.
fn batches_within(
    endpoint: &Endpoint,
    spec: &JobSpec,
    steps: u64,
    files: &Path,
    limit: u64,
) -> Vec<Vec<u32>> {
    let mut client = Client::connect(endpoint.clone(), spec, 0, 1, None, 0).unwrap();
    let mut served = Vec::new();
    for step in 0..steps {
        for micro in 0..2 {
            let samples = client.micro_batch(step, micro).unwrap();
            served.push(samples.into_iter().flat_map(|s| s.tokens).collect());
            let held = bytes_under(files);
            assert!(
                held <= limit,
                "step {step}: {held} bytes in the stream cache, limit {limit}"
            );
        }
    }
    served
}

#[test]
fn an_s3_prefix_streams_through_a_cache_smaller_than_the_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let (local, s3) = four_files_in_s3(dir.path());
    let sizes: Vec<u64> = local.iter().map(|p| p.metadata().unwrap().len()).collect();
    // Room for two files (with their ETag records), not three.
    let limit = sizes.iter().max().unwrap() * 2 + 200;
    assert!(sizes.iter().sum::<u64>() > limit && sizes.iter().min().unwrap() * 3 > limit);

    // Served from the local directory, in-process: the reference. Over two passes of the dataset.
    let reference_dir = tempfile::tempdir().unwrap();
    let steps = 90;
    let expected = batches(
        &start(reference_dir.path()),
        &job(&dir.path().join("raw/*.jsonl").display().to_string(), None),
        steps,
    );

    let cache = dir.path().join("cache");
    // flame-prep would download every object into $FLAME_CACHE/objects first; a streaming job only lists.
    let flame_cache = dir.path().join("flame-cache");
    let mut env = s3.env().to_vec();
    env.push(("FLAME_CACHE", flame_cache.display().to_string()));
    let server = Server::spawn(
        dir.path(),
        &env,
        &[
            "--cache-dir",
            cache.to_str().unwrap(),
            "--stream-cache-bytes",
            &limit.to_string(),
        ],
    );
    let files = cache.join("stream-files");
    let served = batches_within(
        &server.endpoint,
        &job("s3://corpus/raw/", None),
        steps,
        &files,
        limit,
    );
    assert_eq!(served.len(), expected.len());
    assert!(
        served == expected,
        "the S3 prefix serves what the local files serve"
    );
    // Two passes read all four files: some were fetched, then deleted for others.
    let cached: Vec<PathBuf> = glob::glob(&format!("{}/s3/corpus/raw/*.jsonl", files.display()))
        .unwrap()
        .map(Result::unwrap)
        .collect();
    assert!(!cached.is_empty() && cached.len() <= 2, "{cached:?}");
    assert!(bytes_under(&files) <= limit);
    assert!(!flame_cache.join("objects").exists());

    // A cache limit below one file is an error naming the file and the limit.
    drop(server);
    let small = Server::spawn(
        dir.path(),
        &s3.env(),
        &[
            "--cache-dir",
            dir.path().join("small").to_str().unwrap(),
            "--stream-cache-bytes",
            "1000",
        ],
    );
    let mut client = Client::connect(
        small.endpoint.clone(),
        &job("s3://corpus/raw/", None),
        0,
        1,
        None,
        3,
    )
    .unwrap();
    let err = client.micro_batch(0, 0).unwrap_err().to_string();
    assert!(
        err.contains("s3://corpus/raw/part-") && err.contains("--stream-cache-bytes 1000"),
        "{err}"
    );
}

/// A dataset repo shaped like fineweb-edu (a `sample-10BT` config of three JSON-lines files), holding
/// the files of `local`.
fn hub_repo(local: &[PathBuf]) -> flame_e2e::fake_hub::Repos {
    let card = "---\nconfigs:\n- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n---\n";
    let mut files = vec![("README.md".to_owned(), card.as_bytes().to_vec())];
    for (n, path) in local.iter().enumerate() {
        files.push((
            format!("sample/10BT/{n:03}_00000.jsonl"),
            std::fs::read(path).unwrap(),
        ));
    }
    std::collections::HashMap::from([("datasets/HuggingFaceFW/fineweb-edu".to_owned(), files)])
}

#[test]
fn a_hub_dataset_streams_and_then_streams_offline_from_the_cache() {
    let dir = tempfile::tempdir().unwrap();
    let local = write_files(dir.path(), 3);
    let hub = FakeHub::start(hub_repo(&local));
    let reference_dir = tempfile::tempdir().unwrap();
    let steps = 30;
    let expected = batches(
        &start(reference_dir.path()),
        &job(&dir.path().join("raw/*.jsonl").display().to_string(), None),
        steps,
    );

    let hf_home = dir.path().join("hf");
    let cache = dir.path().join("cache");
    let hub_env = |endpoint: String, offline: &str| {
        vec![
            ("HF_ENDPOINT", endpoint),
            ("HF_HOME", hf_home.display().to_string()),
            ("HF_TOKEN", "hf_secret".to_owned()),
            ("HF_HUB_OFFLINE", offline.to_owned()),
        ]
    };
    let spec = job("HuggingFaceFW/fineweb-edu", Some("sample-10BT"));
    let cache_args = ["--cache-dir", cache.to_str().unwrap()];
    {
        let server = Server::spawn(dir.path(), &hub_env(hub.endpoint(), "0"), &cache_args);
        assert!(
            batches(&server.endpoint, &spec, steps) == expected,
            "the hub serves what the local files serve"
        );
    }
    let requests = hub.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|(_, auth)| auth.as_deref() == Some("Bearer hf_secret")),
        "HF_TOKEN is sent: {requests:?}"
    );
    // The data files went to the server's stream cache, not to the hub cache (which has the README).
    let fetched = cache
        .join("stream-files/hf/datasets--HuggingFaceFW--fineweb-edu")
        .join(COMMIT);
    assert!(fetched.join("sample/10BT/002_00000.jsonl").is_file());
    let hub_snapshot = hf_home
        .join("hub/datasets--HuggingFaceFW--fineweb-edu/snapshots")
        .join(COMMIT);
    assert!(hub_snapshot.join("README.md").is_file());
    assert!(!hub_snapshot.join("sample").exists());

    // Offline, or with the hub gone: the kept listing and the cached files serve the same batches.
    for (endpoint, offline) in [(dead_endpoint(), "1"), (dead_endpoint(), "0")] {
        let server = Server::spawn(dir.path(), &hub_env(endpoint, offline), &cache_args);
        assert!(
            batches(&server.endpoint, &spec, steps) == expected,
            "offline ({offline}) from the cache"
        );
    }

    // A file already in the standard hub cache is read from there, never fetched into the stream cache.
    std::fs::create_dir_all(hub_snapshot.join("sample/10BT")).unwrap();
    std::fs::copy(&local[0], hub_snapshot.join("sample/10BT/000_00000.jsonl")).unwrap();
    std::fs::remove_dir_all(&cache).unwrap();
    let before = hub.requests.lock().unwrap().len();
    {
        let server = Server::spawn(dir.path(), &hub_env(hub.endpoint(), "0"), &cache_args);
        assert!(batches(&server.endpoint, &spec, steps) == expected);
    }
    assert!(!fetched.join("sample/10BT/000_00000.jsonl").exists());
    assert!(fetched.join("sample/10BT/001_00000.jsonl").is_file());
    let asked: Vec<String> = hub.requests.lock().unwrap()[before..]
        .iter()
        .map(|(u, _)| u.clone())
        .collect();
    assert!(!asked.iter().any(|u| u.contains("000_00000")), "{asked:?}");
}

#[test]
fn a_failed_download_is_an_error_naming_the_url() {
    let dir = tempfile::tempdir().unwrap();
    let (_, s3) = four_files_in_s3(dir.path());
    let server = Server::spawn(
        dir.path(),
        &s3.env(),
        &["--cache-dir", dir.path().join("cache").to_str().unwrap()],
    );
    let spec = job("s3://corpus/raw/", None);
    // With retries, as trainers connect: a server that fails a request sends the error and hangs up, and
    // a request the client sent meanwhile may find the socket closed before the error is read (the
    // connection "dropped"); asked again, the error comes back.
    let mut client = Client::connect(server.endpoint.clone(), &spec, 0, 1, None, 3).unwrap();
    client.micro_batch(0, 0).unwrap();
    // The store goes away once the job is open: the first file it has not fetched yet fails.
    drop(s3);
    let err = (1..200u64)
        .find_map(|k| client.micro_batch(k / 2, k % 2).err())
        .expect("a pass reaches a file not fetched")
        .to_string();
    assert!(
        err.contains("s3://corpus/raw/part-") && err.contains("downloading"),
        "{err}"
    );
}
