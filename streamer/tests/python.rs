//! The Python client (`streamer/python/flame_stream`) against a live server, in the project's test venv:
//! it must receive exactly the micro-batches the Rust stream computes, with numpy alone and as torch
//! `DataLoader` workers, and read ahead as the Rust clients do (seen through a recording proxy).

use std::path::{Path, PathBuf};
use std::process::Command;

use flame_streamer::protocol::Message;
use flame_streamer::spec::JobSpec;
use flame_streamer::stream::Stream;

use crate::server::{job, start};
use crate::util::{Proxy, python, repo_root};

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

/// One `DataLoader` run of `check_torch.py` and the proxy its workers connect through.
struct TorchCase {
    proxy: Proxy,
    micro_batch_size: u32,
    num_samples: u64,
    workers: u64,
    shared_memory: bool,
    start_step: u64,
    steps: Option<u64>,
}

impl TorchCase {
    /// Whether the job has micro-batch `(step, micro_step)` for both ranks (global batches of 4·B).
    fn in_job(&self, (step, micro_step): (u64, u64)) -> bool {
        let b = u64::from(self.micro_batch_size);
        step * 4 * b + (micro_step + 1) * 2 * b <= self.num_samples
    }

    /// The micro-batch at `position` in the one-process sequence (2 micro-steps per step).
    fn at(&self, position: u64) -> (u64, u64) {
        (self.start_step + position / 2, position % 2)
    }

    /// What worker `w`'s connection must carry: its micro-batches (positions `w, w + W, ...` of the
    /// sequence) in order, each asked for along with the request for its next one, which for the last is
    /// a micro-batch nobody asks for when the job has it (past `steps`). With a ring, each slot goes back
    /// only after the request for the next micro-batch went out.
    fn expected_frames(&self, worker: u64, slots: &[((u64, u64), u32)]) -> Vec<String> {
        let stride = self.workers.max(1);
        let end = self.steps.map(|s| s * 2);
        let mut asked = Vec::new();
        let mut position = worker;
        while end.is_none_or(|e| position < e) && self.in_job(self.at(position)) {
            asked.push(self.at(position));
            position += stride;
        }
        let mut requests = asked.clone();
        if self.in_job(self.at(position)) {
            requests.push(self.at(position));
        }
        let request = |(s, m): (u64, u64)| format!("Request({s},{m})");
        let mut frames = vec!["Hello".to_owned()];
        if self.shared_memory {
            frames.push("ShmOpen".into());
            let answered: Vec<_> = slots.iter().map(|(at, _)| *at).collect();
            assert_eq!(
                answered, requests,
                "worker {worker}: every request answered in order"
            );
        }
        frames.extend(requests.iter().take(2).copied().map(request));
        for k in 1..asked.len() {
            if self.shared_memory {
                frames.push(format!("Release({})", slots[k - 1].1));
            }
            frames.extend(requests.get(k + 1).copied().map(request));
        }
        frames
    }
}

/// `base` with micro-batches of `micro_batch_size` for 2 ranks, 2 micro-steps per step, ending after
/// micro-step 0 of step 5 (11 micro-batches): its TOML file, and rank 1's micro-batches as the Rust stream
/// computes them, in `flame-stream dump`'s JSON lines.
fn job_of_11_micro_batches(
    base: &JobSpec,
    micro_batch_size: u32,
    dir: &Path,
) -> (PathBuf, PathBuf) {
    let mut spec = base.clone();
    spec.micro_batch_size = micro_batch_size;
    spec.global_batch_size = 4 * micro_batch_size;
    spec.num_samples = Some(u64::from(22 * micro_batch_size));
    assert!(spec.varlen);
    let job_file = dir.join(format!("job{micro_batch_size}.toml"));
    std::fs::write(&job_file, spec.to_toml()).unwrap();
    let reference = Stream::open(spec).unwrap();
    let mut expected = String::new();
    for (step, micro_step) in (0..11).map(|p| (p / 2, p % 2)) {
        let samples = reference.micro_batch(step, micro_step, 1, 2).unwrap();
        let line = serde_json::json!({
            "step": step,
            "micro_step": micro_step,
            "rank": 1,
            "samples": samples.iter().map(|s| serde_json::json!({"index": s.index, "dataset": s.dataset})).collect::<Vec<_>>(),
            "tokens": samples.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>(),
            "cu_seqlens": samples.iter().map(|s| s.cu_seqlens.clone()).collect::<Vec<_>>(),
        });
        expected.push_str(&line.to_string());
        expected.push('\n');
    }
    assert!(
        reference.micro_batch(5, 1, 1, 2).is_err(),
        "the job ends there"
    );
    let expected_file = dir.join(format!("expected{micro_batch_size}.jsonl"));
    std::fs::write(&expected_file, expected).unwrap();
    (job_file, expected_file)
}

