//! Progress within a file: every reader says how much of its file it has consumed, so the bar and the
//! ETA move within a large file instead of jumping from file to file.

use std::io::Write;
use std::path::Path;

use flame_preprocess::source::{open_reader, resolve_inputs};

use crate::util::shared;

/// Reads `path` 64 records at a time; returns `bytes_read` after each batch and the file size.
fn bytes_read_per_batch(path: &Path) -> (Vec<u64>, u64) {
    let input = resolve_inputs(&path.to_string_lossy(), "train")
        .unwrap()
        .remove(0);
    let mut reader = open_reader(&input, 0, None).unwrap();
    let (mut seen, mut records) = (Vec::new(), Vec::new());
    loop {
        records.clear();
        let has_more = reader.read_batch(&mut records, 64, usize::MAX).unwrap();
        seen.push(reader.bytes_read());
        if !has_more {
            break;
        }
    }
    (seen, std::fs::metadata(path).unwrap().len())
}

fn assert_moves_within_the_file(path: &Path) {
    let (seen, size) = bytes_read_per_batch(path);
    let name = path.display();
    assert!(seen.len() > 4, "{name}: {} batches", seen.len());
    assert!(
        seen.windows(2).all(|w| w[0] <= w[1]),
        "{name}: {seen:?} never goes back"
    );
    let middle = seen[seen.len() / 2];
    assert!(
        middle > 0 && middle < size,
        "{name}: {middle} of {size} bytes halfway"
    );
    assert_eq!(
        *seen.last().unwrap(),
        size,
        "{name}: the whole file at the end"
    );
}

#[test]
fn parquet_and_jsonl_readers_report_bytes_read_within_the_file() {
    let parquet = shared().join("data/corpus/fineweb-edu-schema/data/train-00000-of-00002.parquet");
    assert_moves_within_the_file(&parquet);
    let dir = tempfile::tempdir().unwrap();
    let jsonl = dir.path().join("docs.jsonl");
    let gz = dir.path().join("docs.jsonl.gz");
    let mut plain = std::fs::File::create(&jsonl).unwrap();
    let mut compressed = flate2::write::GzEncoder::new(
        std::fs::File::create(&gz).unwrap(),
        flate2::Compression::fast(),
    );
    for i in 0..20_000u64 {
        let noise = format!("{:x} ", i.wrapping_mul(0x9E37_79B9_7F4A_7C15));
        let line = format!(
            "{{\"text\": \"document {i} {}\"}}\n",
            noise.repeat(i as usize % 30 + 1)
        );
        plain.write_all(line.as_bytes()).unwrap();
        compressed.write_all(line.as_bytes()).unwrap();
    }
    drop(plain);
    compressed.finish().unwrap();
    // Buffered reads run ahead of the records by up to a buffer (1 MiB): the file is several times that.
    assert!(std::fs::metadata(&jsonl).unwrap().len() > 4 << 20);
    assert_moves_within_the_file(&jsonl);
    assert_moves_within_the_file(&gz);
}
