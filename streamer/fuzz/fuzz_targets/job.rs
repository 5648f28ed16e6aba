//! Arbitrary text as the job spec a client sends in `Hello`: parsing, validation, the split and the
//! memory estimate must return, never panic, for datasets of any size (no file is opened), and a spec
//! that parses must parse back from its own TOML as the same spec (what clients send).
//! Run: `cargo fuzz run -s none job -- -dict=fuzz/job.dict` from `streamer/` (the dictionary holds the
//! spec's keys, so the fuzzer reaches valid specs quickly).
#![no_main]

use flame_streamer::budget::state_bytes;
use flame_streamer::megatron::{split_matrix, split_range};
use flame_streamer::spec::JobSpec;
use libfuzzer_sys::fuzz_target;

const SIZES: [u64; 6] = [0, 1, 2, 1000, 1 << 40, u64::MAX];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(spec) = JobSpec::from_toml(text) else {
        return;
    };
    let again = JobSpec::from_toml(&spec.to_toml()).expect("a spec's own TOML parses");
    assert_eq!(again, spec);
    assert_eq!(again.fingerprint(), spec.fingerprint());
    let _ = spec.micro_batch_bytes();
    let matrix = split_matrix(spec.split.as_deref().unwrap_or("1"));
    for documents in SIZES {
        if let Ok(matrix) = &matrix {
            let _ = split_range(matrix[spec.split_index()], documents);
        }
        let sizes = vec![documents; spec.datasets.len()];
        for tokens in SIZES {
            let _ = state_bytes(&spec, &sizes, |_| tokens);
        }
    }
});
