//! `--num-shards K --shard-index I` on K machines, then `flame-prep merge`, gives exactly the bytes of a
//! single-machine run, for document-level and packed output, with more parts than files too, and with
//! empty texts among the documents (issue 16).

use std::path::Path;

use crate::util::{flame_prep, shared, snapshot};

/// Moby-Dick's chapters again as `en-moby-dick-gaps.jsonl` in `corpus`, with empty texts around and
/// between them: documents without ids (GPT-2 adds none, and EOD follows only ids). Returns how many.
fn write_moby_dick_with_gaps(corpus: &Path) -> u64 {
    let chapters = std::fs::read_to_string(corpus.join("en-moby-dick.jsonl")).unwrap();
    let mut gaps = String::from("{\"text\": \"\"}\n");
    for (i, line) in chapters.lines().enumerate() {
        gaps.push_str(line);
        gaps.push('\n');
        for _ in 0..i % 3 {
            gaps.push_str("{\"text\": \"\"}\n");
        }
    }
    gaps.push_str("{\"text\": \"\"}\n");
    std::fs::write(corpus.join("en-moby-dick-gaps.jsonl"), &gaps).unwrap();
    (gaps.lines().count() - chapters.lines().count()) as u64
}

#[test]
fn parts_merge_into_the_bytes_of_a_single_run() {
    let work = tempfile::tempdir().unwrap();
    let corpus = work.path().join("corpus");
    std::fs::create_dir(&corpus).unwrap();
    for name in [
        "en-moby-dick.jsonl",
        "en-jargon-devil.jsonl",
        "code-go-std-1mb.jsonl",
    ] {
        std::fs::copy(
            shared().join("data/corpus/jsonl").join(name),
            corpus.join(name),
        )
        .unwrap();
    }
    let num_empty = write_moby_dick_with_gaps(&corpus);
    let tokenizer = shared().join("data/tokenizers/gpt2/tokenizer.json");
    let (corpus, tokenizer) = (corpus.to_str().unwrap(), tokenizer.to_str().unwrap());
    let cases: [(&str, u32, &[&str]); 3] = [
        ("docs", 5, &[]),
        ("packed", 3, &["--context_length", "2048", "--tail", "pad"]),
        (
            "shuffled",
            2,
            &["--shuffle", "--seed", "7", "--context_length", "512"],
        ),
    ];
    for (layout, parts, extra) in cases {
        let single = work.path().join(format!("single-{layout}"));
        let multi = work.path().join(format!("multi-{layout}"));
        let base = |out: &Path| {
            let mut args: Vec<String> = [
                "--dataset",
                corpus,
                "--tokenizer",
                tokenizer,
                "--append-eod",
                "--shard-tokens",
                "300000",
                "--name",
                layout,
                "--output",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
            args.push(out.to_str().unwrap().to_owned());
            args.extend(extra.iter().map(|s| (*s).to_owned()));
            args
        };
        let args = base(&single);
        let run = flame_prep(&args.iter().map(String::as_str).collect::<Vec<_>>());
        assert_eq!(run.code, 0, "{}", run.stderr);
        let manifest =
            flame_formats::Manifest::load(&single.join("corpus").join(layout).join("train"))
                .unwrap();
        assert_eq!(manifest.totals.empty_documents, num_empty, "{layout}");
        for index in 0..parts {
            let mut args = base(&multi);
            args.extend([
                "--num-shards".into(),
                parts.to_string(),
                "--shard-index".into(),
                index.to_string(),
            ]);
            let run = flame_prep(&args.iter().map(String::as_str).collect::<Vec<_>>());
            assert_eq!(run.code, 0, "part {index}: {}", run.stderr);
        }
        let job = multi.join("corpus").join(layout).join("train");
        let merge = flame_prep(&["merge", job.to_str().unwrap(), "--remove-parts"]);
        assert_eq!(merge.code, 0, "{}", merge.stderr);
        let expected = snapshot(&single.join("corpus").join(layout).join("train"), |_| true);
        let got = snapshot(&job, |_| true);
        assert!(expected.len() > 4, "{layout}: several shards expected");
        assert_eq!(
            got.iter().map(|f| &f.0).collect::<Vec<_>>(),
            expected.iter().map(|f| &f.0).collect::<Vec<_>>(),
            "{layout}"
        );
        for ((name, a), (_, b)) in got.iter().zip(&expected) {
            assert!(
                a == b,
                "{layout}: {name} of the merged job differs from the single run"
            );
        }
        assert_eq!(
            std::fs::read_dir(&job)
                .unwrap()
                .filter(|e| e.as_ref().unwrap().path().is_dir())
                .count(),
            0
        );
    }
}

#[test]
fn merge_refuses_missing_or_unfinished_parts() {
    let work = tempfile::tempdir().unwrap();
    let out = work.path().to_str().unwrap();
    let run = flame_prep(&[
        "--dataset",
        "sample",
        "--output",
        out,
        "--num-shards",
        "2",
        "--shard-index",
        "1",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let job = work.path().join("sample/default/train");
    let merge = flame_prep(&["merge", job.to_str().unwrap()]);
    assert_eq!(merge.code, 1);
    assert!(
        merge.stderr.contains("parts [1] found, expected 0..2"),
        "{}",
        merge.stderr
    );
    std::fs::create_dir(job.join("part-00000-of-00002")).unwrap();
    let merge = flame_prep(&["merge", job.to_str().unwrap()]);
    assert!(
        merge
            .stderr
            .contains("is not finished (no manifest.json); rerun its --shard-index 0"),
        "{}",
        merge.stderr
    );
    let bad = flame_prep(&[
        "--dataset",
        "sample",
        "--output",
        out,
        "--num-shards",
        "2",
        "--shard-index",
        "2",
    ]);
    assert_eq!(bad.code, 1);
    assert!(
        bad.stderr
            .contains("--shard-index 2 must be below --num-shards 2"),
        "{}",
        bad.stderr
    );
}
