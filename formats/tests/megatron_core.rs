//! Interop with the real megatron-core (0.16.1, installed by tools/setup-python.sh), both ways:
//! files its `IndexedDatasetBuilder` writes are byte-identical to ours and read back identically with
//! ours; files we write are read by its `IndexedDataset` with identical tokens, lengths, pointers,
//! document index and modes. Its `add_index` merge gives the same bytes as our `merge`.

use std::path::Path;
use std::process::Command;

use flame_formats::megatron::merge;
use flame_formats::{IndexedDataset, IndexedDatasetBuilder, TokenDtype};
use serde_json::{Value, json};

use crate::util::{Doc, SplitMix, WRITABLE, python, read_docs, repo_root, widen, write_docs};

struct Case {
    name: String,
    dtype: TokenDtype,
    is_multimodal: bool,
    use_add_document: bool,
    docs: Vec<Doc>,
}

/// Random documents with at least one token: numpy cannot memory-map an empty `.bin`, so megatron-core
/// cannot open a dataset without tokens (flame can; see `roundtrip::empty_dataset_round_trips`).
fn random_docs(rng: &mut SplitMix, dtype: TokenDtype) -> Vec<Doc> {
    let mut docs = random_docs_maybe_empty(rng, dtype);
    docs.push(vec![(vec![1], 1)]);
    docs
}

fn random_docs_maybe_empty(rng: &mut SplitMix, dtype: TokenDtype) -> Vec<Doc> {
    let max = dtype.max_token_id().min(70_000) + 1;
    (0..rng.below(12))
        .map(|_| {
            (0..rng.below(4))
                .map(|_| {
                    let len = if rng.below(5) == 0 { 0 } else { rng.below(20) };
                    let tokens = (0..len)
                        .map(|_| u32::try_from(rng.below(max)).unwrap())
                        .collect();
                    (tokens, i8::try_from(rng.below(128)).unwrap())
                })
                .collect()
        })
        .collect()
}

fn cases() -> Vec<Case> {
    let mut rng = SplitMix(2026);
    let mut cases = Vec::new();
    for dtype in WRITABLE {
        for (is_multimodal, use_add_document) in [(false, false), (false, true), (true, false)] {
            cases.push(Case {
                name: format!(
                    "{dtype}_{}_{}",
                    u8::from(is_multimodal),
                    u8::from(use_add_document)
                ),
                dtype,
                is_multimodal,
                use_add_document,
                docs: random_docs(&mut rng, dtype),
            });
        }
    }
    // The hexdump example of ../shared/notes/megatron.md §1.1.
    let seq = |n: u32| ((1..=n).collect::<Vec<u32>>(), 0i8);
    cases.push(Case {
        name: "notes_example".into(),
        dtype: TokenDtype::Uint16,
        is_multimodal: false,
        use_add_document: false,
        docs: vec![
            vec![seq(4)],
            vec![seq(3)],
            vec![seq(0)],
            vec![seq(6)],
            vec![seq(2), seq(2)],
        ],
    });
    cases
}

fn megatron_steps(case: &Case) -> Vec<Value> {
    let mut steps = Vec::new();
    for doc in &case.docs {
        if case.use_add_document {
            let flat: Vec<u32> = doc.iter().flat_map(|(t, _)| t.iter().copied()).collect();
            let lengths: Vec<usize> = doc.iter().map(|(t, _)| t.len()).collect();
            steps.push(json!(["document", flat, lengths]));
        } else {
            for (tokens, mode) in doc {
                steps.push(json!(["item", tokens, mode]));
            }
            steps.push(json!(["end"]));
        }
    }
    steps
}

fn write_ours(prefix: &Path, case: &Case) {
    if case.use_add_document {
        let mut builder = IndexedDatasetBuilder::create(prefix, case.dtype).unwrap();
        for doc in &case.docs {
            let flat: Vec<u32> = doc.iter().flat_map(|(t, _)| t.iter().copied()).collect();
            let lengths: Vec<u32> = doc
                .iter()
                .map(|(t, _)| u32::try_from(t.len()).unwrap())
                .collect();
            builder.add_document(&flat, &lengths).unwrap();
        }
        builder.finalize().unwrap();
    } else {
        write_docs(prefix, case.dtype, case.is_multimodal, &case.docs);
    }
}

