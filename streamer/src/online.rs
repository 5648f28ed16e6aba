//! A raw-text dataset streamed with tokenization online (a job's `streaming = true` entry): its windows
//! in a seeded order, produced one after another, with a [`Cursor`] at every window from which a fresh
//! producer (another server, another machine) continues exactly.
//!
//! **Order.** Epoch `e` visits the dataset's files in a keyed permutation; inside a file, records in
//! blocks of [`DOCS_PER_BLOCK`] consecutive records, the blocks in file order (a file may be a stream of
//! unknown length), the records of a block in another keyed permutation: the shuffle buffer is one block,
//! which [`Producer`] tokenizes whole. The epoch's documents, concatenated in that order, are cut into
//! windows of exactly `seq_len` tokens; the epoch's last partial window is dropped, as in
//! [`crate::epoch`], and the next epoch starts a new window. Windows are numbered across epochs.
//!
//! **Resume.** A [`Cursor`] says where window `w` starts: the epoch, the file's place in the epoch's
//! order, the block, the document's place in the block's order, and how many of its tokens earlier
//! windows hold. Continuing from it reads that one block again (skipping the file's earlier records) and
//! re-tokenizes it: the cost is bounded by one file's records before the block, never the stream's
//! start. A cursor is a pure function of the files, the encoder, `seq_len`, the seed and `w`.

use std::collections::{BTreeMap, VecDeque};
use std::ops::Range;
use std::sync::{Arc, Mutex};

use flame_formats::permutation::{Permutation, derive_key};
use rayon::iter::{IntoParallelIterator, ParallelIterator};
use serde::{Deserialize, Serialize};

use crate::cursor_log::CursorLog;
use crate::epoch::{DOCS_PER_BLOCK, Piece};

/// A record that could not be read, or a file that could not be opened: the file and the position.
#[derive(Debug, thiserror::Error)]
#[error("{path}: {position}: {reason}")]
pub struct SourceError {
    /// The file, as the dataset names it.
    pub path: String,
    /// `row 12`, `line 3`, `file` ...
    pub position: String,
    /// What is wrong.
    pub reason: String,
}

/// Reads one file's records in order.
pub trait RecordReader: Send {
    /// Appends up to `max` texts to `out`; returns `false` once the file has no more.
    ///
    /// # Errors
    /// A record or the file that cannot be read, with where.
    fn read(&mut self, out: &mut Vec<String>, max: usize) -> Result<bool, SourceError>;
}

/// The files of a raw dataset, in a fixed list.
pub trait RawFiles: Send + Sync {
    /// Number of files.
    fn num_files(&self) -> usize;
    /// A reader of file `file` positioned at record `start` (0-based).
    ///
    /// # Errors
    /// The file cannot be opened, or has fewer than `start` records.
    fn open(&self, file: usize, start: u64) -> Result<Box<dyn RecordReader>, SourceError>;
    /// Says that file `file` is read next, so that a remote one can be fetched meanwhile; by default,
    /// nothing.
    fn prefetch(&self, file: usize) {
        let _ = file;
    }
}

/// Turns a document's text into its ids (flame-prep's encoder in the server).
pub trait Encode: Send + Sync {
    /// Sets `out` to the ids of `text` (replacing what it held).
    ///
    /// # Errors
    /// The tokenizer fails on this text.
    fn encode(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()>;
}

/// Where a window starts in the stream: what a trainer's checkpoint keeps for a streaming dataset.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Cursor {
    /// The window that starts here (windows are numbered from 0 across epochs).
    pub window: u64,
    /// The epoch.
    pub epoch: u64,
    /// The file's place in the epoch's file order.
    pub file: u64,
    /// The block of that file (its records `block × DOCS_PER_BLOCK ..`).
    pub block: u64,
    /// The document's place in the block's order.
    pub document: u64,
    /// Tokens of that document that earlier windows hold.
    pub offset: u64,
}

/// One window: `seq_len` tokens and the pieces of documents they come from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Window {
    /// Its number in the stream.
    pub index: u64,
    /// The tokens.
    pub tokens: Vec<u32>,
    /// The documents' pieces, in order; a document is `file << 40 | record`.
    pub pieces: Vec<Piece>,
}