/// `base` with micro-batches of 1 for 2 ranks and windows of 4096 tokens, as a job of one epoch: nothing
/// in its TOML says where it ends (the server does: `protocol::END_OF_JOB`). Its TOML file, rank 1's
/// micro-batches to the job's end as the Rust stream computes them, and how many there are.
fn job_of_one_epoch(base: &JobSpec, dir: &Path) -> (PathBuf, PathBuf, u64) {
    let mut spec = base.clone();
    (spec.seq_len, spec.micro_batch_size, spec.global_batch_size) = (4096, 1, 4);
    (spec.num_samples, spec.epochs) = (None, Some(1));
    let job_file = dir.join("epoch.toml");
    std::fs::write(&job_file, spec.to_toml()).unwrap();
    let reference = Stream::open(spec).unwrap();
    let mut expected = String::new();
    // Rank 1 is the last rank: its micro-batch is past the end exactly where the micro-step is.
    let mut count = 0;
    while let Ok(samples) = reference.micro_batch(count / 2, count % 2, 1, 2) {
        let line = serde_json::json!({
            "step": count / 2,
            "micro_step": count % 2,
            "tokens": samples.iter().map(|s| s.tokens.clone()).collect::<Vec<_>>(),
            "cu_seqlens": samples.iter().map(|s| s.cu_seqlens.clone()).collect::<Vec<_>>(),
        });
        expected.push_str(&line.to_string());
        expected.push('\n');
        count += 1;
    }
    assert!(count > 4, "a job of a few micro-batches, not {count}");
    let expected_file = dir.join("epoch.jsonl");
    std::fs::write(&expected_file, expected).unwrap();
    (job_file, expected_file, count)
}

#[test]
fn torch_data_loader_workers_yield_the_one_process_sequence_and_read_ahead() {
    let dir = tempfile::tempdir().unwrap();
    let base = job(dir.path());
    let endpoints = start(dir.path(), None);
    let (mut cases, mut plan) = (Vec::new(), Vec::new());
    for micro_batch_size in [1, 2] {
        let (job_file, expected_file) =
            job_of_11_micro_batches(&base, micro_batch_size, dir.path());
        for workers in [0, 2, 3] {
            for shared_memory in [false, true] {
                // To the job's end; and 3 steps from step 1, in the other layout.
                for (start_step, steps, layout) in [(0, None, "flat"), (1, Some(3), "per_sample")] {
                    let proxy = Proxy::start(
                        &dir.path().join(format!("{}.sock", cases.len())),
                        &endpoints[0],
                    );
                    plan.push(serde_json::json!({
                        "endpoint": proxy.endpoint.to_string(),
                        "job": job_file,
                        "rank": 1,
                        "world_size": 2,
                        "workers": workers,
                        "shared_memory": shared_memory.then_some(4),
                        "start_step": start_step,
                        "steps": steps,
                        "layout": layout,
                        "expected": expected_file,
                    }));
                    cases.push(TorchCase {
                        proxy,
                        micro_batch_size,
                        num_samples: u64::from(22 * micro_batch_size),
                        workers,
                        shared_memory,
                        start_step,
                        steps,
                    });
                }
            }
        }
    }
    // A job of epochs ends where the server says so: the DataLoader stops there, cleanly.
    let (epoch_job, epoch_expected, epoch_batches) = job_of_one_epoch(&base, dir.path());
    for workers in [0, 2, 3] {
        for shared_memory in [None, Some(4)] {
            plan.push(serde_json::json!({
                "endpoint": endpoints[0].to_string(),
                "job": epoch_job,
                "rank": 1,
                "world_size": 2,
                "workers": workers,
                "shared_memory": shared_memory,
                "start_step": 0,
                "steps": null,
                "layout": "flat",
                "expected": epoch_expected,
            }));
        }
    }
    let plan_file = dir.path().join("plan.json");
    std::fs::write(&plan_file, serde_json::json!({ "cases": plan }).to_string()).unwrap();
    let out = Command::new(python())
        .arg(repo_root().join("streamer/python/tests/check_torch.py"))
        .arg(&plan_file)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // 2 micro-batch sizes × 3 worker counts × 2 transports × (11 to the end + 6 in 3 steps), and the
    // job of one epoch to its end with 3 worker counts × 2 transports.
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        format!("ok {}", 204 + 6 * epoch_batches)
    );
    // The Python process has exited: every connection is over, and its trace complete.
    for case in cases {
        let mut traces = case.proxy.traces();
        let what = format!(
            "B {}, {} workers, shared memory {}, steps {:?}",
            case.micro_batch_size, case.workers, case.shared_memory, case.steps
        );
        assert_eq!(
            traces.len() as u64,
            case.workers.max(1),
            "{what}: one connection per worker"
        );
        // Worker w's first request is for position w.
        traces.sort_by_key(|t| {
            t.to_server.iter().find_map(|m| match m {
                Message::Request { step, micro_step } => Some((*step, *micro_step)),
                _ => None,
            })
        });
        for (worker, trace) in (0..).zip(&traces) {
            assert_eq!(
                trace.sent(),
                case.expected_frames(worker, &trace.slots()),
                "{what}: worker {worker}"
            );
        }
    }
}
