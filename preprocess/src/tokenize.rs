//! Text to token ids, behind a small seam.
//!
//! [`TextEncoder`] wraps a Hugging Face `tokenizer.json` and the `tokenizers` crate, the reference for
//! what the ids are, whose tokenizer it builds only when it is used (a hand-written encoder's run never
//! builds it: [`crate::probe`] reads what it would say from the JSON). Where a fast encoder of the same ids exists
//! for the tokenizer's shape
//! ([`crate::spm_bpe`] for SentencePiece-style BPE, [`crate::byte_bpe`] for byte-level BPE with a split
//! regex, [`crate::wordpiece`] for BERT), documents go through it instead; any other shape goes through
//! [`crate::cached`] (the crate's own components, its model once per distinct pre-token), and only what
//! that cannot cache exactly through the crate's whole encoder. The run logs once which. The BOS/EOS
//! policy is explicit ([`BosPolicy`], `append_eod`), and literal special-token strings inside a document
//! (`<s>`, `<|endoftext|>`) are encoded as plain text unless the user asks otherwise, so that a web page
//! quoting `</s>` cannot forge a document boundary.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::Serialize;
use tokenizers::Tokenizer;

use crate::bpe::Cache;
use crate::byte_bpe::{ByteLevelBpe, Splitter};
use crate::cached::CachedModel;
use crate::chunk::{Chunker, GUARD};
use crate::probe::{BOS_NAMES, EOS_NAMES, Probes, special_affixes};
use crate::spm_bpe::SentencePieceBpe;
use crate::wordpiece::WordPiece;

/// Where BOS comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BosPolicy {
    /// Whatever the tokenizer's post-processor adds (flame's behaviour: Llama/Mistral add `<s>`, GPT-2 adds nothing).
    Tokenizer,
    /// Always prepend the tokenizer's BOS id (an error if it has none).
    Always,
    /// Never add one.
    Never,
}

/// Identity of a tokenizer, as recorded in the manifest.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TokenizerInfo {
    /// The path or id it was loaded from.
    pub name: String,
    /// SHA-256 of `tokenizer.json`.
    pub sha256: String,
    /// Vocabulary size with added tokens (Megatron's `len(tokenizer)`).
    pub vocab_size: u64,
    /// BOS id, if any.
    pub bos_id: Option<u32>,
    /// EOS id, if any.
    pub eos_id: Option<u32>,
}

/// A loaded tokenizer plus the policy of what to add around each document.
#[derive(Debug)]
pub struct TextEncoder {
    tokenizer: LazyTokenizer,
    info: TokenizerInfo,
    bos: BosPolicy,
    append_eod: bool,
    /// How the `tokenizers` crate's encoder cuts long documents (without a fast path).
    long: Option<LongDocuments>,
    /// Whether the tokenizer's documents can be cut at safe places ([`Chunker::for_tokenizer`]).
    cuts_long_documents: bool,
    fast: Option<FastPath>,
}

/// The `tokenizers` crate's tokenizer, built from the file's bytes the first time something needs it:
/// the encoder without a fast path, its long-document cutting, the probes [`Probes::of_json`] declines.
struct LazyTokenizer {
    bytes: Vec<u8>,
    file: PathBuf,
    parse_special_tokens: bool,
    built: std::sync::OnceLock<Result<Tokenizer, String>>,
}

impl std::fmt::Debug for LazyTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LazyTokenizer")
            .field("file", &self.file)
            .field("built", &self.built.get().is_some())
            .finish_non_exhaustive()
    }
}

impl LazyTokenizer {
    fn new(bytes: Vec<u8>, file: &Path, parse_special_tokens: bool) -> Self {
        Self {
            bytes,
            file: file.to_path_buf(),
            parse_special_tokens,
            built: std::sync::OnceLock::new(),
        }
    }

    fn get(&self) -> anyhow::Result<&Tokenizer> {
        self.built
            .get_or_init(|| {
                let mut tokenizer = Tokenizer::from_bytes(&self.bytes)
                    .map_err(|e| format!("{}: not a tokenizer.json: {e}", self.file.display()))?;
                tokenizer.set_encode_special_tokens(!self.parse_special_tokens);
                Ok(tokenizer)
            })
            .as_ref()
            .map_err(|e| anyhow::anyhow!("{e}"))
    }

    /// The tokenizer, built if it was not; a later [`LazyTokenizer::get`] builds it again.
    fn take(&mut self) -> anyhow::Result<Tokenizer> {
        self.get()?;
        self.built
            .take()
            .expect("built just now")
            .map_err(|e| anyhow::anyhow!("{e}"))
    }
}