/// Why the stream cannot go on.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// A source file or record.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The encoder failed on a document.
    #[error("{path}: record {record}: tokenizing: {reason}")]
    Encode {
        /// The file.
        path: String,
        /// The record in it (0-based).
        record: u64,
        /// What the encoder said.
        reason: String,
    },
    /// A window behind every cursor this server holds (a fresh server, or a client far behind the others),
    /// or too far ahead of them to produce in order.
    #[error(
        "window {window} is not within {AHEAD_MAX} windows after any cursor this server holds (its earliest: {earliest:?}); a trainer resuming from a checkpoint gives the server the checkpoint's cursor"
    )]
    NoCursor {
        /// The window asked for.
        window: u64,
        /// The earliest window the server can produce from.
        earliest: Option<u64>,
    },
    /// A cursor that does not point into the stream (given by a client, not made by a producer).
    #[error("cursor {cursor:?} does not point into this dataset: {reason}")]
    BadCursor {
        /// The cursor.
        cursor: Cursor,
        /// Why.
        reason: String,
    },
    /// An epoch holds less than one window: the stream would never produce one.
    #[error("one pass over the dataset holds {tokens} tokens, fewer than one window of {seq_len}")]
    TooSmall {
        /// Tokens in the pass.
        tokens: u64,
        /// The window size.
        seq_len: u64,
    },
}

/// Records per file position in a document id ([`Window::pieces`]).
const RECORD_BITS: u32 = 40;

/// The block being served: its documents' ids in the block's order.
struct Block {
    /// Ids of each document, in the block's order.
    documents: Vec<Vec<u32>>,
    /// The document id (`file << 40 | record`) of each.
    names: Vec<u64>,
    /// Whether the file has records after this block.
    is_last: bool,
}

/// A raw dataset: its files, the encoder, and the files' names for errors.
pub struct RawSource {
    /// The files.
    pub files: Box<dyn RawFiles>,
    /// The job's encoder.
    pub encoder: Box<dyn Encode>,
    /// The name of each file, as errors give it.
    pub names: Vec<String>,
    /// Where the stream's cursors are kept across server restarts ([`crate::cursor_log`]), if anywhere.
    pub cursor_log: Option<std::path::PathBuf>,
}

impl std::fmt::Debug for RawSource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawSource")
            .field("files", &self.names.len())
            .finish_non_exhaustive()
    }
}

impl RawSource {
    fn name(&self, file: usize) -> String {
        self.names
            .get(file)
            .cloned()
            .unwrap_or_else(|| format!("file {file}"))
    }
}

/// Produces a raw dataset's windows from a [`Cursor`] on.
pub struct Producer {
    source: Arc<RawSource>,
    seq_len: u64,
    seed: u64,
    cursor: Cursor,
    /// The block the cursor is in, once read.
    block: Option<Block>,
    /// The reader of the cursor's file, positioned after `block`.
    reader: Option<Box<dyn RecordReader>>,
}

impl std::fmt::Debug for Producer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Producer")
            .field("seq_len", &self.seq_len)
            .field("cursor", &self.cursor)
            .finish_non_exhaustive()
    }
}

impl Producer {
    /// A producer of `source`'s windows of `seq_len` tokens in `seed`'s order, at `cursor` (the default
    /// cursor is the stream's start).
    pub fn new(source: Arc<RawSource>, (seq_len, seed): (u32, u64), cursor: Cursor) -> Self {
        Self {
            source,
            seq_len: u64::from(seq_len),
            seed,
            cursor,
            block: None,
            reader: None,
        }
    }

    /// Where the next window starts.
    pub fn cursor(&self) -> Cursor {
        self.cursor
    }

    fn key(&self, parts: &[u64]) -> u64 {
        derive_key(self.seed, parts)
    }

    /// The file at place `place` of `epoch`'s order.
    fn file_at(&self, epoch: u64, place: u64) -> usize {
        let order = Permutation::new(self.source.files.num_files() as u64, self.key(&[1, epoch]));
        usize::try_from(order.apply(place)).expect("a file index")
    }

