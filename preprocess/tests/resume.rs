//! A run killed at any moment and restarted with the same command finishes with exactly the bytes of an
//! uninterrupted run. The kill is `abort()` inside the process after a seeded-random number of documents
//! (the `FLAME_PREP_ABORT_AFTER_DOCUMENTS` hook): no destructor, flush or cleanup runs, as with kill -9.
//! The input is the bundled sample with empty texts among its documents (issue 16).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::{ArrayRef, RecordBatch, StringArray};

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

/// Documents of the input: the sample's 209 and the empty texts among them.
const NUM_DOCUMENTS: u64 = 209 + NUM_EMPTY;
const NUM_EMPTY: u64 = 86;

/// The sample's texts with empty ones among them (first, in runs of one to three, last), as one parquet
/// file of small row groups, in `dir`; and the sample's tokenizer.
fn sample_with_empty_texts(dir: &Path) -> (PathBuf, PathBuf) {
    let sample = flame_preprocess::sample::materialize().unwrap();
    let file =
        std::fs::File::open(sample.dataset_dir.join("data/train-00000-of-00001.parquet")).unwrap();
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(file)
        .unwrap()
        .build()
        .unwrap();
    let mut texts: Vec<String> = Vec::new();
    for batch in reader {
        let batch = batch.unwrap();
        let column = batch.column_by_name("text").unwrap().as_string::<i32>();
        texts.extend(column.iter().map(|t| t.unwrap().to_owned()));
    }
    assert_eq!(texts.len(), 209);
    let mut with_empty = vec![String::new()];
    for (i, text) in texts.into_iter().enumerate() {
        with_empty.push(text);
        if i % 5 == 2 {
            with_empty.extend(std::iter::repeat_n(String::new(), 1 + i % 3));
        }
    }
    with_empty.push(String::new());
    let num_empty = with_empty.iter().filter(|t| t.is_empty()).count() as u64;
    assert_eq!(
        (with_empty.len() as u64, num_empty),
        (NUM_DOCUMENTS, NUM_EMPTY)
    );
    let batch =
        RecordBatch::try_from_iter([("text", Arc::new(StringArray::from(with_empty)) as ArrayRef)])
            .unwrap();
    let path = dir.join("gaps.parquet");
    let properties = parquet::file::properties::WriterProperties::builder()
        .set_max_row_group_row_count(Some(64))
        .build();
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        batch.schema(),
        Some(properties),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    (path, sample.tokenizer)
}

/// The command of a test run. `--bos never`, so that an empty text has no ids at all: a Megatron
/// document of zero sequences, and nothing in a packed window.
fn args<'a>(
    input: &'a (PathBuf, PathBuf),
    out: &'a str,
    name: &'a str,
    packed: bool,
) -> Vec<&'a str> {
    let mut args = vec![
        "--dataset",
        input.0.to_str().unwrap(),
        "--tokenizer",
        input.1.to_str().unwrap(),
        "--bos",
        "never",
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
    let input = sample_with_empty_texts(out.path());
    // Seeded "random" kill points over the documents, early, mid-shard, late.
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
        let run = flame_prep(&args(&input, root, &reference_name, packed));
        assert_eq!(run.code, 0, "{}", run.stderr);
        let reference = files(&out.path().join("gaps").join(&reference_name).join("train"));
        assert!(reference.len() > 10, "several shards expected");

        for trial in 0..4 {
            let name = format!("killed-{packed}-{trial}");
            let dir = out.path().join("gaps").join(&name).join("train");
            // One or two crashes in a row (a second one may find too few documents left and finish), then
            // the same command again.
            for attempt in 0..=(trial % 2) {
                let at = next(if attempt == 0 { NUM_DOCUMENTS - 10 } else { 40 }).to_string();
                let run = flame_prep_with_env(&args(&input, root, &name, packed), &[(ABORT, &at)]);
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
            let run = flame_prep(&args(&input, root, &name, packed));
            assert_eq!(run.code, 0, "{}", run.stderr);
            let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
            assert_eq!(
                (&summary["documents"], &summary["empty_documents"]),
                (&NUM_DOCUMENTS.into(), &NUM_EMPTY.into())
            );
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
    let input = sample_with_empty_texts(out.path());
    let run = flame_prep_with_env(&args(&input, root, "x", false), &[(ABORT, "150")]);
    assert_ne!(run.code, 0);
    let changed: Vec<&str> = args(&input, root, "x", false)
        .into_iter()
        .map(|a| if a == "never" { "tokenizer" } else { a })
        .collect();
    let run = flame_prep(&changed);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(summary["resumed"], false);
    let first = crate::util::flame_prep(&[
        "inspect",
        out.path().join("gaps/x/train").to_str().unwrap(),
        "--dump",
        "--range",
        "0..1",
    ]);
    assert!(
        first.stdout.starts_with("[1]\n"),
        "the first (empty) text must have its BOS: {}",
        &first.stdout[..20.min(first.stdout.len())]
    );
}
