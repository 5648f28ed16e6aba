//! A server seen from the wire, for the integration tests and the library's own unit tests alike (the
//! library includes this file with `#[path]`, naming itself `flame_streamer` for it): one exchange of
//! raw frames on a Unix socket, and `/metrics` read and waited on.
#![allow(dead_code)] // each includer uses some of these

use std::io::{Read, Write};
use std::net::SocketAddr;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use flame_streamer::protocol::{Limits, Message, VERSION, decode, encode};
use flame_streamer::spec::JobSpec;

/// The frame of `spec`'s `Hello` as rank 0 of 1, without a token.
pub fn hello(spec: &JobSpec) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode(
        &Message::Hello {
            version: VERSION,
            token: Vec::new(),
            job: spec.to_toml(),
            rank: 0,
            world_size: 1,
        },
        &mut bytes,
    );
    bytes
}

/// Sends `bytes` on the Unix socket at `path`, ends the write side, and reads every message until the
/// server closes. Fails, rather than hangs, when the server has not answered within a minute (a session
/// stuck opening a file never does).
pub fn raw_exchange(path: &Path, bytes: &[u8]) -> Vec<Message> {
    let mut conn = UnixStream::connect(path).unwrap();
    conn.set_read_timeout(Some(Duration::from_mins(1))).unwrap();
    conn.write_all(bytes).unwrap();
    conn.shutdown(std::net::Shutdown::Write).unwrap();
    let mut answer = Vec::new();
    conn.read_to_end(&mut answer)
        .unwrap_or_else(|e| panic!("no answer from the server ({e})"));
    let mut messages = Vec::new();
    let mut at = 0;
    while let Some((m, used)) = decode(&answer[at..], Limits::SERVER_FRAMES).unwrap() {
        messages.push(m);
        at += used;
    }
    messages
}

/// The whole HTTP response to `GET path` at `addr`.
pub fn http_get(addr: SocketAddr, path: &str) -> String {
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    write!(conn, "GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut response = String::new();
    conn.read_to_string(&mut response).unwrap();
    response
}

/// The value on the line of `text` that starts with `line_start` (a metric's name and labels, and the
/// space before its value when it has no labels).
pub fn metric(text: &str, line_start: &str) -> u64 {
    text.lines()
        .find_map(|l| l.strip_prefix(line_start))
        .unwrap_or_else(|| panic!("no {line_start} in\n{text}"))
        .trim()
        .parse()
        .unwrap()
}

/// Waits until `/metrics` at `addr` shows `want` on the line starting with `line_start`: what a session
/// does on its own thread (prepare ahead, end) shows in its counters.
pub fn wait_for_metric(addr: SocketAddr, line_start: &str, want: u64) {
    let deadline = Instant::now() + Duration::from_mins(1);
    loop {
        let text = http_get(addr, "/metrics");
        let got = metric(&text, line_start);
        if got == want {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{line_start}: {got}, waiting for {want}\n{text}"
        );
        std::thread::yield_now();
    }
}
