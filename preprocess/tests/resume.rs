//! A run killed at any moment and restarted with the same command finishes with exactly the bytes of an
//! uninterrupted run. The kill is `abort()` inside the process after a seeded-random number of documents
//! (the `FLAME_PREP_ABORT_AFTER_DOCUMENTS` hook): no destructor, flush or cleanup runs, as with kill -9.

use std::path::Path;

use crate::util::{flame_prep, flame_prep_with_env};

const ABORT: &str = "FLAME_PREP_ABORT_AFTER_DOCUMENTS";

fn files(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| {
            (
                e.file_name().to_string_lossy().into_owned(),
                if e.path().is_file() {
                    std::fs::read(e.path()).unwrap()
                } else {
                    Vec::new()
                },
            )
        })
        .collect();
    files.sort();
    files
}

fn args<'a>(out: &'a str, name: &'a str, packed: bool) -> Vec<&'a str> {
    let mut args = vec![
        "--dataset",
        "sample",
        "--output",
        out,
        "--name",
        name,
        "--shard-tokens",
        "60000",
        "--workers",
        "2",
        "--json",
    ];
    if packed {
        args.extend(["--context_length", "1024", "--tail", "pad"]);
    }
    args
}

#[test]
fn killed_runs_resume_to_identical_bytes() {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().to_str().unwrap();
    // Seeded "random" kill points over the sample's 209 documents, early, mid-shard, late.
    let mut state = 0x5EED_u64;
    let mut next = |n: u64| {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        1 + (state >> 33) % n
    };
    let mut resumed = 0;
    for packed in [false, true] {
        let reference_name = format!("reference-{packed}");
        let run = flame_prep(&args(root, &reference_name, packed));
        assert_eq!(run.code, 0, "{}", run.stderr);
        let reference = files(
            &out.path()
                .join("sample")
                .join(&reference_name)
                .join("train"),
        );
        assert!(reference.len() > 10, "several shards expected");

        for trial in 0..4 {
            let name = format!("killed-{packed}-{trial}");
            let dir = out.path().join("sample").join(&name).join("train");
            // One or two crashes in a row (a second one may find too few documents left and finish), then
            // the same command again.
            for attempt in 0..=(trial % 2) {
                let at = next(if attempt == 0 { 200 } else { 40 }).to_string();
                let run = flame_prep_with_env(&args(root, &name, packed), &[(ABORT, &at)]);
                if attempt > 0 && run.code == 0 {
                    break;
                }
                assert_ne!(
                    run.code, 0,
                    "the hook must kill the run at document {at}: {}",
                    run.stderr
                );
                assert!(
                    !dir.join("manifest.json").exists(),
                    "a killed run must not look complete"
                );
            }
            let run = flame_prep(&args(root, &name, packed));
            assert_eq!(run.code, 0, "{}", run.stderr);
            let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
            assert_eq!(summary["documents"], 209);
            resumed += u32::from(summary["resumed"].as_bool().unwrap());
            let got = files(&dir);
            assert_eq!(
                got.iter().map(|f| &f.0).collect::<Vec<_>>(),
                reference.iter().map(|f| &f.0).collect::<Vec<_>>(),
                "trial {trial}"
            );
            for ((name, a), (_, b)) in got.iter().zip(&reference) {
                assert!(
                    a == b,
                    "packed={packed} trial {trial}: {name} differs from the uninterrupted run"
                );
            }
        }
    }
    assert!(
        resumed >= 4,
        "most kills should leave a journal to resume from ({resumed} of 8 resumed)"
    );
}

#[test]
fn a_changed_job_does_not_resume_a_foreign_journal() {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().to_str().unwrap();
    let run = flame_prep_with_env(&args(root, "x", false), &[(ABORT, "150")]);
    assert_ne!(run.code, 0);
    let mut changed = args(root, "x", false);
    changed.extend(["--bos", "never"]);
    let run = flame_prep(&changed);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(summary["resumed"], false);
    let first = crate::util::flame_prep(&[
        "inspect",
        out.path().join("sample/x/train").to_str().unwrap(),
        "--dump",
        "--range",
        "0..1",
    ]);
    assert!(
        !first.stdout.starts_with("[1,"),
        "BOS must be gone: {}",
        &first.stdout[..20]
    );
}
