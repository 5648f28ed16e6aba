//! The Hugging Face hub path against a local server speaking the endpoints `hf-hub` uses
//! (`/api/{datasets,models}/ID/revision/main`, `/[datasets/]ID/resolve/main/FILE` with ranges), then the
//! same job offline from the standard cache, and the one-line error with neither hub nor cache.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use sha2::Digest;

use crate::util::{flame_prep_with_env, shared, snapshot};

/// Every request the fake hub saw: URL and `Authorization` header.
type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

struct FakeHub {
    server: Arc<tiny_http::Server>,
    port: u16,
    /// `(url, authorization header)` of every request.
    requests: RequestLog,
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

fn parquet_bytes(texts: &[&str]) -> Vec<u8> {
    let batch = RecordBatch::try_from_iter([(
        "text",
        std::sync::Arc::new(StringArray::from(texts.to_vec())) as ArrayRef,
    )])
    .unwrap();
    let mut bytes = Vec::new();
    let mut writer =
        parquet::arrow::ArrowWriter::try_new(&mut bytes, batch.schema(), None).unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    bytes
}

/// Serves `repos`: `"datasets/OWNER/NAME"` or `"OWNER/NAME"` (a model) → files.
fn start(repos: HashMap<String, Vec<(String, Vec<u8>)>>) -> FakeHub {
    let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").unwrap());
    let port = server.server_addr().to_ip().unwrap().port();
    let requests = Arc::new(Mutex::new(Vec::new()));
    let (thread_server, log) = (Arc::clone(&server), Arc::clone(&requests));
    std::thread::spawn(move || {
        for request in thread_server.incoming_requests() {
            let url = request.url().to_owned();
            let header = |name: &'static str| {
                request
                    .headers()
                    .iter()
                    .find(|h| h.field.equiv(name))
                    .map(|h| h.value.as_str().to_owned())
            };
            log.lock()
                .unwrap()
                .push((url.clone(), header("Authorization")));
            let response = respond(&repos, &url, header("Range").as_deref());
            let _ = request.respond(response);
        }
    });
    FakeHub {
        server,
        port,
        requests,
    }
}

fn respond(
    repos: &HashMap<String, Vec<(String, Vec<u8>)>>,
    url: &str,
    range: Option<&str>,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header =
        |k: &str, v: &str| tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).unwrap();
    for (repo, files) in repos {
        let api = if repo.starts_with("datasets/") {
            format!("/api/{repo}/revision/main")
        } else {
            format!("/api/models/{repo}/revision/main")
        };
        if url == api {
            let siblings: Vec<_> = files
                .iter()
                .map(|(f, _)| serde_json::json!({"rfilename": f}))
                .collect();
            return tiny_http::Response::from_data(
                serde_json::json!({"sha": COMMIT, "siblings": siblings})
                    .to_string()
                    .into_bytes(),
            )
            .with_header(header("Content-Type", "application/json"));
        }
        let Some(file) = url.strip_prefix(&format!("/{repo}/resolve/main/")) else {
            continue;
        };
        let Some((_, bytes)) = files.iter().find(|(f, _)| f == file) else {
            continue;
        };
        let start: usize = range
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let end = match range {
            Some("bytes=0-0") => 1,
            _ => bytes.len(),
        };
        let etag = hex::encode(sha2::Sha256::digest(bytes));
        return tiny_http::Response::from_data(bytes[start..end].to_vec())
            .with_status_code(206)
            .with_header(header(
                "Content-Range",
                &format!("bytes {start}-{}/{}", end.max(1) - 1, bytes.len()),
            ))
            .with_header(header("ETag", &format!("\"{etag}\"")))
            .with_header(header("x-repo-commit", COMMIT));
    }
    tiny_http::Response::from_data(b"not found".to_vec()).with_status_code(404)
}