    /// Reads and tokenizes the cursor's block (opening its file when the reader is not there).
    fn load_block(&mut self) -> Result<(), StreamError> {
        let bad = |reason: String| StreamError::BadCursor {
            cursor: self.cursor,
            reason,
        };
        let num_files = self.source.files.num_files() as u64;
        if self.cursor.file >= num_files {
            return Err(bad(format!("the dataset has {num_files} files")));
        }
        if self.cursor.document > DOCS_PER_BLOCK {
            return Err(bad(format!("a block has {DOCS_PER_BLOCK} documents")));
        }
        if self.cursor.block.checked_mul(DOCS_PER_BLOCK).is_none() {
            return Err(bad("the block lies past any file".into()));
        }
        let file = self.file_at(self.cursor.epoch, self.cursor.file);
        let start = self.cursor.block * DOCS_PER_BLOCK;
        if self.reader.is_none() {
            self.reader = Some(self.source.files.open(file, start)?);
            // The file read after this one (in the next epoch, after the last) is fetched meanwhile.
            let next = if self.cursor.file + 1 < num_files {
                self.file_at(self.cursor.epoch, self.cursor.file + 1)
            } else {
                self.file_at(self.cursor.epoch + 1, 0)
            };
            self.source.files.prefetch(next);
        }
        let reader = self.reader.as_mut().expect("opened above");
        let mut texts = Vec::with_capacity(usize::try_from(DOCS_PER_BLOCK).expect("small"));
        let mut has_more = true;
        while has_more && (texts.len() as u64) < DOCS_PER_BLOCK {
            let want = usize::try_from(DOCS_PER_BLOCK).expect("small") - texts.len();
            has_more = reader.read(&mut texts, want)?;
        }
        let order = Permutation::new(
            texts.len() as u64,
            self.key(&[2, self.cursor.epoch, file as u64, self.cursor.block]),
        );
        // The block's documents are encoded on every core (the process's worker pool, whose threads keep
        // their encoder caches warm from block to block); the first failure in the block's order is the one
        // reported, whichever thread met it.
        let encoded: Vec<anyhow::Result<Vec<u32>>> = (0..order.len())
            .into_par_iter()
            .map(|place| {
                let text = &texts[usize::try_from(order.apply(place)).expect("in the block")];
                let mut ids = Vec::new();
                self.source.encoder.encode(text, &mut ids).map(|()| ids)
            })
            .collect();
        let mut documents = Vec::with_capacity(texts.len());
        let mut names = Vec::with_capacity(texts.len());
        for (place, ids) in (0..).zip(encoded) {
            let record = start + order.apply(place);
            documents.push(ids.map_err(|e| StreamError::Encode {
                path: self.source.name(file),
                record,
                reason: format!("{e:#}"),
            })?);
            names.push((file as u64) << RECORD_BITS | record);
        }
        self.block = Some(Block {
            documents,
            names,
            is_last: !has_more,
        });
        Ok(())
    }

    /// Moves the cursor past the current block: the next block, the next file, or the next epoch.
    /// Returns whether an epoch ended.
    fn next_block(&mut self) -> bool {
        let is_last = self.block.take().is_none_or(|b| b.is_last);
        self.cursor.document = 0;
        self.cursor.offset = 0;
        if !is_last {
            self.cursor.block += 1;
            return false;
        }
        self.reader = None;
        self.cursor.block = 0;
        self.cursor.file += 1;
        if self.cursor.file < self.source.files.num_files() as u64 {
            return false;
        }
        self.cursor.file = 0;
        self.cursor.epoch += 1;
        true
    }

    /// The next window.
    ///
    /// # Errors
    /// A source or the encoder fails, or a whole epoch holds less than one window.
    pub fn next_window(&mut self) -> Result<Window, StreamError> {
        let mut tokens = Vec::with_capacity(usize::try_from(self.seq_len).unwrap_or(0));
        let mut pieces = Vec::new();
        let mut start = self.cursor;
        let mut epochs_ended = 0;
        while (tokens.len() as u64) < self.seq_len {
            if self.source.files.num_files() == 0 {
                return Err(StreamError::TooSmall {
                    tokens: 0,
                    seq_len: self.seq_len,
                });
            }
            if self.block.is_none() {
                self.load_block()?;
            }
            let block = self.block.as_ref().expect("loaded above");
            let Some(ids) = block
                .documents
                .get(usize::try_from(self.cursor.document).expect("in the block"))
            else {
                if self.next_block() {
                    // The epoch ended inside this window: its tail is dropped, the next epoch starts
                    // anew. A second end in the same window means a whole epoch was shorter than it.
                    epochs_ended += 1;
                    if epochs_ended == 2 {
                        return Err(StreamError::TooSmall {
                            tokens: tokens.len() as u64,
                            seq_len: self.seq_len,
                        });
                    }
                    tokens.clear();
                    pieces.clear();
                    start = Cursor {
                        window: start.window,
                        ..self.cursor
                    };
                }
                continue;
            };
            let Some(left) = (ids.len() as u64).checked_sub(self.cursor.offset) else {
                return Err(StreamError::BadCursor {
                    cursor: self.cursor,
                    reason: format!("its document has {} tokens", ids.len()),
                });
            };
            let taken = left.min(self.seq_len - tokens.len() as u64);
            let range = self.cursor.offset..self.cursor.offset + taken;
            if taken > 0 {
                tokens.extend_from_slice(&ids[to_usize(&range)]);
                pieces.push(Piece {
                    document: block.names[usize::try_from(self.cursor.document).expect("small")],
                    tokens: range.clone(),
                });
            }
            self.cursor.offset = range.end;
            if range.end == ids.len() as u64 {
                self.cursor.document += 1;
                self.cursor.offset = 0;
            }
        }
        self.cursor.window = start.window + 1;
        Ok(Window {
            index: start.window,
            tokens,
            pieces,
        })
    }
}

