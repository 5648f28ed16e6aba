//! The tokenization pipeline: one reader thread ([`Reader`], which may be started before the encoder
//! is loaded), `workers` tokenizer threads, and the caller's thread writing documents in input order.
//!
//! ```text
//! reader ──Batch(seq)──► [bounded] ──► worker × N ──Encoded(seq)──► [bounded] ──► reorder ──► sink
//! ```
//!
//! Batches are cut by the reader alone (a record count and a byte budget), so what the sink sees, and
//! therefore every output byte, is independent of the number of workers. Memory is bounded by the
//! channel capacities: at most 64 batches (16 MiB of text) wait for the workers and `2·workers` batches
//! for the writer, plus one per worker in flight.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crossbeam_channel::{Receiver, Sender, bounded};
use serde::{Deserialize, Serialize};

use crate::source::{BadRecord, InputFile, Origin, Record, open_reader};
use crate::tokenize::TextEncoder;

/// Records per batch and text bytes per batch: small enough to keep memory low and every worker busy.
const BATCH_RECORDS: usize = 256;
const BATCH_BYTES: usize = 256 << 10;

/// Text the reader may decode ahead of the workers. A reader that stalls the workers whenever it
/// decodes something large (a row group's dictionary page, a compressed block) costs the whole
/// pipeline; 16 MiB ahead covers a row group of 1000 web documents (on the GPT-2 benchmark: 11% faster
/// end to end than 1 MiB ahead).
const READ_AHEAD_BYTES: usize = 16 << 20;

/// What the workers' piece caches take together (a 2-worker run: 64 MiB each).
const CACHE_BYTES: usize = 128 << 20;

/// A record's place in the input: the file and how many records of that file come before it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Position {
    /// Index into the input files.
    pub file_index: usize,
    /// Records (documents and bad records) of that file before this one.
    pub record: u64,
}

/// What the sink receives for each input record, in input order.
#[derive(Debug)]
pub enum Item {
    /// A tokenized document.
    Document {
        /// Its token ids.
        tokens: Vec<u32>,
        /// Bytes of UTF-8 text it came from (0: an empty text, a document all the same).
        num_text_bytes: usize,
        /// Where it came from.
        origin: Origin,
    },
    /// A record that could not be read (malformed, not UTF-8, a null or missing text).
    Bad(BadRecord),
}

struct Batch {
    seq: u64,
    start: Position,
    records: Vec<Record>,
    file_bytes_read: u64,
}

struct Encoded {
    seq: u64,
    start: Position,
    items: Vec<Item>,
    file_bytes_read: u64,
}

/// The reader thread: decodes `inputs` from a position on into batches, ahead of the workers.
///
/// It is a thread of its own, so it can start before the encoder is loaded (`flame-prep` starts it
/// first when there is nothing to resume) and have the first batches decoded by the time the workers
/// start. Dropping it stops the thread.
#[derive(Debug)]
pub struct Reader {
    start: Position,
    batches: Receiver<anyhow::Result<Batch>>,
    stop: Arc<AtomicBool>,
}

impl Reader {
    /// Starts reading `inputs` at `start`.
    pub fn spawn(inputs: Vec<InputFile>, text_key: Option<String>, start: Position) -> Self {
        let (tx, batches) = bounded(READ_AHEAD_BYTES / BATCH_BYTES);
        let stop = Arc::new(AtomicBool::new(false));
        let reader_stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            if let Err(e) = read_all(&inputs, text_key.as_deref(), start, &tx, &reader_stop) {
                let _ = tx.send(Err(e));
            }
        });
        Self {
            start,
            batches,
            stop,
        }
    }

    /// Where it started.
    pub fn start(&self) -> Position {
        self.start
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Tokenizes what `reader` reads with `workers` threads and calls `sink` for every record in input
/// order, with its position and the bytes of its file read by then (for progress).
///
/// `sink` returning an error stops the pipeline; so does a whole-file failure in the reader.
pub fn run(
    reader: &Reader,
    encoder: &Arc<TextEncoder>,
    workers: usize,
    mut sink: impl FnMut(Position, Item, u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let workers = workers.max(1);
    crate::bpe::size_caches(CACHE_BYTES, workers);
    let (encoded_tx, encoded_rx) = bounded::<anyhow::Result<Encoded>>(2 * workers);
    std::thread::scope(|scope| {
        for _ in 0..workers {
            let (rx, tx, encoder) = (
                reader.batches.clone(),
                encoded_tx.clone(),
                Arc::clone(encoder),
            );
            scope.spawn(move || encode_all(&rx, &tx, &encoder));
        }
        drop(encoded_tx);
        let result = write_in_order(&encoded_rx, &mut sink);
        if result.is_err() {
            reader.stop.store(true, Ordering::Relaxed);
            // Drain so that blocked workers wake up and end.
            for _ in &encoded_rx {}
        }
        result
    })
}

fn read_all(
    inputs: &[InputFile],
    text_key: Option<&str>,
    start: Position,
    tx: &Sender<anyhow::Result<Batch>>,
    stop: &AtomicBool,
) -> anyhow::Result<()> {
    let mut seq = 0;
    for (file_index, input) in inputs.iter().enumerate().skip(start.file_index) {
        let mut reader = open_reader(input, file_index, text_key)?;
        let mut record = 0u64;
        if file_index == start.file_index {
            // Resuming: read past what an earlier run already wrote, without tokenizing it.
            let mut skipped = Vec::new();
            while record < start.record {
                skipped.clear();
                let want = usize::try_from(start.record - record)
                    .unwrap_or(usize::MAX)
                    .min(BATCH_RECORDS);
                let has_more = reader.read_batch(&mut skipped, want, usize::MAX)?;
                record += skipped.len() as u64;
                anyhow::ensure!(
                    has_more || record >= start.record,
                    "{}: has only {record} records, but an earlier run had read {}",
                    input.path.display(),
                    start.record
                );
            }
        }
        loop {
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let mut records = Vec::with_capacity(BATCH_RECORDS);
            let has_more = reader.read_batch(&mut records, BATCH_RECORDS, BATCH_BYTES)?;
            if !records.is_empty() {
                let num_records = records.len() as u64;
                if tx
                    .send(Ok(Batch {
                        seq,
                        start: Position { file_index, record },
                        records,
                        file_bytes_read: reader.bytes_read(),
                    }))
                    .is_err()
                {
                    return Ok(());
                }
                seq += 1;
                record += num_records;
            }
            if !has_more {
                break;
            }
        }
    }
    Ok(())
}

fn encode_all(
    rx: &Receiver<anyhow::Result<Batch>>,
    tx: &Sender<anyhow::Result<Encoded>>,
    encoder: &TextEncoder,
) {
    for batch in rx {
        let batch = match batch {
            Ok(batch) => batch,
            Err(e) => {
                let _ = tx.send(Err(e));
                return;
            }
        };
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
                start: batch.start,
                items,
                file_bytes_read: batch.file_bytes_read,
            }))
            .is_err()
        {
            return;
        }
    }
}

fn write_in_order(
    rx: &Receiver<anyhow::Result<Encoded>>,
    sink: &mut impl FnMut(Position, Item, u64) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let mut waiting = BTreeMap::new();
    let mut next = 0u64;
    for encoded in rx {
        let encoded = encoded?;
        waiting.insert(encoded.seq, encoded);
        while let Some(ready) = waiting.remove(&next) {
            for (i, item) in ready.items.into_iter().enumerate() {
                sink(
                    Position {
                        file_index: ready.start.file_index,
                        record: ready.start.record + i as u64,
                    },
                    item,
                    ready.file_bytes_read,
                )?;
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