fn fineweb_like() -> HashMap<String, Vec<(String, Vec<u8>)>> {
    let card = "---\nlicense: odc-by\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*/*\n- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n---\n# A fineweb-edu-shaped test repo\n";
    let dataset = vec![
        ("README.md".to_owned(), card.as_bytes().to_vec()),
        (
            "sample/10BT/000_00000.parquet".to_owned(),
            parquet_bytes(&["Call me Ishmael.", "It was the best of times."]),
        ),
        (
            "sample/10BT/001_00000.parquet".to_owned(),
            parquet_bytes(&["Whan that Aprill with his shoures soote"]),
        ),
        (
            "data/CC-MAIN-2024-10/train-00000.parquet".to_owned(),
            parquet_bytes(&["not in the sample config"]),
        ),
    ];
    let tokenizer =
        std::fs::read(shared().join("data/tokenizers/mistral-7b-v0.1/tokenizer.json")).unwrap();
    let model = vec![
        ("tokenizer.json".to_owned(), tokenizer),
        (
            "tokenizer_config.json".to_owned(),
            br#"{"bos_token": "<s>", "eos_token": "</s>"}"#.to_vec(),
        ),
    ];
    HashMap::from([
        ("datasets/HuggingFaceFW/fineweb-edu".to_owned(), dataset),
        ("fla-hub/transformer-1.3B-100B".to_owned(), model),
    ])
}

fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

#[test]
fn hub_datasets_download_into_the_cache_and_work_offline() {
    let hub = start(fineweb_like());
    let work = tempfile::tempdir().unwrap();
    let hf_home = work.path().join("hf");
    let endpoint = format!("http://127.0.0.1:{}", hub.port);
    let online = work.path().join("online");
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "--dataset",
            "fineweb-edu",
            "--name",
            "sample-10BT",
            "--split",
            "train",
            "--json",
            "--output",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let online_args = args(&online);
    let run = flame_prep_with_env(
        &online_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", hf_home.to_str().unwrap()),
            ("HF_TOKEN", "hf_secret"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        summary["documents"], 3,
        "two files of the sample-10BT config"
    );
    let hub_snapshot = hf_home
        .join("hub/datasets--HuggingFaceFW--fineweb-edu/snapshots")
        .join(COMMIT);
    assert!(hub_snapshot.join("sample/10BT/001_00000.parquet").is_file());
    assert!(
        !hub_snapshot
            .join("data/CC-MAIN-2024-10/train-00000.parquet")
            .exists(),
        "files of other configs are not downloaded"
    );
    assert!(
        hf_home
            .join("hub/models--fla-hub--transformer-1.3B-100B/snapshots")
            .join(COMMIT)
            .join("tokenizer.json")
            .is_file()
    );
    let requests = hub.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|(_, auth)| auth.as_deref() == Some("Bearer hf_secret")),
        "HF_TOKEN is sent: {requests:?}"
    );
    let manifest =
        flame_formats::Manifest::load(&online.join("fineweb-edu/sample-10BT/train")).unwrap();
    assert_eq!(
        (manifest.tokenizer.bos_id, manifest.tokenizer.eos_id),
        (Some(1), Some(2))
    );

    let offline = work.path().join("offline");
    let offline_args = args(&offline);
    let dead = dead_endpoint();
    for env in [
        [("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", dead.as_str())],
        [("HF_HUB_OFFLINE", "0"), ("HF_ENDPOINT", dead.as_str())],
    ] {
        let mut env = env.to_vec();
        env.push(("HF_HOME", hf_home.to_str().unwrap()));
        let _ = std::fs::remove_dir_all(&offline);
        let run = flame_prep_with_env(
            &offline_args.iter().map(String::as_str).collect::<Vec<_>>(),
            &env,
        );
        assert_eq!(run.code, 0, "{env:?}: {}", run.stderr);
        assert_eq!(
            snapshot(&offline.join("fineweb-edu/sample-10BT/train"), |name| name
                != "manifest.json"),
            snapshot(&online.join("fineweb-edu/sample-10BT/train"), |name| name
                != "manifest.json")
        );
    }
}

#[test]
fn no_hub_and_no_cache_is_one_clear_line() {
    let work = tempfile::tempdir().unwrap();
    let dead = dead_endpoint();
    let run = flame_prep_with_env(
        &[
            "--dataset",
            "HuggingFaceFW/fineweb-edu",
            "--output",
            work.path().to_str().unwrap(),
        ],
        &[
            ("HF_ENDPOINT", &dead),
            ("HF_HOME", work.path().join("empty").to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 1);
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains("cannot be reached")
            && lines[0].contains("not in the hub cache")
            && lines[0].contains("HF_HOME"),
        "{}",
        lines[0]
    );
    let offline = flame_prep_with_env(
        &[
            "--dataset",
            "HuggingFaceFW/fineweb-edu",
            "--output",
            work.path().to_str().unwrap(),
        ],
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HOME", work.path().join("empty").to_str().unwrap()),
        ],
    );
    assert!(
        offline
            .stderr
            .contains("HF_HUB_OFFLINE is set, and it is not in the hub cache"),
        "{}",
        offline.stderr
    );
}