/// Windows apart at which [`OnlineDataset`] keeps a cursor.
pub const CURSOR_EVERY: u64 = 64;
/// Cursors kept (the oldest dropped first): they reach `CURSOR_EVERY × CURSORS_KEPT` windows back.
const CURSORS_KEPT: usize = 16_384;
/// Windows a request may lie after the nearest cursor: they are produced in order to reach it.
pub const AHEAD_MAX: u64 = 65_536;
/// Bytes of produced windows kept for the job's other ranks and micro-steps.
const WINDOW_BYTES_KEPT: u64 = 64 << 20;
/// Bytes an [`OnlineDataset`] holds at most, for the server's memory budget ([`crate::budget`]): the
/// windows kept, the cursors, and the block being served (its texts' ids, counted at 64 MiB).
pub const STATE_BYTES: u64 = WINDOW_BYTES_KEPT + CURSORS_KEPT as u64 * 64 + (64 << 20);

/// A streaming dataset of a job, shared by its sessions: windows produced once, in order, the recent
/// ones kept, and a cursor every [`CURSOR_EVERY`] windows, so that a request behind the producer (a slow
/// rank, a restarted trainer) costs fewer than `CURSOR_EVERY` windows of work, and one that a client's
/// checkpoint cursor was given for ([`OnlineDataset::add_cursor`]) starts there.
pub struct OnlineDataset {
    source: Arc<RawSource>,
    seq_len: u32,
    seed: u64,
    state: Mutex<Produced>,
    /// The cursors produced, kept on disk for a restarted server.
    log: Option<CursorLog>,
}

struct Produced {
    producer: Producer,
    /// Windows `first..first + windows.len()`.
    windows: VecDeque<Arc<Window>>,
    first: u64,
    cursors: BTreeMap<u64, Cursor>,
}

impl std::fmt::Debug for OnlineDataset {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OnlineDataset")
            .field("source", &self.source)
            .field("seq_len", &self.seq_len)
            .finish_non_exhaustive()
    }
}