/// A fast encoder and what the post-processor puts around a document's ids.
#[derive(Debug)]
struct FastPath {
    encoder: Fast,
    /// Which encoder a thread's cache holds pieces of (tokenizers differ, and a thread may use several).
    id: u64,
    special_prefix: Vec<u32>,
    special_suffix: Vec<u32>,
    /// How the cached path cuts long documents, where the tokenizer's documents can be cut.
    cut: Option<CachedCut>,
}

/// The fast encoders.
#[derive(Debug)]
enum Fast {
    SentencePiece(SentencePieceBpe),
    ByteLevel(Box<ByteLevelBpe>),
    WordPiece(Box<WordPiece>),
    /// Any other shape, through the `tokenizers` crate's components ([`crate::cached`]).
    Cached(Box<CachedModel>),
}

impl Fast {
    fn from_json(json: &serde_json::Value) -> Option<Self> {
        SentencePieceBpe::from_json(json)
            .map(Self::SentencePiece)
            .or_else(|| ByteLevelBpe::from_json(json).map(|e| Self::ByteLevel(Box::new(e))))
            .or_else(|| WordPiece::from_json(json).map(|e| Self::WordPiece(Box::new(e))))
    }

    fn encode(&self, text: &str, cache: &mut Cache, out: &mut Vec<u32>) -> anyhow::Result<()> {
        match self {
            Self::SentencePiece(encoder) => encoder.encode(text, cache, out),
            Self::ByteLevel(encoder) => encoder.encode(text, cache, out),
            Self::WordPiece(encoder) => encoder.encode(text, cache, out),
            Self::Cached(encoder) => return encoder.encode(text, cache, out),
        }
        Ok(())
    }
}

/// Numbers the fast encoders, so that a thread's cache knows whose pieces it holds.
static ENCODERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

thread_local! {
    /// Each worker thread's cache of the fast encoder (pieces → ids).
    static FAST_CACHE: std::cell::RefCell<Cache> = std::cell::RefCell::new(Cache::default());
}

/// The parsed `tokenizer.json` and, unless special tokens are parsed (which the fast encoders leave to
/// the `tokenizers` crate), its fast encoder, with the tables the encoder will need built.
fn load_fast(
    bytes: &[u8],
    parse_special_tokens: bool,
) -> serde_json::Result<(serde_json::Value, Option<Fast>)> {
    let json: serde_json::Value = serde_json::from_slice(bytes)?;
    if parse_special_tokens {
        return Ok((json, None));
    }
    // The split scanner's character classes take about as long as building the encoder: side by side.
    let fast = std::thread::scope(|scope| {
        if ByteLevelBpe::has_split_pattern(&json) {
            scope.spawn(crate::pretok::Classes::get);
        }
        Fast::from_json(&json)
    });
    Ok((json, fast))
}

/// Pieces of one long document encoded at once.
const PARALLEL_PIECES: usize = 2;

/// How documents longer than [`crate::chunk::CHUNK_BYTES`] are encoded piece by piece.
#[derive(Debug)]
struct LongDocuments {
    chunker: Chunker,
    /// Ids of [`GUARD`] alone, stripped from the front of every piece but the first.
    guard_ids: Vec<u32>,
    /// What the post-processor puts before and after a document's ids.
    special_prefix: Vec<u32>,
    special_suffix: Vec<u32>,
}

