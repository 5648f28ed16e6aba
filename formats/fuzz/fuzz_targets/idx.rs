//! Arbitrary bytes as an `.idx` (and the rest as its `.bin`): every call must return, never panic or
//! read out of bounds. Run: `cargo fuzz run -s none idx` from `formats/`.
#![no_main]

use flame_formats::IndexedDataset;
use flame_formats::megatron::AlignedBytes;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first two bytes say where the index ends; the remainder is the data file.
    let Some((split, rest)) = data.split_first_chunk::<2>() else {
        return;
    };
    let split = usize::from(u16::from_le_bytes(*split)).min(rest.len());
    let (idx, bin) = rest.split_at(split);
    let Ok(dataset) =
        IndexedDataset::from_bytes(AlignedBytes::new(idx), AlignedBytes::new(bin), "fuzz")
    else {
        return;
    };
    let is_valid = dataset.validate().is_ok();
    let mut num_tokens = 0u64;
    for i in 0..dataset.num_sequences().min(4096) {
        match dataset.sequence(i) {
            Ok(tokens) => num_tokens += tokens.len() as u64,
            Err(_) => assert!(!is_valid, "a validated dataset must read every sequence"),
        }
        let _ = dataset.sequence_mode(i);
    }
    for d in 0..dataset.num_documents().min(4096) {
        let sequences = dataset.document_sequences(d);
        assert!(
            sequences.is_ok() || !is_valid,
            "a validated dataset must read every document"
        );
        let _ = dataset.document(d);
    }
    if is_valid && dataset.num_sequences() <= 4096 {
        assert_eq!(num_tokens, dataset.num_tokens());
    }
});
