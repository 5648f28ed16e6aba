//! A local S3-compatible server for tests: `tools/interop/s3_server.py` (moto) on loopback, with a
//! bucket and the objects uploaded; it exits when dropped.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

/// A running local S3 server.
#[derive(Debug)]
pub struct S3Server {
    child: Child,
    /// `http://127.0.0.1:PORT`, for `AWS_ENDPOINT`.
    pub endpoint: String,
}

impl S3Server {
    /// Starts the server with `python` (the test venv's, which has moto and boto3), creates `bucket` and
    /// uploads each `(local file, key)`.
    ///
    /// # Panics
    /// If the server cannot be started or does not say it is ready.
    pub fn start(python: &Path, bucket: &str, uploads: &[(&Path, &str)]) -> Self {
        let mut command = Command::new(python);
        command
            .arg(crate::repo_root().join("tools/interop/s3_server.py"))
            .arg(bucket);
        for (local, key) in uploads {
            command.arg(format!("{}={key}", local.display()));
        }
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start tools/interop/s3_server.py");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .expect("read the server's first line");
        let endpoint = line
            .trim()
            .strip_prefix("READY ")
            .unwrap_or_else(|| panic!("s3_server.py said {line:?}"))
            .to_owned();
        Self { child, endpoint }
    }

    /// The environment that points `object_store` at this server with moto's test credentials.
    pub fn env(&self) -> [(&'static str, String); 5] {
        [
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ACCESS_KEY_ID", "testing".into()),
            ("AWS_SECRET_ACCESS_KEY", "testing".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ALLOW_HTTP", "true".into()),
        ]
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        drop(self.child.stdin.take()); // the server exits when its stdin closes
        let _ = self.child.wait();
    }
}
