//! Corrupt inputs through the CLI: a clear error naming the file and the byte, exit status 1, no panic.

use crate::util::{copy_fixture, flame_prep};

fn corrupt(edit: impl FnOnce(&mut Vec<u8>), file: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let (dir, root) = copy_fixture("golden-mistral");
    let path = root.join(file);
    let mut bytes = std::fs::read(&path).unwrap();
    edit(&mut bytes);
    std::fs::write(&path, bytes).unwrap();
    (dir, root.join("shard_00000"))
}

fn assert_fails(prefix: &std::path::Path, needles: &[&str]) {
    for command in ["inspect", "verify"] {
        let run = flame_prep(&[command, prefix.to_str().unwrap()]);
        assert_eq!(run.code, 1, "{command}: {}", run.stderr);
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        for needle in needles {
            assert!(
                run.stderr.contains(needle),
                "{command}: expected {needle:?} in {}",
                run.stderr
            );
        }
    }
}

#[test]
fn wrong_magic() {
    let (_d, prefix) = corrupt(|b| b[0] = b'N', "shard_00000.idx");
    assert_fails(&prefix, &["shard_00000.idx", "bad magic at byte 0"]);
}

#[test]
fn unknown_version() {
    let (_d, prefix) = corrupt(|b| b[9] = 3, "shard_00000.idx");
    assert_fails(
        &prefix,
        &["shard_00000.idx", "unsupported index version 3 at byte 9"],
    );
}

#[test]
fn unknown_dtype_code() {
    let (_d, prefix) = corrupt(|b| b[17] = 42, "shard_00000.idx");
    assert_fails(
        &prefix,
        &["shard_00000.idx", "unknown dtype code 42 at byte 17"],
    );
}

#[test]
fn counts_that_disagree_with_the_file_size() {
    let (_d, prefix) = corrupt(|b| b[18] = 53, "shard_00000.idx");
    assert_fails(&prefix, &["shard_00000.idx", "53 sequences", "imply"]);
}

#[test]
fn truncated_index() {
    let (_d, prefix) = corrupt(|b| b.truncate(100), "shard_00000.idx");
    assert_fails(&prefix, &["shard_00000.idx", "the file has 100"]);
}

#[test]
fn truncated_data_file() {
    let (_d, prefix) = corrupt(|b| b.truncate(1000), "shard_00000.bin");
    assert_fails(&prefix, &["shard_00000.bin", "data file has 1000"]);
}

#[test]
fn pointer_past_the_end_of_the_data_file() {
    // Sequence 3's pointer lives at byte 34 + 4·52 + 8·3 = 266.
    let (_d, prefix) = corrupt(
        |b| b[266..274].copy_from_slice(&(1u64 << 40).to_le_bytes()),
        "shard_00000.idx",
    );
    let run = flame_prep(&[
        "inspect",
        prefix.to_str().unwrap(),
        "--dump",
        "--range",
        "3..4",
    ]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("shard_00000.bin: sequence 3 spans bytes"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("pointer at byte 266 of the index"),
        "{}",
        run.stderr
    );
    let run = flame_prep(&["verify", prefix.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("shard_00000.idx: byte 266"),
        "{}",
        run.stderr
    );
}

#[test]
fn missing_data_file() {
    let (dir, prefix) = copy_fixture("golden-mistral");
    std::fs::remove_file(prefix.join("shard_00000.bin")).unwrap();
    assert_fails(
        &prefix.join("shard_00000"),
        &["shard_00000.bin: data file is missing"],
    );
    drop(dir);
}

#[test]
fn not_a_dataset() {
    let dir = tempfile::tempdir().unwrap();
    let run = flame_prep(&["inspect", dir.path().join("nothing").to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not a dataset"), "{}", run.stderr);
    let run = flame_prep(&["verify", dir.path().to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(run.stderr.contains("not a dataset"), "{}", run.stderr);
}
