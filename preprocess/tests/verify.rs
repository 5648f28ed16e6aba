//! `flame-prep verify`: exit 0 only if everything checks out.

use crate::util::{copy_fixture, fixture, flame_prep};

#[test]
fn bundled_fixtures_verify() {
    for name in [
        "golden-mistral",
        "golden-mistral-packed",
        "golden-mistral/shard_00000",
    ] {
        let run = flame_prep(&["verify", fixture(name).to_str().unwrap()]);
        assert_eq!(run.code, 0, "{name}: {}", run.stderr);
        assert!(run.stdout.starts_with("OK "), "{}", run.stdout);
    }
    let run = flame_prep(&[
        "verify",
        fixture("golden-mistral").to_str().unwrap(),
        "--json",
    ]);
    let json: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        (json["ok"].as_bool(), json["files_hashed"].as_u64()),
        (Some(true), Some(2))
    );
}

#[test]
fn a_flipped_bit_fails_verification() {
    let (_dir, root) = copy_fixture("golden-mistral-packed");
    let bin = root.join("shard_00000_cu_seqlens.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes[100] ^= 0x10;
    std::fs::write(&bin, bytes).unwrap();
    let run = flame_prep(&["verify", root.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("shard_00000_cu_seqlens.bin: sha256 is"),
        "{}",
        run.stderr
    );
}

#[test]
fn a_missing_shard_fails_verification() {
    let (_dir, root) = copy_fixture("golden-mistral");
    std::fs::remove_file(root.join("shard_00000.bin")).unwrap();
    let run = flame_prep(&["verify", root.to_str().unwrap()]);
    assert_eq!(run.code, 1);
    assert!(
        run.stderr.contains("shard_00000.bin: data file is missing"),
        "{}",
        run.stderr
    );
}