impl OnlineDataset {
    /// `source`'s windows of `seq_len` tokens in `seed`'s order.
    /// With the source's cursor log, the cursors an earlier server kept there are this one's too.
    pub fn new(source: Arc<RawSource>, seq_len: u32, seed: u64) -> Self {
        let producer = Producer::new(Arc::clone(&source), (seq_len, seed), Cursor::default());
        let mut produced = Produced {
            producer,
            windows: VecDeque::new(),
            first: 0,
            cursors: BTreeMap::from([(0, Cursor::default())]),
        };
        let log = source.cursor_log.as_deref().and_then(|path| {
            CursorLog::open(path)
                .inspect_err(|e| {
                    tracing::warn!(log = %path.display(), error = %e, "Cannot keep the stream's cursors on disk.");
                })
                .ok()
        });
        let log = log.map(|(log, kept)| {
            for cursor in kept {
                produced.add(cursor);
            }
            log
        });
        Self {
            source,
            seq_len,
            seed,
            state: Mutex::new(produced),
            log,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Produced> {
        // A session that panicked mid-production leaves a producer that may be mid-window: start over
        // from the last cursor instead of trusting it.
        self.state.lock().unwrap_or_else(|poisoned| {
            let mut state = poisoned.into_inner();
            state.windows.clear();
            let cursor = state
                .cursors
                .values()
                .next_back()
                .copied()
                .unwrap_or_default();
            state.first = cursor.window;
            state.producer =
                Producer::new(Arc::clone(&self.source), (self.seq_len, self.seed), cursor);
            state
        })
    }

    /// Window `index`.
    ///
    /// # Errors
    /// A source or the encoder fails, the dataset is smaller than a window, or no cursor this server
    /// holds lies within [`AHEAD_MAX`] windows before `index`.
    pub fn window(&self, index: u64) -> Result<Arc<Window>, StreamError> {
        let mut state = self.lock();
        if let Some(window) = state.cached(index) {
            return Ok(window);
        }
        // Go on from the producer or from the nearest cursor before `index`, whichever is nearer.
        let at = state.producer.cursor().window;
        let cursor = state.cursors.range(..=index).next_back().map(|(_, c)| *c);
        let start = cursor
            .map(|c| c.window)
            .into_iter()
            .chain((at <= index).then_some(at))
            .max()
            .filter(|&start| index - start <= AHEAD_MAX)
            .ok_or_else(|| StreamError::NoCursor {
                window: index,
                earliest: state.cursors.keys().next().copied(),
            })?;
        if start != at {
            let cursor = cursor.expect("start is a cursor's window");
            state.producer =
                Producer::new(Arc::clone(&self.source), (self.seq_len, self.seed), cursor);
            state.windows.clear();
            state.first = cursor.window;
        }
        let kept = (WINDOW_BYTES_KEPT / (4 * u64::from(self.seq_len).max(1))).max(64);
        loop {
            let cursor = state.producer.cursor();
            if cursor.window.is_multiple_of(CURSOR_EVERY)
                && !state.cursors.contains_key(&cursor.window)
            {
                state.add(cursor);
                if let Some(log) = &self.log {
                    log.append(&cursor);
                }
            }
            let window = Arc::new(state.producer.next_window()?);
            if state.windows.is_empty() {
                state.first = window.index;
            }
            state.windows.push_back(Arc::clone(&window));
            if state.windows.len() as u64 > kept {
                state.windows.pop_front();
                state.first += 1;
            }
            if window.index == index {
                return Ok(window);
            }
        }
    }

    /// The cursor of the latest window at or before `index` that this server holds one for.
    pub fn cursor_at(&self, index: u64) -> Option<Cursor> {
        self.lock()
            .cursors
            .range(..=index)
            .next_back()
            .map(|(_, c)| *c)
    }

    /// Adds a cursor (from a trainer's checkpoint): requests from its window on start there.
    pub fn add_cursor(&self, cursor: Cursor) {
        self.lock().add(cursor);
    }
}

impl Produced {
    fn cached(&self, index: u64) -> Option<Arc<Window>> {
        let at = usize::try_from(index.checked_sub(self.first)?).ok()?;
        self.windows.get(at).cloned()
    }

    fn add(&mut self, cursor: Cursor) {
        self.cursors.insert(cursor.window, cursor);
        while self.cursors.len() > CURSORS_KEPT {
            self.cursors.pop_first();
        }
    }
}

fn to_usize(range: &Range<u64>) -> Range<usize> {
    usize::try_from(range.start).expect("in memory")..usize::try_from(range.end).expect("in memory")
}

/// Documents in memory as raw files: each file a list of texts (tests, and small in-memory datasets).
impl RawFiles for Vec<Vec<String>> {
    fn num_files(&self) -> usize {
        self.len()
    }

    fn open(&self, file: usize, start: u64) -> Result<Box<dyn RecordReader>, SourceError> {
        let texts = self.get(file).ok_or_else(|| SourceError {
            path: format!("file {file}"),
            position: "file".into(),
            reason: format!("there are {} files", self.len()),
        })?;
        let start = usize::try_from(start).unwrap_or(usize::MAX);
        if start > texts.len() {
            return Err(SourceError {
                path: format!("file {file}"),
                position: format!("record {start}"),
                reason: format!("the file has {} records", texts.len()),
            });
        }
        Ok(Box::new(Vec::from(&texts[start..]).into_iter()))
    }
}

impl RecordReader for std::vec::IntoIter<String> {
    fn read(&mut self, out: &mut Vec<String>, max: usize) -> Result<bool, SourceError> {
        out.extend(self.by_ref().take(max));
        Ok(self.len() > 0)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use proptest::prelude::*;

    use super::*;

    /// Ids are the text's characters.
    struct Chars;

    impl Encode for Chars {
        fn encode(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
            out.clear();
            out.extend(text.chars().map(u32::from));
            Ok(())
        }
    }

    fn source(files: &[Vec<String>], encoder: impl Encode + 'static) -> Arc<RawSource> {
        Arc::new(RawSource {
            files: Box::new(files.to_vec()),
            encoder: Box::new(encoder),
            names: (0..files.len())
                .map(|f| format!("file-{f}.jsonl"))
                .collect(),
            cursor_log: None,
        })
    }

    fn producer(files: &[Vec<String>], seq_len: u32, cursor: Cursor) -> Producer {
        Producer::new(source(files, Chars), (seq_len, 7), cursor)
    }

    /// Files of short texts; with `records` up to a few blocks each.
    fn corpus(records: usize) -> impl Strategy<Value = Vec<Vec<String>>> {
        prop::collection::vec(prop::collection::vec("[a-z]{0,12}", 0..records), 1..4)
    }

    fn text_of(files: &[Vec<String>], document: u64) -> &str {
        let file = usize::try_from(document >> RECORD_BITS).unwrap();
        let record = usize::try_from(document & ((1 << RECORD_BITS) - 1)).unwrap();
        &files[file][record]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]

        /// One pass serves every document's ids once, in pieces that follow each other, less a tail of
        /// fewer than `seq_len` tokens; each window's tokens are its pieces' ids.
        #[test]
        fn each_pass_serves_every_document_once(files in corpus(2500), seq_len in 1u32..40) {
            let total: u64 = files.iter().flatten().map(|t| t.chars().count() as u64).sum();
            prop_assume!(total >= u64::from(seq_len));
            let per_epoch = total / u64::from(seq_len);
            let mut producer = producer(&files, seq_len, Cursor::default());
            for epoch in 0..2 {
                let mut served: HashMap<u64, u64> = HashMap::new();
                for _ in 0..per_epoch {
                    let window = producer.next_window().unwrap();
                    prop_assert_eq!(window.tokens.len() as u64, u64::from(seq_len));
                    let mut at = 0;
                    for piece in &window.pieces {
                        let ids: Vec<u32> = text_of(&files, piece.document).chars().map(u32::from).collect();
                        let len = usize::try_from(piece.tokens.end - piece.tokens.start).unwrap();
                        prop_assert_eq!(&window.tokens[at..at + len], &ids[to_usize(&piece.tokens)]);
                        at += len;
                        let next = served.entry(piece.document).or_insert(0);
                        prop_assert_eq!(*next, piece.tokens.start, "pieces of a document follow each other");
                        *next = piece.tokens.end;
                    }
                }
                prop_assert_eq!(producer.cursor().epoch, epoch, "the epoch's windows are all served");
                let served_tokens: u64 = served.values().sum();
                prop_assert!(total - served_tokens < u64::from(seq_len), "only a short tail is dropped");
            }
        }

        /// A producer started from any window's cursor continues exactly as the one that got there.
        #[test]
        fn a_cursor_continues_the_stream_exactly(
            files in corpus(2500), seq_len in 1u32..40, at in 0u64..200, count in 1u64..20,
        ) {
            let total: u64 = files.iter().flatten().map(|t| t.chars().count() as u64).sum();
            prop_assume!(total >= u64::from(seq_len));
            let mut first = producer(&files, seq_len, Cursor::default());
            for _ in 0..at {
                first.next_window().unwrap();
            }
            let cursor = first.cursor();
            prop_assert_eq!(cursor.window, at);
            let mut second = producer(&files, seq_len, cursor);
            for _ in 0..count {
                prop_assert_eq!(first.next_window().unwrap(), second.next_window().unwrap());
            }
        }
    }

    /// Counts the documents it encodes.
    struct Counting(Arc<std::sync::atomic::AtomicU64>);

    impl Encode for Counting {
        fn encode(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
            self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Chars.encode(text, out)
        }
    }

    fn numbered(files: usize, records: usize) -> Vec<Vec<String>> {
        (0..files)
            .map(|f| (0..records).map(|r| format!("{f}-{r} ")).collect())
            .collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(24))]

        /// Windows asked for in any order (ranks, micro-steps, a rank far behind) are the stream's.
        #[test]
        fn windows_in_any_order_are_the_streams(
            files in corpus(1500), seq_len in 1u32..24,
            asks in prop::collection::vec(0u64..400, 1..40),
        ) {
            let total: u64 = files.iter().flatten().map(|t| t.chars().count() as u64).sum();
            prop_assume!(total >= u64::from(seq_len));
            let mut sequential = producer(&files, seq_len, Cursor::default());
            let expected: Vec<Window> = (0..400).map(|_| sequential.next_window().unwrap()).collect();
            let dataset = OnlineDataset::new(source(&files, Chars), seq_len, 7);
            for index in asks {
                prop_assert_eq!(&*dataset.window(index).unwrap(), &expected[usize::try_from(index).unwrap()]);
            }
        }
    }