fn run_oracle(dir: &Path, jobs: &[Value]) -> Vec<Value> {
    let jobs_path = dir.join("jobs.json");
    std::fs::write(&jobs_path, serde_json::to_vec(jobs).unwrap()).unwrap();
    let output = Command::new(python())
        .arg(repo_root().join("tools/interop/megatron_core_oracle.py"))
        .arg(&jobs_path)
        .output()
        .expect("run the megatron-core oracle");
    assert!(
        output.status.success(),
        "oracle failed:\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let results: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(results.len(), jobs.len());
    for (job, result) in jobs.iter().zip(&results) {
        assert!(
            result.get("error").is_none(),
            "megatron-core failed on {job}: {result}"
        );
    }
    results
}

fn as_f64s(value: &Value) -> Vec<f64> {
    value
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect()
}

#[allow(clippy::cast_precision_loss)]
fn expected_view(case: &Case) -> Value {
    let sequences: Vec<Vec<f64>> = case
        .docs
        .iter()
        .flatten()
        .map(|(t, _)| t.iter().map(|&v| f64::from(v)).collect())
        .collect();
    let lengths: Vec<usize> = sequences.iter().map(Vec::len).collect();
    let mut pointers = Vec::new();
    let mut pointer = 0;
    for len in &lengths {
        pointers.push(pointer);
        pointer += len * case.dtype.size_bytes();
    }
    let mut document_indices = vec![0];
    for doc in &case.docs {
        document_indices.push(document_indices.last().unwrap() + doc.len());
    }
    let modes: Option<Vec<i8>> = case
        .is_multimodal
        .then(|| case.docs.iter().flatten().map(|(_, m)| *m).collect());
    json!({
        "dtype_code": case.dtype.code(),
        "sequence_lengths": lengths,
        "sequence_pointers": pointers,
        "document_indices": document_indices,
        "sequence_modes": modes,
        "sequences": sequences,
    })
}

fn assert_view(what: &str, got: &Value, expected: &Value) {
    for key in [
        "dtype_code",
        "sequence_lengths",
        "sequence_pointers",
        "document_indices",
        "sequence_modes",
    ] {
        assert_eq!(got[key], expected[key], "{what}: {key}");
    }
    let got_sequences: Vec<Vec<f64>> = got["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_f64s)
        .collect();
    let expected_sequences: Vec<Vec<f64>> = expected["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(as_f64s)
        .collect();
    assert_eq!(got_sequences, expected_sequences, "{what}: sequences");
}

#[test]
fn megatron_core_and_flame_read_and_write_the_same_bytes() {
    let dir = tempfile::tempdir().unwrap();
    let cases = cases();
    let mut jobs = Vec::new();
    for case in &cases {
        write_ours(&dir.path().join(format!("ours_{}", case.name)), case);
        let mc = dir.path().join(format!("mc_{}", case.name));
        jobs.push(json!({"op": "write", "prefix": mc, "dtype_code": case.dtype.code(), "multimodal": case.is_multimodal, "steps": megatron_steps(case)}));
        jobs.push(json!({"op": "read", "prefix": mc, "multimodal": case.is_multimodal}));
        jobs.push(json!({"op": "read", "prefix": dir.path().join(format!("ours_{}", case.name)), "multimodal": case.is_multimodal}));
    }
    // Megatron's add_index merge of three of our files, against our merge of the same files.
    let parts_u16: Vec<_> = ["uint16_0_0", "uint16_0_1", "notes_example"]
        .iter()
        .map(|n| dir.path().join(format!("ours_{n}")))
        .collect();
    let steps: Vec<Value> = parts_u16.iter().map(|p| json!(["append", p])).collect();
    jobs.push(json!({"op": "write", "prefix": dir.path().join("mc_merged"), "dtype_code": 8, "steps": steps}));

    let results = run_oracle(dir.path(), &jobs);
    for (k, case) in cases.iter().enumerate() {
        let ours = dir.path().join(format!("ours_{}", case.name));
        let mc = dir.path().join(format!("mc_{}", case.name));
        for ext in ["idx", "bin"] {
            let a = std::fs::read(format!("{}.{ext}", ours.display())).unwrap();
            let b = std::fs::read(format!("{}.{ext}", mc.display())).unwrap();
            assert!(
                a == b,
                "{}: .{ext} written by flame differs from megatron-core's",
                case.name
            );
        }
        let expected = expected_view(case);
        assert_view(
            &format!("{}: megatron-core reading its own file", case.name),
            &results[3 * k + 1],
            &expected,
        );
        assert_view(
            &format!("{}: megatron-core reading flame's file", case.name),
            &results[3 * k + 2],
            &expected,
        );
        let dataset = IndexedDataset::open(&mc).unwrap();
        dataset.validate().unwrap();
        assert_eq!(
            read_docs(&dataset),
            widen(&case.docs),
            "{}: flame reading megatron-core's file",
            case.name
        );
        if case.is_multimodal {
            let modes: Vec<i8> = (0..dataset.num_sequences())
                .map(|i| dataset.sequence_mode(i).unwrap().unwrap())
                .collect();
            assert_eq!(json!(modes), expected["sequence_modes"]);
        }
    }
    merge(dir.path().join("ours_merged"), &parts_u16).unwrap();
    for ext in ["idx", "bin"] {
        let a = std::fs::read(dir.path().join(format!("ours_merged.{ext}"))).unwrap();
        let b = std::fs::read(dir.path().join(format!("mc_merged.{ext}"))).unwrap();
        assert!(
            a == b,
            "merged .{ext} differs from megatron-core's add_index"
        );
    }
}
