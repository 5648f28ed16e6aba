//! The Python client (`streamer/python/flame_stream`) against a live server, in the project's test venv:
//! it must receive exactly the micro-batches the Rust stream computes.

use std::path::{Path, PathBuf};
use std::process::Command;

use flame_streamer::stream::Stream;

use crate::server::{job, start};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

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

#[test]
fn the_python_client_receives_exactly_the_streams_micro_batches() {
    let dir = tempfile::tempdir().unwrap();
    let spec = job(dir.path());
    let job_file = dir.path().join("job.toml");
    std::fs::write(&job_file, spec.to_toml()).unwrap();
    let reference = Stream::open(spec).unwrap();
    let mut expected = Vec::new();
    for step in 0..3 {
        for micro_step in 0..2 {
            let samples = reference.micro_batch(step, micro_step, 1, 2).unwrap();
            expected.push(serde_json::json!({
                "step": step,
                "micro_step": micro_step,
                "indices": samples.iter().map(|s| s.index).collect::<Vec<_>>(),
                "datasets": samples.iter().map(|s| s.dataset).collect::<Vec<_>>(),
                "tokens": samples.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>(),
                "cu_seqlens": samples.iter().map(|s| s.cu_seqlens.clone()).collect::<Vec<_>>(),
            }));
        }
    }
    let expected_file = dir.path().join("expected.json");
    std::fs::write(&expected_file, serde_json::to_vec(&expected).unwrap()).unwrap();
    for endpoint in start(dir.path(), None) {
        let out = Command::new(python())
            .arg(repo_root().join("streamer/python/tests/check_client.py"))
            .arg(endpoint.to_string())
            .args([&job_file, &expected_file])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{endpoint}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "ok 6");
    }
}
