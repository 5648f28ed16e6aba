//! `flame-prep --dataset …`: the whole run through the binary, as a user runs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use flame_formats::Corpus;
use flame_preprocess::tokenize::{BosPolicy, TextEncoder};

use crate::util::{flame_prep, shared, snapshot};

fn gpt2() -> PathBuf {
    shared().join("data/tokenizers/gpt2/tokenizer.json")
}

fn json_summary(stdout: &str) -> serde_json::Value {
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_bundled_sample_tokenizes_verifies_and_is_not_redone() {
    let out = tempfile::tempdir().unwrap();
    let run = flame_prep(&[
        "--dataset",
        "sample",
        "--output",
        out.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = json_summary(&run.stdout);
    assert_eq!(
        (
            summary["documents"].as_u64(),
            summary["bad_records"].as_u64()
        ),
        (Some(209), Some(0))
    );
    let dir = out.path().join("sample/default/train");
    assert_eq!(flame_prep(&["verify", dir.to_str().unwrap()]).code, 0);
    let corpus = Corpus::open(&dir).unwrap();
    assert_eq!(corpus.num_documents(), 209);
    assert_eq!(
        corpus.sequence(0).unwrap().to_i64_vec()[0],
        1,
        "flame's policy: BOS from the Mistral tokenizer"
    );
    let manifest = corpus.manifest().unwrap();
    assert_eq!(
        (
            manifest.tokenizer.vocab_size,
            manifest.tokenizer.bos_id,
            manifest.dtype.name()
        ),
        (32_000, Some(1), "uint16")
    );
    assert!(!dir.join(".staging").exists());

    let again = flame_prep(&[
        "--dataset",
        "sample",
        "--output",
        out.path().to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(json_summary(&again.stdout)["already_complete"], true);
    let redo = flame_prep(&[
        "--dataset",
        "sample",
        "--output",
        out.path().to_str().unwrap(),
        "--json",
        "--overwrite",
    ]);
    assert_eq!(json_summary(&redo.stdout)["already_complete"], false);
}

#[test]
fn output_bytes_do_not_depend_on_the_number_of_workers() {
    let out = tempfile::tempdir().unwrap();
    for (workers, name) in [("1", "w1"), ("3", "w3")] {
        for (extra, kind) in [
            (&[][..], "docs"),
            (&["--context_length", "1000", "--tail", "pad"][..], "packed"),
        ] {
            let mut args = vec![
                "--dataset",
                "sample",
                "--output",
                out.path().to_str().unwrap(),
                "--workers",
                workers,
                "--shard-tokens",
                "200000",
            ];
            let name = format!("{name}-{kind}");
            args.extend(["--name", &name]);
            args.extend(extra);
            let run = flame_prep(&args);
            assert_eq!(run.code, 0, "{}", run.stderr);
        }
    }
    for kind in ["docs", "packed"] {
        let one = snapshot(&out.path().join(format!("sample/w1-{kind}/train")), |_| {
            true
        });
        let three = snapshot(&out.path().join(format!("sample/w3-{kind}/train")), |_| {
            true
        });
        assert!(
            one.len() >= 9,
            "{kind}: several shards expected, got {:?}",
            one.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        assert_eq!(
            one.iter().map(|f| &f.0).collect::<Vec<_>>(),
            three.iter().map(|f| &f.0).collect::<Vec<_>>()
        );
        for ((name, a), (_, b)) in one.iter().zip(&three) {
            assert!(a == b, "{kind}/{name} differs between 1 and 3 workers");
        }
    }
}

/// The golden texts as jsonl (one is empty, a bad record), and what the tokenizer library makes of them.
fn golden_jsonl(dir: &Path) -> (PathBuf, Vec<Vec<u32>>, Vec<String>) {
    let texts = std::fs::read_to_string(shared().join("data/golden/texts.jsonl")).unwrap();
    let texts: Vec<String> = texts
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    let path = dir.join("golden.jsonl");
    let mut file = std::fs::File::create(&path).unwrap();
    for text in &texts {
        writeln!(file, "{}", serde_json::json!({"id": 0, "text": text})).unwrap();
    }
    let encoder = TextEncoder::load(&gpt2(), BosPolicy::Never, true, false).unwrap();
    let expected = texts
        .iter()
        .filter(|t| !t.is_empty())
        .map(|t| {
            let mut ids = Vec::new();
            encoder.encode(t, &mut ids).unwrap();
            ids
        })
        .collect();
    (path, expected, texts)
}

fn dump(dir: &Path) -> Vec<Vec<u32>> {
    let run = flame_prep(&["inspect", dir.to_str().unwrap(), "--dump"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    run.stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn tokenize(input: &Path, out: &Path, name: &str, extra: &[&str]) -> crate::util::Run {
    let tokenizer = gpt2();
    let mut args = vec![
        "--dataset",
        input.to_str().unwrap(),
        "--tokenizer",
        tokenizer.to_str().unwrap(),
        "--output",
        out.to_str().unwrap(),
        "--name",
        name,
        "--append-eod",
        "--json",
    ];
    args.extend(extra);
    flame_prep(&args)
}

#[test]
fn every_input_format_gives_the_same_documents() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, expected, texts) = golden_jsonl(dir.path());
    let non_empty: Vec<&String> = texts.iter().filter(|t| !t.is_empty()).collect();
    let raw = std::fs::read(&jsonl).unwrap();

    let gz = dir.path().join("golden.jsonl.gz");
    let mut encoder = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::default(),
    );
    encoder.write_all(&raw).unwrap();
    encoder.finish().unwrap();
    let zst = dir.path().join("golden.jsonl.zst");
    std::fs::write(&zst, zstd::encode_all(&raw[..], 3).unwrap()).unwrap();

    let batch = RecordBatch::try_from_iter([(
        "content",
        Arc::new(StringArray::from(
            non_empty.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
        )) as ArrayRef,
    )])
    .unwrap();
    let parquet = dir.path().join("golden.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let stream = dir.path().join("stream.arrow");
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(
        std::fs::File::create(&stream).unwrap(),
        &batch.schema(),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let file = dir.path().join("file.arrow");
    let mut writer = arrow_ipc::writer::FileWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        &batch.schema(),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();

    let out = dir.path().join("out");
    for (input, name) in [
        (&jsonl, "jsonl"),
        (&gz, "gz"),
        (&zst, "zst"),
        (&parquet, "parquet"),
        (&stream, "stream"),
        (&file, "file"),
    ] {
        let skip: &[&str] = if name == "jsonl" || name == "gz" || name == "zst" {
            &["--skip-bad-records"]
        } else {
            &[]
        };
        let run = tokenize(input, &out, name, skip);
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let summary = json_summary(&run.stdout);
        assert_eq!(
            summary["bad_records"],
            u64::from(!skip.is_empty()),
            "{name}"
        );
        let dataset = input
            .file_name()
            .unwrap()
            .to_str()
            .unwrap()
            .split('.')
            .next()
            .unwrap();
        assert_eq!(
            dump(&out.join(dataset).join(name).join("train")),
            expected,
            "{name}"
        );
    }

    let txt = dir.path().join("book.txt");
    std::fs::write(&txt, non_empty[40].as_bytes()).unwrap();
    let run = tokenize(&txt, &out, "txt", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(
        dump(&out.join("book/txt/train")),
        vec![expected[40].clone()]
    );
}

#[test]
fn packed_output_keeps_every_token_and_records_the_tail() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, expected, _) = golden_jsonl(dir.path());
    let stream: Vec<u32> = expected.concat();
    let out = dir.path().join("out");
    for (tail, name) in [("drop", "drop"), ("pad", "pad")] {
        let run = tokenize(
            &jsonl,
            &out,
            name,
            &[
                "--skip-bad-records",
                "--context_length",
                "512",
                "--tail",
                tail,
                "--pad-id",
                "7",
            ],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let windows = dump(&out.join("golden").join(name).join("train"));
        let manifest =
            flame_formats::Manifest::load(&out.join("golden").join(name).join("train")).unwrap();
        let packing = manifest.packing.unwrap();
        let flat = windows.concat();
        let kept = stream.len() / 512 * 512;
        assert!(windows.iter().all(|w| w.len() == 512));
        assert_eq!(&flat[..kept], &stream[..kept]);
        if tail == "drop" {
            assert_eq!(
                (flat.len(), packing.dropped_tokens),
                (kept, (stream.len() - kept) as u64)
            );
        } else {
            assert_eq!(&flat[kept..stream.len()], &stream[kept..]);
            assert!(flat[stream.len()..].iter().all(|&t| t == 7));
            assert_eq!(packing.pad_tokens as usize, flat.len() - stream.len());
        }
    }
}

/// Writes `lines` as a jsonl file and runs flame-prep on it; the output directory must stay free of shards.
fn run_bad_jsonl(content: &[u8], extra: &[&str]) -> (crate::util::Run, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let input = dir.path().join("bad.jsonl");
    std::fs::write(&input, content).unwrap();
    let run = tokenize(&input, &dir.path().join("out"), "x", extra);
    (run, dir)
}

fn assert_fails_cleanly(content: &[u8], needles: &[&str]) {
    let (run, dir) = run_bad_jsonl(content, &[]);
    assert_eq!(run.code, 1, "{}", run.stderr);
    for needle in needles {
        assert!(
            run.stderr.contains(needle),
            "expected {needle:?} in {}",
            run.stderr
        );
    }
    let out = dir.path().join("out/bad/x/train");
    let left: Vec<_> = std::fs::read_dir(&out)
        .map(|d| d.map(|e| e.unwrap().file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "a failed run left {left:?}");
    let (skipped, _dir) = run_bad_jsonl(content, &["--skip-bad-records"]);
    assert_eq!(skipped.code, 0, "{}", skipped.stderr);
    assert_eq!(json_summary(&skipped.stdout)["bad_records"], 1);
}

#[test]
fn malformed_json_names_file_line_and_column() {
    assert_fails_cleanly(
        b"{\"text\": \"a\"}\n{\"text\": \"b\"}\n{\"text\": oops}\n",
        &["bad.jsonl: line 3: column 10: malformed JSON"],
    );
}

#[test]
fn invalid_utf8_names_the_line() {
    assert_fails_cleanly(
        b"{\"text\": \"a\"}\n{\"text\": \"\xff\xfe\"}\n",
        &["bad.jsonl: line 2", "malformed JSON"],
    );
}

#[test]
fn empty_and_null_documents_are_bad_records() {
    assert_fails_cleanly(
        b"{\"text\": \"a\"}\n{\"text\": \"\"}\n",
        &["bad.jsonl: line 2: empty document"],
    );
    assert_fails_cleanly(
        b"{\"text\": null}\n{\"text\": \"a\"}\n",
        &["bad.jsonl: line 1: \"text\" is null, not a string"],
    );
}

#[test]
fn a_missing_text_key_lists_the_keys_found() {
    assert_fails_cleanly(
        b"{\"text\": \"a\"}\n{\"body\": \"b\"}\n",
        &["bad.jsonl: line 2: no text key", "[\"body\"]", "--text-key"],
    );
}

#[test]
fn whole_file_faults_name_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "empty.jsonl",
            Vec::new(),
            "empty.jsonl: file is empty (0 bytes)",
        ),
        (
            "corrupt.parquet",
            b"PAR1 this is not parquet at all PAR1".to_vec(),
            "corrupt.parquet: not a readable parquet file",
        ),
        (
            "corrupt.jsonl.gz",
            b"\x1f\x8b\x08\x00garbage".to_vec(),
            "corrupt.jsonl.gz: read error after line 0",
        ),
    ];
    for (name, bytes, needle) in cases {
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        let run = tokenize(&input, &out, "x", &["--skip-bad-records"]);
        assert_eq!(run.code, 1, "{name}");
        assert!(
            run.stderr.contains(needle),
            "{name}: expected {needle:?} in {}",
            run.stderr
        );
    }
    let run = tokenize(&dir.path().join("missing.jsonl"), &out, "x", &[]);
    assert!(
        run.code == 1 && run.stderr.contains("missing.jsonl: no such file"),
        "{}",
        run.stderr
    );

    let batch =
        RecordBatch::try_from_iter([("body", Arc::new(StringArray::from(vec!["a"])) as ArrayRef)])
            .unwrap();
    let parquet = dir.path().join("nocolumn.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let run = tokenize(&parquet, &out, "x", &[]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("nocolumn.parquet: no text column: looked for \"text\" or \"content\" among the columns [\"body\"]"), "{}", run.stderr);
    let run = tokenize(&parquet, &out, "y", &["--text-key", "body"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
}

#[test]
fn shuffle_is_a_seeded_permutation_of_the_documents() {
    let out = tempfile::tempdir().unwrap();
    let root = out.path().to_str().unwrap();
    let run = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "--dataset",
            "sample",
            "--output",
            root,
            "--name",
            name,
            "--shard-tokens",
            "300000",
        ];
        args.extend(extra);
        let run = flame_prep(&args);
        assert_eq!(run.code, 0, "{}", run.stderr);
        dump(&out.path().join("sample").join(name).join("train"))
    };
    let ordered = run("ordered", &[]);
    let shuffled = run("s1", &["--shuffle", "--workers", "1"]);
    assert_eq!(
        run("s2", &["--shuffle", "--seed", "42", "--workers", "3"]),
        shuffled,
        "same seed, other worker count"
    );
    let other = run("s3", &["--shuffle", "--seed", "43"]);
    assert_ne!(shuffled, ordered);
    assert_ne!(shuffled, other);
    let mut a = ordered.clone();
    let mut b = shuffled.clone();
    a.sort();
    b.sort();
    assert_eq!(a, b, "a permutation of the same documents");
    assert!(!out.path().join("sample/s1/train/.unshuffled").exists());
    let a = std::fs::read(out.path().join("sample/s1/train/shard_00000.bin")).unwrap();
    let b = std::fs::read(out.path().join("sample/s2/train/shard_00000.bin")).unwrap();
    assert!(a == b);
}
