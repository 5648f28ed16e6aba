//! The tokenization pipeline: one reader thread, `workers` tokenizer threads, and the caller's thread
//! writing documents in input order.
//!
//! ```text
//! reader ──Batch(seq)──► [bounded] ──► worker × N ──Encoded(seq)──► [bounded] ──► reorder ──► sink
//! ```
//!
//! Batches are cut by the reader alone (a record count and a byte budget), so what the sink sees, and
//! therefore every output byte, is independent of the number of workers. Memory is bounded by the
//! channel capacities: at most `2·workers` batches wait on each side, plus one per worker in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::source::{BadRecord, InputFile, Origin, Record, open_reader};
use crate::tokenize::TextEncoder;

/// Records per batch and text bytes per batch: small enough to keep memory low, large enough to amortise.
const BATCH_RECORDS: usize = 256;
const BATCH_BYTES: usize = 256 << 10;

/// What the sink receives for each input record, in input order.
#[derive(Debug)]
pub enum Item {
    /// A tokenized document.
    Document {
        /// Its token ids.
        tokens: Vec<u32>,
        /// Bytes of UTF-8 text it came from.
        num_text_bytes: usize,
        /// Where it came from.
        origin: Origin,
    },
    /// A record that could not be read or is empty.
    Bad(BadRecord),
}

struct Batch {
    seq: u64,
    file_index: usize,
    records: Vec<Record>,
}

struct Encoded {
    seq: u64,
    file_index: usize,
    items: Vec<Item>,
}

/// Reads `inputs`, tokenizes with `workers` threads and calls `sink` for every record in input order.
///
/// `sink` returning an error stops the pipeline; so does a whole-file failure in the reader.
pub fn run(
    inputs: &[InputFile],
    text_key: Option<&str>,
    encoder: &Arc<TextEncoder>,
    workers: usize,
    mut sink: impl FnMut(usize, Item) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let workers = workers.max(1);
    let (batch_tx, batch_rx) = bounded::<Batch>(2 * workers);
    let (encoded_tx, encoded_rx) = bounded::<anyhow::Result<Encoded>>(2 * workers);
    let stop = Arc::new(AtomicBool::new(false));
    std::thread::scope(|scope| {
        let reader_errors = encoded_tx.clone();
        let reader_stop = Arc::clone(&stop);
        scope.spawn(move || {
            if let Err(e) = read_all(inputs, text_key, &batch_tx, &reader_stop) {
                let _ = reader_errors.send(Err(e));
            }
        });
        for _ in 0..workers {
            let (rx, tx, encoder) = (batch_rx.clone(), encoded_tx.clone(), Arc::clone(encoder));
            scope.spawn(move || encode_all(&rx, &tx, &encoder));
        }
        drop((batch_rx, encoded_tx));
        let result = write_in_order(&encoded_rx, &mut sink);
        if result.is_err() {
            stop.store(true, Ordering::Relaxed);
            // Drain so that blocked senders wake up and every thread ends.
            for _ in &encoded_rx {}
        }
        result
    })
}

fn read_all(
    inputs: &[InputFile],
    text_key: Option<&str>,
    tx: &Sender<Batch>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut seq = 0;
    for (file_index, input) in inputs.iter().enumerate() {
        let mut reader = open_reader(input, file_index, text_key)?;
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut records = Vec::with_capacity(BATCH_RECORDS);
            let has_more = reader.read_batch(&mut records, BATCH_RECORDS, BATCH_BYTES)?;
            if !records.is_empty() {
                if tx
                    .send(Batch {
                        seq,
                        file_index,
                        records,
                    })
                    .is_err()
                {
                    return Ok(());
                }
                seq += 1;
            }
            if !has_more {
                break;
            }
        }
    }
    Ok(())
}

fn encode_all(rx: &Receiver<Batch>, tx: &Sender<anyhow::Result<Encoded>>, encoder: &TextEncoder) {
    for batch in rx {
        let mut items = Vec::with_capacity(batch.records.len());
        for record in batch.records {
            items.push(match record {
                Err(bad) => Item::Bad(bad),
                Ok(doc) => {
                    let mut tokens = Vec::new();
                    if let Err(e) = encoder.encode(&doc.text, &mut tokens) {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    Item::Document {
                        tokens,
                        num_text_bytes: doc.text.len(),
                        origin: doc.origin,
                    }
                }
            });
        }
        if tx
            .send(Ok(Encoded {
                seq: batch.seq,
                file_index: batch.file_index,
                items,
            }))
            .is_err()
        {
            return;
        }
    }
}

fn write_in_order(
    rx: &Receiver<anyhow::Result<Encoded>>,
    sink: &mut impl FnMut(usize, Item) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut waiting = BTreeMap::new();
    let mut next = 0u64;
    for encoded in rx {
        let encoded = encoded?;
        waiting.insert(encoded.seq, encoded);
        while let Some(ready) = waiting.remove(&next) {
            for item in ready.items {
                sink(ready.file_index, item)?;
            }
            next += 1;
        }
    }
    anyhow::ensure!(
        waiting.is_empty(),
        "internal error: batches {:?} never became writable",
        waiting.keys().collect::<Vec<_>>()
    );
    Ok(())
}
