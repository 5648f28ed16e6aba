//! `flame-prep inspect`: summaries for people and tools, and dumps of token ids.

use crate::util::{fixture, flame_prep};

fn golden_ids(line: usize) -> Vec<u64> {
    let golden = std::fs::read_to_string(fixture(
        "../../../shared/data/golden/mistral-7b-v0.1.ids.jsonl",
    ))
    .unwrap();
    let value: serde_json::Value = serde_json::from_str(golden.lines().nth(line).unwrap()).unwrap();
    let mut ids = vec![1];
    ids.extend(
        value["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap()),
    );
    ids
}

#[test]
fn json_summary_of_a_manifest_directory() {
    let run = flame_prep(&[
        "inspect",
        fixture("golden-mistral").to_str().unwrap(),
        "--json",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(summary["format"], "megatron");
    assert_eq!(summary["dtype"], "uint16");
    assert_eq!(summary["sequences"], 52);
    assert_eq!(summary["documents"], 52);
    assert_eq!(
        (&summary["source_documents"], &summary["empty_documents"]),
        (&52.into(), &1.into()),
        "issue 16: the manifest's count of empty texts"
    );
    assert_eq!(summary["tokens"], 28_999);
    let histogram = summary["histogram"].as_array().unwrap();
    assert_eq!(
        histogram
            .iter()
            .map(|b| b["count"].as_u64().unwrap())
            .sum::<u64>(),
        52
    );
}

#[test]
fn text_summary_of_a_packed_prefix() {
    let prefix = fixture("golden-mistral-packed/shard_00000");
    let run = flame_prep(&["inspect", prefix.to_str().unwrap()]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout.contains("format     packed (seq_len 256)"),
        "{}",
        run.stdout
    );
    assert!(run.stdout.contains("sequences  114"), "{}", run.stdout);
    assert!(
        !run.stdout.contains("source "),
        "a prefix has no manifest to count source documents: {}",
        run.stdout
    );
    let run = flame_prep(&[
        "inspect",
        fixture("golden-mistral-packed").to_str().unwrap(),
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(
        run.stdout
            .contains("documents  114\nsource     52 documents, 1 of them empty\n"),
        "{}",
        run.stdout
    );
}

#[test]
fn dump_prints_one_json_array_per_sequence() {
    let run = flame_prep(&[
        "inspect",
        fixture("golden-mistral").to_str().unwrap(),
        "--dump",
        "--range",
        "1..3",
    ]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let lines: Vec<Vec<u64>> = run
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, vec![golden_ids(1), golden_ids(2)]);
    let all = flame_prep(&[
        "inspect",
        fixture("golden-mistral/shard_00000.idx").to_str().unwrap(),
        "--dump",
    ]);
    assert_eq!(all.stdout.lines().count(), 52);
    let tail = flame_prep(&[
        "inspect",
        fixture("golden-mistral").to_str().unwrap(),
        "--dump",
        "--range",
        "51..",
    ]);
    assert_eq!(tail.stdout.lines().count(), 1);
}

#[test]
fn a_directory_of_prefixes_is_a_corpus() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["part_2", "part_10"] {
        for ext in ["bin", "idx"] {
            std::fs::copy(
                fixture(&format!("golden-mistral/shard_00000.{ext}")),
                dir.path().join(format!("{name}.{ext}")),
            )
            .unwrap();
        }
    }
    let run = flame_prep(&["inspect", dir.path().to_str().unwrap(), "--json"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (summary["shards"].as_u64(), summary["sequences"].as_u64()),
        (Some(2), Some(104))
    );
}

#[test]
fn bad_arguments_exit_2_with_usage() {
    let run = flame_prep(&["inspect", "x", "--range", "3..1", "--dump"]);
    assert_eq!(run.code, 2);
    assert!(run.stderr.contains("runs backwards"), "{}", run.stderr);
    let help = flame_prep(&["inspect", "--help"]);
    assert_eq!(help.code, 0);
    assert!(help.stdout.contains("Examples:"), "{}", help.stdout);
}