impl TextEncoder {
    /// Loads `path`: a `tokenizer.json`, or a directory holding one (and optionally `tokenizer_config.json`,
    /// whose `bos_token`/`eos_token` then name BOS and EOS).
    pub fn load(
        path: &Path,
        bos: BosPolicy,
        append_eod: bool,
        parse_special_tokens: bool,
    ) -> anyhow::Result<Self> {
        let file: PathBuf = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        let bytes =
            std::fs::read(&file).with_context(|| format!("{}: read tokenizer", file.display()))?;
        let (json, fast) = load_fast(&bytes, parse_special_tokens)
            .with_context(|| format!("{}: not JSON", file.display()))?;
        let config = file.with_file_name("tokenizer_config.json");
        let config = config.is_file().then_some(config.as_path());
        let sha256 = sha256_hex(&bytes);
        let mut tokenizer = LazyTokenizer::new(bytes, &file, parse_special_tokens);
        // With a fast encoder the `tokenizers` crate's tokenizer is not needed: what it would say about
        // itself is read from the JSON (when that is certain to agree), and it is never built.
        let from_json = match &fast {
            Some(_) => Probes::of_json(&json, config)
                .with_context(|| format!("{}: probe the tokenizer", file.display()))?,
            None => None,
        };
        let probes = match from_json {
            Some(probes) => probes,
            None => Probes::of_tokenizer(tokenizer.get()?, config)
                .with_context(|| format!("{}: probe the tokenizer", file.display()))?,
        };
        let info = TokenizerInfo {
            name: path.display().to_string(),
            sha256,
            vocab_size: probes.vocab_size,
            bos_id: probes.bos_id,
            eos_id: probes.eos_id,
        };
        if bos == BosPolicy::Always && info.bos_id.is_none() {
            anyhow::bail!(
                "{}: --bos always, but the tokenizer has no BOS token (looked for {BOS_NAMES:?})",
                file.display()
            );
        }
        if append_eod && info.eos_id.is_none() {
            anyhow::bail!(
                "{}: --append-eod, but the tokenizer has no EOS token (looked for {EOS_NAMES:?})",
                file.display()
            );
        }
        let chunker = Chunker::for_tokenizer(&json);
        let fast = match fast {
            None if !parse_special_tokens => cached_path(&mut tokenizer, &json, &file)?,
            fast => fast,
        };
        // Freeing a large tree takes a while; nothing waits for it.
        std::thread::spawn(move || drop(json));
        let cuts_long_documents = chunker.is_some();
        if !cuts_long_documents {
            tracing::info!(
                tokenizer = %file.display(),
                "Documents over {} MiB are encoded whole with this tokenizer: flame-prep cuts long documents only for the families it proves a cut for (byte-level BPE with the GPT-2, cl100k, o200k, tekken or DeepSeek-V3 split, SentencePiece-style BPE, BERT's WordPiece); memory grows with the longest document.",
                crate::chunk::CHUNK_BYTES >> 20
            );
        }
        // The fast path encodes special-token strings as text, as flame-prep does by default.
        let (fast, long) = if let Some(encoder) = fast {
            let id = ENCODERS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let cut = match (&encoder, chunker) {
                (Fast::Cached(cached), Some(chunker)) => Some(CachedCut::new(cached, chunker)?),
                _ => None,
            };
            let fast = FastPath {
                encoder,
                id,
                special_prefix: probes.special_prefix,
                special_suffix: probes.special_suffix,
                cut,
            };
            (Some(fast), None)
        } else {
            if parse_special_tokens {
                tracing::info!(
                    tokenizer = %file.display(),
                    "Special-token strings are parsed (--parse-special-tokens), which only the tokenizers crate's encoder does; using it."
                );
            }
            let long = chunker
                .map(|chunker| LongDocuments::new(tokenizer.get()?, chunker))
                .transpose()
                .with_context(|| format!("{}: probe the tokenizer", file.display()))?;
            (None, long)
        };
        Ok(Self {
            tokenizer,
            info,
            bos,
            append_eod,
            long,
            cuts_long_documents,
            fast,
        })
    }

