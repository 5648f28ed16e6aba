//! A local Hugging Face hub for tests: a server on loopback speaking the endpoints `hf-hub` uses
//! (`/api/{datasets,models}/ID/revision/main`, with sizes as `?blobs=true` gives them, and
//! `/[datasets/]ID/resolve/{main,COMMIT}/FILE` with ranges), recording every request.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use sha2::Digest;

/// Every request the fake hub saw: URL and `Authorization` header.
pub type RequestLog = Arc<Mutex<Vec<(String, Option<String>)>>>;

/// The commit every repo of the fake hub is at.
pub const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

/// Repos to serve: `"datasets/OWNER/NAME"` or `"OWNER/NAME"` (a model) → `(path, bytes)` of each file.
pub type Repos = HashMap<String, Vec<(String, Vec<u8>)>>;

/// A running fake hub; it stops when dropped.
pub struct FakeHub {
    server: Arc<tiny_http::Server>,
    /// Its port on 127.0.0.1.
    pub port: u16,
    /// `(url, authorization header)` of every request.
    pub requests: RequestLog,
}

impl FakeHub {
    /// Serves `repos` on a free port of 127.0.0.1.
    ///
    /// # Panics
    /// If no port can be bound.
    pub fn start(repos: Repos) -> Self {
        let server = Arc::new(tiny_http::Server::http("127.0.0.1:0").expect("bind loopback"));
        let port = server.server_addr().to_ip().expect("an IP listener").port();
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
                    .expect("the log's lock")
                    .push((url.clone(), header("Authorization")));
                let response = respond(&repos, &url, header("Range").as_deref());
                let _ = request.respond(response);
            }
        });
        Self {
            server,
            port,
            requests,
        }
    }

    /// `http://127.0.0.1:PORT`, for `HF_ENDPOINT`.
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl std::fmt::Debug for FakeHub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeHub")
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl Drop for FakeHub {
    fn drop(&mut self) {
        self.server.unblock();
    }
}

/// An endpoint nothing listens on (a port bound and released).
///
/// # Panics
/// If no port can be bound.
pub fn dead_endpoint() -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let port = listener.local_addr().expect("a local address").port();
    drop(listener);
    format!("http://127.0.0.1:{port}")
}

fn respond(
    repos: &Repos,
    url: &str,
    range: Option<&str>,
) -> tiny_http::Response<std::io::Cursor<Vec<u8>>> {
    let header = |k: &str, v: &str| {
        tiny_http::Header::from_bytes(k.as_bytes(), v.as_bytes()).expect("a valid header")
    };
    let path = url.split('?').next().unwrap_or(url);
    for (repo, files) in repos {
        let api = if repo.starts_with("datasets/") {
            format!("/api/{repo}/revision/main")
        } else {
            format!("/api/models/{repo}/revision/main")
        };
        if path == api {
            let siblings: Vec<_> = files
                .iter()
                .map(|(f, bytes)| serde_json::json!({"rfilename": f, "size": bytes.len()}))
                .collect();
            return tiny_http::Response::from_data(
                serde_json::json!({"sha": COMMIT, "siblings": siblings})
                    .to_string()
                    .into_bytes(),
            )
            .with_header(header("Content-Type", "application/json"));
        }
        let Some(file) = [
            format!("/{repo}/resolve/main/"),
            format!("/{repo}/resolve/{COMMIT}/"),
        ]
        .iter()
        .find_map(|prefix| path.strip_prefix(prefix.as_str())) else {
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