    #[test]
    fn a_checkpoints_cursor_resumes_a_fresh_server_without_replaying() {
        let files = numbered(2, 20_000);
        let old = OnlineDataset::new(source(&files, Chars), 16, 7);
        let step = 5_000;
        let expected = old.window(step + 3).unwrap();
        let cursor = old.cursor_at(step).unwrap();
        assert!(cursor.window <= step && step - cursor.window < CURSOR_EVERY);

        let encoded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let fresh = OnlineDataset::new(source(&files, Counting(Arc::clone(&encoded))), 16, 7);
        fresh.add_cursor(cursor);
        assert_eq!(fresh.window(step + 3).unwrap(), expected);
        let encoded = encoded.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            encoded <= 2 * DOCS_PER_BLOCK,
            "{encoded} documents encoded to resume at window {step}: more than the cursor's block and the next"
        );
    }

    #[test]
    fn a_restarted_server_continues_from_the_cursors_kept_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let files = numbered(2, 20_000);
        let logged = |encoder: Box<dyn Encode>| {
            Arc::new(RawSource {
                files: Box::new(files.clone()),
                encoder,
                names: vec!["a".into(), "b".into()],
                cursor_log: Some(dir.path().join("cursors/0.jsonl")),
            })
        };
        let step = 5_000;
        let expected = OnlineDataset::new(logged(Box::new(Chars)), 16, 7)
            .window(step + 3)
            .unwrap();
        // The first server is gone; a new one on the same cache has only its log.
        let encoded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let restarted = OnlineDataset::new(logged(Box::new(Counting(Arc::clone(&encoded)))), 16, 7);
        assert_eq!(restarted.window(step + 3).unwrap(), expected);
        let encoded = encoded.load(std::sync::atomic::Ordering::Relaxed);
        assert!(
            encoded <= 2 * DOCS_PER_BLOCK,
            "{encoded} documents encoded to continue at window {step}: a replay, not a cursor"
        );
    }

    #[test]
    fn a_window_far_past_every_cursor_is_refused() {
        let dataset = OnlineDataset::new(source(&numbered(1, 10), Chars), 4, 7);
        let err = dataset.window(AHEAD_MAX + 1).unwrap_err();
        assert!(
            matches!(err, StreamError::NoCursor { window, earliest: Some(0) } if window == AHEAD_MAX + 1),
            "{err}"
        );
        assert!(err.to_string().contains("checkpoint's cursor"), "{err}");
    }

    proptest! {
        /// A cursor from a client is untrusted: any cursor gives windows or an error, never a panic.
        #[test]
        fn any_cursor_gives_windows_or_an_error(
            window in 0u64..1000, epoch in 0u64..1 << 40, file in 0u64..6, block in prop_oneof![0u64..4, Just(u64::MAX)],
            document in prop_oneof![0u64..1100, Just(u64::MAX)], offset in prop_oneof![0u64..40, Just(u64::MAX)],
        ) {
            let files = numbered(3, 2500);
            let cursor = Cursor { window, epoch, file, block, document, offset };
            let mut producer = producer(&files, 16, cursor);
            for _ in 0..3 {
                if producer.next_window().is_err() {
                    break;
                }
            }
        }
    }

    #[test]
    fn epochs_are_ordered_differently() {
        let files: Vec<Vec<String>> = (0..3)
            .map(|f| (0..2000).map(|r| format!("{f}-{r} ")).collect())
            .collect();
        let total: usize = files.iter().flatten().map(String::len).sum();
        let seq_len = 64;
        let per_epoch = total / 64;
        let mut producer = producer(&files, seq_len, Cursor::default());
        let first: Vec<u64> = (0..per_epoch)
            .flat_map(|_| producer.next_window().unwrap().pieces)
            .map(|p| p.document)
            .collect();
        let second: Vec<u64> = (0..per_epoch)
            .flat_map(|_| producer.next_window().unwrap().pieces)
            .map(|p| p.document)
            .collect();
        assert_ne!(first, second);
        // Records of one block are shuffled: the first window does not start with record 0 of its file.
        assert_ne!(
            first[..4],
            [first[0], first[0] + 1, first[0] + 2, first[0] + 3]
        );
    }

    /// In-memory files that record each open and each fetch ahead.
    struct Recording {
        files: Vec<Vec<String>>,
        events: Arc<Mutex<Vec<(&'static str, usize)>>>,
    }

    impl RawFiles for Recording {
        fn num_files(&self) -> usize {
            self.files.len()
        }

        fn open(&self, file: usize, start: u64) -> Result<Box<dyn RecordReader>, SourceError> {
            self.events.lock().unwrap().push(("open", file));
            self.files.open(file, start)
        }

        fn prefetch(&self, file: usize) {
            self.events.lock().unwrap().push(("prefetch", file));
        }
    }

    #[test]
    fn opening_a_file_asks_for_the_next_in_the_order_across_epochs() {
        let files = numbered(4, 300);
        let events = Arc::new(Mutex::new(Vec::new()));
        let source = Arc::new(RawSource {
            files: Box::new(Recording {
                files: files.clone(),
                events: Arc::clone(&events),
            }),
            encoder: Box::new(Chars),
            names: (0..4).map(|f| format!("file-{f}.jsonl")).collect(),
            cursor_log: None,
        });
        let total: usize = files.iter().flatten().map(String::len).sum();
        let mut producer = Producer::new(source, (16, 7), Cursor::default());
        // Just past two epochs: the third's first file is open.
        while producer.cursor().epoch < 2 {
            producer.next_window().unwrap();
        }
        assert!(total / 16 > 8);
        let order: Vec<usize> = (0..3)
            .flat_map(|epoch| (0..4).map(move |place| (epoch, place)))
            .map(|(epoch, place)| producer.file_at(epoch, place))
            .collect();
        assert_ne!(order[..4], order[4..8], "epochs differ in order");
        let expected: Vec<(&str, usize)> = (0..9)
            .flat_map(|place| [("open", order[place]), ("prefetch", order[place + 1])])
            .collect();
        assert_eq!(*events.lock().unwrap(), expected);
    }

    #[test]
    fn a_pass_shorter_than_a_window_is_refused() {
        let files = vec![vec!["abc".to_owned()], vec!["de".to_owned()]];
        let err = producer(&files, 6, Cursor::default())
            .next_window()
            .unwrap_err();
        assert!(
            matches!(
                err,
                StreamError::TooSmall {
                    tokens: 5,
                    seq_len: 6
                }
            ),
            "{err}"
        );
        let none: Vec<Vec<String>> = vec![];
        assert!(matches!(
            producer(&none, 6, Cursor::default()).next_window(),
            Err(StreamError::TooSmall { .. })
        ));
    }

    struct Failing;

    impl Encode for Failing {
        fn encode(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
            anyhow::ensure!(text != "bad", "cannot encode {text:?}");
            out.clear();
            out.extend(text.bytes().map(u32::from));
            Ok(())
        }
    }

    #[test]
    fn errors_name_the_file_and_record() {
        let files = vec![vec!["ok".to_owned(), "bad".to_owned()]];
        let mut failing = Producer::new(source(&files, Failing), (1, 0), Cursor::default());
        let err = failing.next_window().unwrap_err().to_string();
        assert_eq!(
            err,
            "file-0.jsonl: record 1: tokenizing: cannot encode \"bad\""
        );
        let past_end = Cursor {
            block: 5,
            ..Cursor::default()
        };
        let err = producer(&files, 1, past_end).next_window().unwrap_err();
        assert_eq!(
            err.to_string(),
            "file 0: record 5120: the file has 2 records"
        );
    }

    #[test]
    fn of_several_failing_documents_the_first_in_the_blocks_order_is_reported() {
        // Documents of one block are encoded on several threads; which thread fails first must not matter.
        let bad = [17_usize, 300, 555, 901];
        let files = vec![
            (0..1000)
                .map(|r| {
                    if bad.contains(&r) {
                        "bad".into()
                    } else {
                        format!("doc {r}")
                    }
                })
                .collect::<Vec<String>>(),
        ];
        let first = Producer::new(source(&files, Failing), (1, 0), Cursor::default());
        let order = Permutation::new(1000, first.key(&[2, 0, 0, 0]));
        let expected = (0..1000)
            .map(|place| order.apply(place))
            .find(|&record| bad.contains(&usize::try_from(record).unwrap()))
            .unwrap();
        for _ in 0..20 {
            let mut producer = Producer::new(source(&files, Failing), (1, 0), Cursor::default());
            let err = std::iter::from_fn(|| Some(producer.next_window()))
                .find_map(Result::err)
                .unwrap();
            assert_eq!(
                err.to_string(),
                format!("file-0.jsonl: record {expected}: tokenizing: cannot encode \"bad\"")
            );
        }
    }
}
