//! Arbitrary bytes as protocol frames, under the server's and the client's limits: `decode` must return,
//! never panic, and whatever it decodes must encode back to the same frame.
//! Run: `cargo fuzz run -s none frame` from `streamer/`.
#![no_main]

use flame_streamer::protocol::{Limits, decode, encode};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for limits in [Limits::CLIENT_FRAMES, Limits::SERVER_FRAMES] {
        let mut at = 0;
        while let Ok(Some((message, used))) = decode(&data[at..], limits) {
            let mut again = Vec::new();
            encode(&message, &mut again);
            assert_eq!(again.as_slice(), &data[at..at + used], "{message:?}");
            at += used;
        }
    }
});