    /// As [`TextEncoder::load`], cutting documents longer than `chunk_bytes` (tests use small pieces to
    /// check that cutting never changes an id). Fails for a tokenizer that is never cut.
    pub fn load_with_chunk_bytes(
        path: &Path,
        bos: BosPolicy,
        chunk_bytes: usize,
    ) -> anyhow::Result<Self> {
        let mut encoder = Self::load(path, bos, false, false)?;
        let file = if path.is_dir() {
            path.join("tokenizer.json")
        } else {
            path.to_path_buf()
        };
        let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&file)?)?;
        let chunker = Chunker::with_chunk_bytes(&json, chunk_bytes).with_context(|| {
            format!(
                "{}: not a tokenizer whose documents can be cut",
                file.display()
            )
        })?;
        encoder.long = Some(LongDocuments::new(encoder.tokenizer.get()?, chunker)?);
        // What is tested here is cutting with the `tokenizers` encoder.
        encoder.fast = None;
        Ok(encoder)
    }

    /// Whether documents longer than [`crate::chunk::CHUNK_BYTES`] are encoded piece by piece (with
    /// bounded memory) rather than whole.
    pub fn cuts_long_documents(&self) -> bool {
        self.cuts_long_documents
    }

    /// The fast encoder documents go through (`None`: the `tokenizers` crate's encoder).
    pub fn fast_path(&self) -> Option<String> {
        self.fast.as_ref().map(|fast| match &fast.encoder {
            Fast::SentencePiece(_) => "SentencePiece-style BPE".to_owned(),
            Fast::ByteLevel(encoder) => match encoder.splitter() {
                Splitter::Scanned(pattern) => format!("byte-level BPE, {pattern:?} split"),
                Splitter::General(_) => "byte-level BPE, general regex split".to_owned(),
            },
            Fast::WordPiece(encoder) => encoder.describe(),
            Fast::Cached(encoder) => encoder.describe().to_owned(),
        })
    }

    /// The tokenizer's identity.
    pub fn info(&self) -> &TokenizerInfo {
        &self.info
    }

    /// Encodes one document, replacing the contents of `out`. An empty text is a document too: its ids
    /// are what the BOS policy and the post-processor put around nothing (possibly none).
    pub fn encode(&self, text: &str, out: &mut Vec<u32>) -> anyhow::Result<()> {
        out.clear();
        let add_special_tokens = self.bos == BosPolicy::Tokenizer;
        if self.bos == BosPolicy::Always {
            out.push(self.info.bos_id.expect("checked in load"));
        }
        if let Some(fast) = &self.fast {
            if add_special_tokens {
                out.extend_from_slice(&fast.special_prefix);
            }
            FAST_CACHE.with(|cache| {
                let mut cache = cache.borrow_mut();
                cache.belong_to(fast.id);
                match (&fast.encoder, &fast.cut) {
                    (Fast::Cached(cached), Some(cut)) if text.len() > cut.chunker.chunk_bytes() => {
                        cut.encode(cached, text, &mut cache, out)
                    }
                    (encoder, _) => encoder.encode(text, &mut cache, out),
                }
            })?;
            if add_special_tokens {
                out.extend_from_slice(&fast.special_suffix);
            }
            self.end_document(out);
            return Ok(());
        }
        match &self.long {
            Some(long) if text.len() > long.chunker.chunk_bytes() => {
                long.encode(self.tokenizer.get()?, text, add_special_tokens, out)?;
            }
            _ => out.extend_from_slice(
                encode_ids(self.tokenizer.get()?, text, add_special_tokens)?.get_ids(),
            ),
        }
        self.end_document(out);
        Ok(())
    }

    /// Appends EOD (with `--append-eod`) to a document's ids, unless it has none.
    ///
    /// This is Megatron's rule (`tools/preprocess_data.py`, `Encoder.encode`: EOD only
    /// `if len(doc_ids) > 0`), so an empty text, whose ids are only what the post-processor adds, gives
    /// what `preprocess_data.py` writes: nothing for GPT-2, and for Mistral nothing with `--bos never`
    /// (megatron-core 0.16's default, ids without special tokens) or `<s></s>` with `--bos tokenizer`
    /// (0.17's default, `tokenizer(text).input_ids`). A document left without ids is then a Megatron
    /// document of zero sequences, as [`ShardSink::add_document`](crate::shard::ShardSink::add_document)
    /// writes it.
    fn end_document(&self, out: &mut Vec<u32>) {
        if self.append_eod && !out.is_empty() {
            out.push(self.info.eos_id.expect("checked in load"));
        }
    }
}

/// The cached path for a tokenizer no hand-written encoder takes, unless caching could change its ids
/// (then the `tokenizers` crate's encoder is used); either is logged.
fn cached_path(
    tokenizer: &mut LazyTokenizer,
    json: &serde_json::Value,
    file: &Path,
) -> anyhow::Result<Option<Fast>> {
    if let Some(reason) = CachedModel::refusal(tokenizer.get()?, json) {
        tracing::info!(
            tokenizer = %file.display(),
            reason,
            "No fast encoder for this tokenizer's shape, and its model's ids cannot be cached per pre-token; using the tokenizers crate's encoder."
        );
        return Ok(None);
    }
    let cached = CachedModel::new(tokenizer.take()?, json);
    tracing::info!(
        tokenizer = %file.display(),
        path = cached.describe(),
        "No hand-written encoder for this tokenizer's shape (flame-prep has them for SentencePiece-style BPE, BERT WordPiece and byte-level BPE whose split regexes have no look-around but a final `\\s+(?!\\S)` alternative, no backreference, assertion or flag other than (?i)); using the cached path: the tokenizers crate's model run once per distinct pre-token, the pre-tokens from flame-prep's own normalizer and pre-tokenizer steps where they cover the tokenizer (`native` in the path), else from the crate's."
    );
    Ok(Some(Fast::Cached(Box::new(cached))))
}

/// How the cached path encodes documents longer than [`crate::chunk::CHUNK_BYTES`]: piece by piece, as
/// [`LongDocuments`] does with the crate's encoder. The cached path gives the crate's ids for every text,
/// so the pieces' ids are the crate's, whose concatenation (guards stripped) is the whole document's
/// ([`crate::chunk`]).
#[derive(Debug)]
struct CachedCut {
    chunker: Chunker,
    /// Ids of [`GUARD`] alone, stripped from the front of every piece but the first.
    guard_ids: Vec<u32>,
}

