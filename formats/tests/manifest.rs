//! `manifest.json`: schema round trip, verification, and refusal of what it cannot vouch for.

use std::path::Path;

use flame_formats::manifest::{
    MANIFEST_VERSION, Manifest, Packing, ShardEntry, ShardFormat, SourceEntry, TokenizerIdentity,
    Totals,
};
use flame_formats::{Corpus, Error, TokenDtype};

use crate::util::write_docs;

fn build(dir: &Path) -> Manifest {
    let docs_a = vec![vec![(vec![1, 2, 3], 0)], vec![(vec![4], 0)]];
    let docs_b = vec![vec![(vec![5, 6], 0)]];
    let a = write_docs(&dir.join("shard_00000"), TokenDtype::Uint16, false, &docs_a);
    let b = write_docs(&dir.join("shard_00001"), TokenDtype::Uint16, false, &docs_b);
    let shards = vec![
        ShardEntry::from_summary(dir, &a),
        ShardEntry::from_summary(dir, &b),
    ];
    Manifest {
        version: MANIFEST_VERSION,
        format: ShardFormat::Megatron,
        dtype: TokenDtype::Uint16,
        packing: None,
        tokenizer: TokenizerIdentity {
            name: Some("gpt2".into()),
            sha256: "ab".repeat(32),
            vocab_size: 50257,
            bos_id: None,
            eos_id: Some(50256),
        },
        totals: Totals {
            documents: 3,
            empty_documents: 0,
            sequences: 3,
            tokens: 6,
        },
        shards,
        sources: vec![SourceEntry {
            uri: "corpus.jsonl".into(),
            bytes: Some(10),
            sha256: None,
        }],
        parameters: serde_json::Map::new(),
        created_by: "flame-formats tests".into(),
    }
}

#[test]
fn manifests_round_trip_and_verify() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = build(dir.path());
    assert_eq!(manifest.shards[1].prefix, "shard_00001");
    let path = manifest.write(dir.path()).unwrap();
    assert!(!dir.path().join("manifest.json.tmp").exists());
    assert_eq!(Manifest::load(&path).unwrap(), manifest);
    let report = manifest.verify(dir.path()).unwrap();
    assert_eq!((report.num_shards, report.num_files), (2, 4));
    let corpus = Corpus::open(dir.path()).unwrap();
    assert_eq!((corpus.num_sequences(), corpus.num_tokens()), (3, 6));
    assert_eq!(corpus.sequence(2).unwrap().to_i64_vec(), [5, 6]);
    corpus.verify().unwrap();
}

#[test]
fn a_changed_byte_fails_verification_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = build(dir.path());
    manifest.write(dir.path()).unwrap();
    let bin = dir.path().join("shard_00001.bin");
    let mut bytes = std::fs::read(&bin).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&bin, bytes).unwrap();
    let err = Corpus::open(dir.path()).unwrap().verify().unwrap_err();
    assert!(
        matches!(err, Error::ManifestMismatch { ref what, .. } if what == "sha256"),
        "{err}"
    );
    assert!(err.to_string().contains("shard_00001.bin"), "{err}");
    std::fs::write(&bin, [0u8]).unwrap();
    let err = manifest.verify(dir.path()).unwrap_err();
    assert!(
        err.to_string()
            .contains("size is 1, the manifest records 4"),
        "{err}"
    );
}

#[test]
fn bad_manifests_are_refused_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let manifest = build(dir.path());
    let path = manifest.write(dir.path()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();

    std::fs::write(&path, text.replace("\"version\": 1", "\"version\": 2")).unwrap();
    assert!(matches!(
        Manifest::load(&path),
        Err(Error::UnsupportedManifestVersion {
            found: 2,
            supported: 1,
            ..
        })
    ));

    std::fs::write(
        &path,
        text.replacen("\"dtype\"", "\"colour\": 1, \"dtype\"", 1),
    )
    .unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert!(
        matches!(err, Error::ManifestSyntax { line: 4, .. }),
        "{err}"
    );

    std::fs::write(&path, &text[..text.len() / 2]).unwrap();
    assert!(matches!(
        Manifest::load(&path),
        Err(Error::ManifestSyntax { .. })
    ));

    std::fs::write(&path, text.replace("\"shard_00001\"", "\"../elsewhere\"")).unwrap();
    assert!(matches!(
        Manifest::load(&path),
        Err(Error::InvalidManifest { .. })
    ));

    std::fs::write(&path, text.replace("\"tokens\": 6", "\"tokens\": 7")).unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("totals.tokens is 7, the shards sum to 6"),
        "{err}"
    );
}

/// Issue 16: `totals.empty_documents` came later; a manifest without it still loads, counting none.
#[test]
fn empty_documents_default_to_zero_and_never_exceed_the_documents() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = build(dir.path());
    manifest.totals.empty_documents = 2;
    let path = manifest.write(dir.path()).unwrap();
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.contains("\"empty_documents\": 2"), "{text}");
    assert_eq!(Manifest::load(&path).unwrap().totals.empty_documents, 2);

    let older = text.replace("\"empty_documents\": 2,", "");
    assert_ne!(older, text);
    std::fs::write(&path, older).unwrap();
    assert_eq!(Manifest::load(&path).unwrap().totals.empty_documents, 0);

    std::fs::write(
        &path,
        text.replace("\"empty_documents\": 2", "\"empty_documents\": 4"),
    )
    .unwrap();
    let err = Manifest::load(&path).unwrap_err();
    assert!(
        err.to_string()
            .contains("totals.empty_documents is 4, more than totals.documents (3)"),
        "{err}"
    );

    // Without empty texts the field is left out, so readers from before it read the manifest.
    manifest.totals.empty_documents = 0;
    let path = manifest.write(dir.path()).unwrap();
    assert!(
        !std::fs::read_to_string(&path)
            .unwrap()
            .contains("empty_documents")
    );
}

#[test]
fn packing_must_match_the_format() {
    let dir = tempfile::tempdir().unwrap();
    let mut manifest = build(dir.path());
    manifest.packing = Some(Packing {
        seq_len: 4,
        tail: flame_formats::TailPolicy::Drop,
        dropped_tokens: 0,
        pad_tokens: 0,
    });
    assert!(matches!(
        manifest.write(dir.path()),
        Err(Error::InvalidManifest { .. })
    ));
    assert!(!dir.path().join("manifest.json").exists());
}

#[test]
fn a_megatron_prefix_beside_its_cache_directory_opens_as_the_prefix() {
    // Megatron keeps its index cache in PREFIX/cache/GPTDataset_indices/ by default.
    let dir = tempfile::tempdir().unwrap();
    let prefix = dir.path().join("corpus_text_document");
    write_docs(
        &prefix,
        TokenDtype::Uint16,
        false,
        &[vec![(vec![7, 8, 9], 0)]],
    );
    std::fs::create_dir_all(prefix.join("cache/GPTDataset_indices")).unwrap();
    let corpus = Corpus::open(&prefix).unwrap();
    assert_eq!(corpus.sequence(0).unwrap().to_i64_vec(), [7, 8, 9]);
}
