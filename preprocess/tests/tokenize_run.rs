//! `flame-prep --dataset …`: the whole run through the binary, as a user runs it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow_array::{ArrayRef, RecordBatch, StringArray};
use flame_formats::Corpus;
use flame_preprocess::restream::DocumentSet;
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

/// The golden texts as jsonl (one is empty: a document too), and what the tokenizer library makes of them.
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
        .map(|t| {
            let mut ids = Vec::new();
            encoder.encode(t, &mut ids).unwrap();
            ids
        })
        .collect();
    (path, expected, texts)
}

/// Every document of a Megatron-layout output, in order (`dump` shows sequences, and a document without
/// tokens has none).
fn documents(dir: &Path) -> Vec<Vec<u32>> {
    let manifest = flame_formats::Manifest::load(dir).unwrap();
    let set = DocumentSet::open(&manifest.shard_prefixes(dir)).unwrap();
    (0..set.len())
        .map(|k| {
            let mut ids = Vec::new();
            set.document(k, &mut ids).unwrap();
            ids
        })
        .collect()
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

/// Writes `texts` as a one-column (`content`) parquet file, Arrow IPC stream and Arrow IPC file in `dir`;
/// `None` is a null.
fn columnar_inputs(dir: &Path, texts: &[Option<&str>]) -> [PathBuf; 3] {
    let batch = RecordBatch::try_from_iter([(
        "content",
        Arc::new(StringArray::from(texts.to_vec())) as ArrayRef,
    )])
    .unwrap();
    let parquet = dir.join("golden.parquet");
    let mut writer = parquet::arrow::ArrowWriter::try_new(
        std::fs::File::create(&parquet).unwrap(),
        batch.schema(),
        None,
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.close().unwrap();
    let stream = dir.join("stream.arrow");
    let mut writer = arrow_ipc::writer::StreamWriter::try_new(
        std::fs::File::create(&stream).unwrap(),
        &batch.schema(),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    let file = dir.join("file.arrow");
    let mut writer = arrow_ipc::writer::FileWriter::try_new(
        std::fs::File::create(&file).unwrap(),
        &batch.schema(),
    )
    .unwrap();
    writer.write(&batch).unwrap();
    writer.finish().unwrap();
    [parquet, stream, file]
}

/// Every format gives the same documents, the empty golden text included: issue 16, an empty text is a
/// document (here GPT-2 with `--append-eod`: no ids at all, as Megatron writes it), counted as such.
#[test]
fn every_input_format_gives_the_same_documents() {
    let dir = tempfile::tempdir().unwrap();
    let (jsonl, expected, texts) = golden_jsonl(dir.path());
    assert_eq!(texts.iter().filter(|t| t.is_empty()).count(), 1);
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
    let texts_as_options: Vec<Option<&str>> = texts.iter().map(|t| Some(t.as_str())).collect();
    let [parquet, stream, file] = columnar_inputs(dir.path(), &texts_as_options);

    let out = dir.path().join("out");
    for (input, name) in [
        (&jsonl, "jsonl"),
        (&gz, "gz"),
        (&zst, "zst"),
        (&parquet, "parquet"),
        (&stream, "stream"),
        (&file, "file"),
    ] {
        let run = tokenize(input, &out, name, &[]);
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        let summary = json_summary(&run.stdout);
        assert_eq!(
            (
                &summary["documents"],
                &summary["empty_documents"],
                &summary["bad_records"]
            ),
            (&52.into(), &1.into(), &0.into()),
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
        let dir = out.join(dataset).join(name).join("train");
        assert_eq!(documents(&dir), expected, "{name}");
        let manifest = flame_formats::Manifest::load(&dir).unwrap();
        assert_eq!(
            (manifest.totals.documents, manifest.totals.empty_documents),
            (52, 1),
            "{name}"
        );
        assert_eq!(
            manifest.totals.sequences, 51,
            "{name}: no sequence for the empty text"
        );
    }

    // Plain text: each file is one document, and an empty file is an empty document.
    let book = dir.path().join("book");
    std::fs::create_dir(&book).unwrap();
    assert!(!texts[40].is_empty());
    std::fs::write(book.join("a.txt"), texts[40].as_bytes()).unwrap();
    std::fs::write(book.join("b.txt"), b"").unwrap();
    let run = tokenize(&book, &out, "txt", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(json_summary(&run.stdout)["empty_documents"], 1);
    assert_eq!(
        documents(&out.join("book/txt/train")),
        vec![expected[40].clone(), Vec::new()]
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
            &["--context_length", "512", "--tail", tail, "--pad-id", "7"],
        );
        assert_eq!(run.code, 0, "{}", run.stderr);
        let windows = dump(&out.join("golden").join(name).join("train"));
        let manifest =
            flame_formats::Manifest::load(&out.join("golden").join(name).join("train")).unwrap();
        assert_eq!(
            (manifest.totals.documents, manifest.totals.empty_documents),
            (52, 1)
        );
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

/// Issue 16: an empty text is a document; a null one is still a bad record.
#[test]
fn a_null_text_is_a_bad_record_an_empty_one_is_not() {
    assert_fails_cleanly(
        b"{\"text\": null}\n{\"text\": \"a\"}\n",
        &["bad.jsonl: line 1: \"text\" is null, not a string"],
    );
    assert_fails_cleanly(
        b"{\"text\": \"\"}\n{\"text\": \"a\"}\n{\"text\": []}\n",
        &["bad.jsonl: line 3: \"text\" is an array, not a string"],
    );
    let (run, _dir) = run_bad_jsonl(b"{\"text\": \"a\"}\n{\"text\": \"\"}\n", &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary = json_summary(&run.stdout);
    assert_eq!(
        (&summary["documents"], &summary["empty_documents"]),
        (&2.into(), &1.into())
    );
}

/// Null texts in parquet and Arrow, and invalid UTF-8 in plain text, stop the run naming the file and
/// the row or byte; `--skip-bad-records` counts them. (Empty texts in the same files are documents.)
#[test]
fn null_texts_and_invalid_utf8_name_the_file_and_position_in_every_format() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("out");
    let texts = [Some(""), Some("a"), None, Some("")];
    let [parquet, stream, file] = columnar_inputs(dir.path(), &texts);
    let text = dir.path().join("latin1.txt");
    std::fs::write(&text, b"caf\xe9").unwrap();
    for (input, needle) in [
        (&parquet, "golden.parquet: row 2: text is null"),
        (&stream, "stream.arrow: row 2: text is null"),
        (&file, "file.arrow: row 2: text is null"),
        (&text, "latin1.txt: byte 3: invalid UTF-8"),
    ] {
        let run = tokenize(input, &out, "fails", &[]);
        assert_eq!(run.code, 1, "{needle}: {}", run.stderr);
        assert!(
            run.stderr.contains(needle),
            "expected {needle:?} in {}",
            run.stderr
        );
        let run = tokenize(input, &out, "skips", &["--skip-bad-records"]);
        assert_eq!(run.code, 0, "{needle}: {}", run.stderr);
        let summary = json_summary(&run.stdout);
        let is_text = input == &text;
        assert_eq!(
            (
                &summary["bad_records"],
                &summary["documents"],
                &summary["empty_documents"]
            ),
            (
                &1.into(),
                &(if is_text { 0 } else { 3 }).into(),
                &(if is_text { 0 } else { 2 }).into()
            ),
            "{needle}"
        );
    }
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
