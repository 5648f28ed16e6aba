//! What the tests share besides the wire (`raw.rs`): where the repository is, the test venv's Python,
//! a server in a process of its own, and a recording proxy between clients and a server on Unix sockets: the protocol trace of every
//! connection, each direction in order, as an observer outside the client sees it. It passes the ring's
//! descriptor on, and can rewrite the server's answers to play a server that breaks the protocol.

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::mpsc;
use std::thread::JoinHandle;

use flame_streamer::protocol::{Limits, Message, decode, encode};
use flame_streamer::server::Endpoint;
use flame_streamer::transport::{recv_with_fd, send_with_fd};

/// The repository's root.
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// Starts `flame-stream serve` on `socket` (with `args` after, and `env` set) and waits for its
/// "listening on" line.
pub fn spawn_server(socket: &Path, args: &[&str], env: &[(&str, &str)]) -> std::process::Child {
    use std::io::BufRead;
    let mut child = Command::new(env!("CARGO_BIN_EXE_flame-stream"))
        .args(["serve", "--listen"])
        .arg(format!("unix://{}", socket.display()))
        .args(args)
        .envs(env.iter().copied())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.starts_with("listening on unix://"), "{line}");
    child
}

/// The test venv's Python (`tools/setup-python.sh` makes it once and prints its path).
pub fn python() -> PathBuf {
    let output = Command::new("bash")
        .arg(repo_root().join("tools/setup-python.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// What one connection carried.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// The client's frames, in order.
    pub to_server: Vec<Message>,
    /// The frames the client received (rewritten, if the proxy rewrites), in order.
    pub to_client: Vec<Message>,
}

impl Trace {
    /// The client's frames in short: `Hello`, `ShmOpen`, `Request(s,m)`, `Release(slot)`.
    pub fn sent(&self) -> Vec<String> {
        self.to_server.iter().map(short).collect()
    }

    /// The slot each micro-batch came in, in the order they came.
    pub fn slots(&self) -> Vec<((u64, u64), u32)> {
        self.to_client
            .iter()
            .filter_map(|m| match m {
                Message::Slot {
                    step,
                    micro_step,
                    slot,
                    ..
                } => Some(((*step, *micro_step), *slot)),
                _ => None,
            })
            .collect()
    }
}

/// A message in short, for comparing traces.
pub fn short(message: &Message) -> String {
    match message {
        Message::Request { step, micro_step } => format!("Request({step},{micro_step})"),
        Message::Release { slot } => format!("Release({slot})"),
        Message::Batch {
            step, micro_step, ..
        } => format!("Batch({step},{micro_step})"),
        Message::Slot {
            step,
            micro_step,
            slot,
            ..
        } => format!("Slot({step},{micro_step} in {slot})"),
        other => other.kind().to_owned(),
    }
}

type Rewrite = Arc<dyn Fn(Message) -> Message + Send + Sync>;

/// A proxy listening on a Unix socket in front of a server's Unix socket.
pub struct Proxy {
    /// Where clients connect.
    pub endpoint: Endpoint,
    connections: mpsc::Receiver<JoinHandle<Option<Trace>>>,
}

/// The `Hello` token that marks the proxy's own last connection (see [`Proxy::traces`]).
const END_OF_TRACE: &[u8] = b"\0proxy: end of trace";

impl Proxy {
    /// Listens on `path` and passes everything on to `upstream` as it is.
    pub fn start(path: &Path, upstream: &Endpoint) -> Self {
        Self::rewriting(path, upstream, |m| m)
    }

    /// Listens on `path`, passes the clients' frames on to `upstream`, and the server's through
    /// `rewrite`.
    pub fn rewriting(
        path: &Path,
        upstream: &Endpoint,
        rewrite: impl Fn(Message) -> Message + Send + Sync + 'static,
    ) -> Self {
        let Endpoint::Unix(upstream) = upstream.clone() else {
            panic!("the proxy passes Unix sockets on")
        };
        let listener = UnixListener::bind(path).unwrap();
        let rewrite: Rewrite = Arc::new(rewrite);
        let (handles, connections) = mpsc::channel();
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let (upstream, rewrite) = (upstream.clone(), Arc::clone(&rewrite));
                let handle =
                    std::thread::spawn(move || relay(client.unwrap(), &upstream, &rewrite));
                if handles.send(handle).is_err() {
                    return;
                }
            }
        });
        Self {
            endpoint: Endpoint::Unix(path.to_owned()),
            connections,
        }
    }

    /// The trace of every connection made so far, in the order they were accepted, once each has ended
    /// (its client hung up). A last connection of the proxy's own marks the end: the listener accepts in
    /// order, so every connection made before it has been accepted by then.
    pub fn traces(&self) -> Vec<Trace> {
        let Endpoint::Unix(path) = &self.endpoint else {
            unreachable!()
        };
        let mut marker = Vec::new();
        encode(
            &Message::Hello {
                version: flame_streamer::protocol::VERSION,
                token: END_OF_TRACE.to_vec(),
                job: String::new(),
                rank: 0,
                world_size: 0,
            },
            &mut marker,
        );
        UnixStream::connect(path)
            .unwrap()
            .write_all(&marker)
            .unwrap();
        let mut traces = Vec::new();
        for handle in &self.connections {
            match handle.join().unwrap() {
                Some(trace) => traces.push(trace),
                None => return traces,
            }
        }
        unreachable!("the accepting thread ended")
    }
}

