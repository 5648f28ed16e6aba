//! Arbitrary bytes as the two datasets of a packed pair: opening and reading windows never panics.
//! Run: `cargo fuzz run -s none packed` from `formats/`.
#![no_main]

use flame_formats::megatron::AlignedBytes;
use flame_formats::{IndexedDataset, PackedDataset};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((header, rest)) = data.split_first_chunk::<6>() else {
        return;
    };
    let mut cuts = [0usize; 3];
    for (k, cut) in cuts.iter_mut().enumerate() {
        *cut = usize::from(u16::from_le_bytes([header[2 * k], header[2 * k + 1]]));
    }
    let mut parts = Vec::new();
    let mut rest = rest;
    for cut in cuts {
        let (part, tail) = rest.split_at(cut.min(rest.len()));
        parts.push(AlignedBytes::new(part));
        rest = tail;
    }
    parts.push(AlignedBytes::new(rest));
    let mut parts = parts.into_iter();
    let (Some(ti), Some(tb), Some(ci), Some(cb)) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return;
    };
    let (Ok(tokens), Ok(cu)) = (
        IndexedDataset::from_bytes(ti, tb, "t"),
        IndexedDataset::from_bytes(ci, cb, "c"),
    ) else {
        return;
    };
    let Ok(packed) = PackedDataset::new(tokens, cu) else {
        return;
    };
    let _ = packed.validate();
    for w in 0..packed.num_windows().min(1024) {
        if let Ok(window) = packed.window(w) {
            assert_eq!(window.tokens.len(), packed.seq_len() as usize);
            assert_eq!(window.cu_seqlens.first(), Some(&0));
        }
    }
});