impl CachedCut {
    fn new(cached: &CachedModel, chunker: Chunker) -> anyhow::Result<Self> {
        let mut guard_ids = Vec::new();
        cached.encode(GUARD, &mut Cache::default(), &mut guard_ids)?;
        Ok(Self { chunker, guard_ids })
    }

    fn encode(
        &self,
        cached: &CachedModel,
        text: &str,
        cache: &mut Cache,
        out: &mut Vec<u32>,
    ) -> anyhow::Result<()> {
        let mut guarded = String::new();
        for (i, piece) in self.chunker.pieces(text).into_iter().enumerate() {
            if i == 0 {
                cached.encode(piece, cache, out)?;
                continue;
            }
            guarded.clear();
            guarded.push_str(GUARD);
            guarded.push_str(piece);
            let start = out.len();
            cached.encode(&guarded, cache, out)?;
            anyhow::ensure!(
                out[start..].starts_with(&self.guard_ids),
                "internal error: a guarded piece does not start with the guard's ids"
            );
            out.drain(start..start + self.guard_ids.len());
        }
        Ok(())
    }
}

impl LongDocuments {
    fn new(tokenizer: &Tokenizer, chunker: Chunker) -> anyhow::Result<Self> {
        let guard_ids = encode_ids(tokenizer, GUARD, false)?.get_ids().to_vec();
        let (special_prefix, special_suffix) = special_affixes(tokenizer)?;
        Ok(Self {
            chunker,
            guard_ids,
            special_prefix,
            special_suffix,
        })
    }

    /// Encodes `text` piece by piece onto `out`: the ids are those of encoding it whole.
    fn encode(
        &self,
        tokenizer: &Tokenizer,
        text: &str,
        add_special_tokens: bool,
        out: &mut Vec<u32>,
    ) -> anyhow::Result<()> {
        if add_special_tokens {
            out.extend_from_slice(&self.special_prefix);
        }
        // Pieces are encoded a few at a time by the tokenizer's own thread pool: a long document keeps
        // every core busy, and at most `PARALLEL_PIECES` pieces are held at once.
        let pieces = self.chunker.pieces(text);
        let mut guarded = Vec::with_capacity(PARALLEL_PIECES);
        let (start, mut done_bytes) = (out.len(), 0);
        for (group_index, group) in pieces.chunks(PARALLEL_PIECES).enumerate() {
            reserve_projected(out, out.len() - start, done_bytes, text.len() - done_bytes);
            done_bytes += group.iter().map(|p| p.len()).sum::<usize>();
            guarded.clear();
            for (i, piece) in group.iter().enumerate() {
                let first = group_index == 0 && i == 0;
                guarded.push(if first {
                    (*piece).to_owned()
                } else {
                    format!("{GUARD}{piece}")
                });
            }
            let encodings = tokenizer
                .encode_batch_fast(std::mem::take(&mut guarded), false)
                .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))?;
            for (i, encoding) in encodings.iter().enumerate() {
                let ids = encoding.get_ids();
                let ids = if group_index == 0 && i == 0 {
                    ids
                } else {
                    ids.strip_prefix(self.guard_ids.as_slice()).context(
                        "internal error: a guarded piece does not start with the guard's ids",
                    )?
                };
                out.extend_from_slice(ids);
            }
        }
        if add_special_tokens {
            out.extend_from_slice(&self.special_suffix);
        }
        Ok(())
    }
}

/// Grows `out` to the number of ids the rest of a document will likely add, judged by the ids per byte so
/// far, so that a 200 MB document's ids do not sit in a buffer doubled past their size.
fn reserve_projected(out: &mut Vec<u32>, ids_so_far: usize, done_bytes: usize, left_bytes: usize) {
    if done_bytes == 0 {
        return;
    }
    #[allow(
        clippy::cast_precision_loss,
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss
    )]
    let projected = (ids_so_far as f64 / done_bytes as f64 * left_bytes as f64 * 1.05) as usize;
    if out.capacity() - out.len() < projected / 4 {
        out.reserve_exact(projected);
    }
}

fn encode_ids(
    tokenizer: &Tokenizer,
    text: &str,
    add_special_tokens: bool,
) -> anyhow::Result<tokenizers::Encoding> {
    tokenizer
        .encode_fast(text, add_special_tokens)
        .map_err(|e| anyhow::anyhow!("tokenizer failed: {e}"))
}

fn sha256_hex(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}