/// Passes one connection on until both sides have hung up; `None` for the proxy's own end marker.
fn relay(mut client: UnixStream, upstream: &Path, rewrite: &Rewrite) -> Option<Trace> {
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 << 10];
    // The first frame tells the end marker from a client.
    let first = loop {
        if let Some((message, _)) = decode(&buf, Limits::CLIENT_FRAMES).unwrap() {
            break message;
        }
        let n = client.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            return Some(Trace::default());
        }
        buf.extend_from_slice(&chunk[..n]);
    };
    if matches!(&first, Message::Hello { token, .. } if token == END_OF_TRACE) {
        return None;
    }
    let server = UnixStream::connect(upstream).unwrap();
    (&server).write_all(&buf).unwrap();
    let answers = {
        let (server, client, rewrite) = (
            server.try_clone().unwrap(),
            client.try_clone().unwrap(),
            Arc::clone(rewrite),
        );
        std::thread::spawn(move || pass_answers(&server, &client, &rewrite))
    };
    let mut to_server = Vec::new();
    loop {
        while let Some((message, used)) = decode(&buf, Limits::CLIENT_FRAMES).unwrap() {
            to_server.push(message);
            buf.drain(..used);
        }
        let n = client.read(&mut chunk).unwrap_or(0);
        if n == 0 {
            let _ = server.shutdown(std::net::Shutdown::Write);
            break;
        }
        // A server that hung up first makes this fail; the client's frames are still recorded.
        let _ = (&server).write_all(&chunk[..n]);
        buf.extend_from_slice(&chunk[..n]);
    }
    let to_client = answers.join().unwrap();
    Some(Trace {
        to_server,
        to_client,
    })
}

/// Passes the server's frames on through `rewrite` (the ring's descriptor with them) until it hangs up;
/// returns them as the client received them.
fn pass_answers(server: &UnixStream, client: &UnixStream, rewrite: &Rewrite) -> Vec<Message> {
    let (mut buf, mut fd, mut received) = (Vec::new(), None, Vec::new());
    loop {
        let (n, with) = recv_with_fd(server, &mut buf).unwrap_or((0, None));
        if n == 0 {
            let _ = client.shutdown(std::net::Shutdown::Write);
            return received;
        }
        fd = with.or(fd);
        let mut out = Vec::new();
        while let Some((message, used)) = decode(&buf, Limits::SERVER_FRAMES).unwrap() {
            buf.drain(..used);
            let message = rewrite(message);
            encode(&message, &mut out);
            received.push(message);
        }
        if out.is_empty() {
            continue;
        }
        // A client that hung up makes this fail; the server's frames are still recorded.
        let _ = match fd.take() {
            Some(fd) => send_with_fd(client, &out, fd.as_fd()),
            None => (&*client).write_all(&out),
        };
    }
}
