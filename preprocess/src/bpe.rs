//! What the fast encoders ([`crate::spm_bpe`], [`crate::byte_bpe`]) share: the merge table, BPE over
//! one piece as the `tokenizers` crate runs it, and the per-thread cache of piece → ids.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use std::sync::atomic::{AtomicU32, Ordering};

use rustc_hash::FxHashMap as HashMap;

/// Pair of ids → (rank, merged id), in an open-addressed table of `(pair, merge)` words probed
/// linearly from the pair's hash: a lookup mostly reads one cache line.
#[derive(Debug)]
pub struct Merges {
    slots: Box<[(u64, u64)]>,
    shift: u32,
}

/// A slot no pair occupies (ids are below 2^32 - 1).
const EMPTY: u64 = u64::MAX;

/// Whether `json` (a parsed `tokenizer.json`) has a BPE model with none of the options the fast
/// encoders leave out (dropout, a subword prefix or suffix), and only special added tokens (the fast
/// encoders encode their strings as text, as flame-prep does by default).
pub fn plain_bpe(json: &serde_json::Value) -> bool {
    plain_bpe_model(&json["model"])
        && !json["added_tokens"]
            .as_array()
            .is_some_and(|added| added.iter().any(|t| t["special"] != true))
}

/// Whether `model` is BPE without dropout, subword prefix or word suffix (`""` is the same as unset: the
/// `tokenizers` crate only ever concatenates them).
pub fn plain_bpe_model(model: &serde_json::Value) -> bool {
    let unset = |key: &str| model.get(key).is_none_or(|v| v.is_null() || v == "");
    model["type"] == "BPE"
        && model.get("dropout").is_none_or(serde_json::Value::is_null)
        && unset("continuing_subword_prefix")
        && unset("end_of_word_suffix")
}

#[inline]
fn pair(a: u32, b: u32) -> u64 {
    u64::from(a) << 32 | u64::from(b)
}

impl Merges {
    /// Reads `model.merges` (`"a b"` strings or `[a, b]` pairs). `id` maps a token to its id; `None`
    /// if a merge names a token (or makes one) that `id` does not know. Where a pair repeats, the
    /// later rank wins, as in the `tokenizers` crate.
    pub fn from_json(merges: &serde_json::Value, id: impl Fn(&str) -> Option<u32>) -> Option<Self> {
        let mut map = HashMap::default();
        let mut joined = String::new();
        for (rank, merge) in merges.as_array()?.iter().enumerate() {
            let (a, b) = match merge {
                serde_json::Value::String(s) => s.split_once(' ')?,
                serde_json::Value::Array(pair) => (pair.first()?.as_str()?, pair.get(1)?.as_str()?),
                _ => return None,
            };
            joined.clear();
            joined.push_str(a);
            joined.push_str(b);
            let merged = id(&joined)?;
            map.insert((id(a)?, id(b)?), (u32::try_from(rank).ok()?, merged));
        }
        // At most half full, so probes are short.
        let bits = (map.len().max(1) * 2).next_power_of_two().trailing_zeros();
        let mut merges = Self {
            slots: vec![(EMPTY, 0); 1 << bits].into_boxed_slice(),
            shift: 64 - bits,
        };
        let mask = merges.slots.len() - 1;
        for ((a, b), (rank, merged)) in map {
            let key = pair(a, b);
            let mut at = merges.home(key);
            while merges.slots[at].0 != EMPTY {
                at = (at + 1) & mask;
            }
            merges.slots[at] = (key, u64::from(rank) << 32 | u64::from(merged));
        }
        Some(merges)
    }

    /// The pairs merged.
    pub fn pairs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        #[allow(clippy::cast_possible_truncation)] // the two halves
        self.slots
            .iter()
            .filter(|(key, _)| *key != EMPTY)
            .map(|(key, _)| ((key >> 32) as u32, *key as u32))
    }

    #[inline]
    fn home(&self, key: u64) -> usize {
        #[allow(clippy::cast_possible_truncation)] // the top bits, fewer than usize's
        let home = (key.wrapping_mul(0x9e37_79b9_7f4a_7c15) >> self.shift) as usize;
        home
    }

    #[inline]
    fn get(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        let key = pair(a, b);
        let mask = self.slots.len() - 1;
        let mut at = self.home(key);
        loop {
            let (k, merge) = self.slots[at];
            if k == key {
                #[allow(clippy::cast_possible_truncation)] // the two halves
                return Some(((merge >> 32) as u32, merge as u32));
            }
            if k == EMPTY {
                return None;
            }
            at = (at + 1) & mask;
        }
    }

    /// BPE over `symbols` as `tokenizers`' `Word::merge_all`: the pair of lowest rank, leftmost first,
    /// until none is left. Appends the result to `out`.
    pub fn merge_all(&self, symbols: impl ExactSizeIterator<Item = u32>, out: &mut Vec<u32>) {
        let n = symbols.len();
        if n <= SHORT {
            let mut short = [0u32; SHORT];
            for (slot, symbol) in short.iter_mut().zip(symbols) {
                *slot = symbol;
            }
            let n = self.merge_short(&mut short[..n]);
            out.extend_from_slice(&short[..n]);
            return;
        }
        let mut symbols: Vec<u32> = symbols.collect();
        let mut next: Vec<usize> = (1..=n).collect();
        let mut prev: Vec<usize> = (0..n).map(|i| i.wrapping_sub(1)).collect();
        let mut alive = vec![true; n];
        let mut heap = BinaryHeap::new();
        for i in 0..n - 1 {
            if let Some((rank, merged)) = self.get(symbols[i], symbols[i + 1]) {
                heap.push(Reverse((rank, i, merged)));
            }
        }
        while let Some(Reverse((rank, i, merged))) = heap.pop() {
            let j = next[i];
            if !alive[i] || j >= n {
                continue;
            }
            // A stale entry: the pair at `i` is no longer the one this merge was for.
            if self.get(symbols[i], symbols[j]) != Some((rank, merged)) {
                continue;
            }
            symbols[i] = merged;
            alive[j] = false;
            next[i] = next[j];
            if next[i] < n {
                prev[next[i]] = i;
            }
            if let Some(&p) = prev.get(i).filter(|&&p| p < n)
                && let Some((r, m)) = self.get(symbols[p], symbols[i])
            {
                heap.push(Reverse((r, p, m)));
            }
            if next[i] < n
                && let Some((r, m)) = self.get(symbols[i], symbols[next[i]])
            {
                heap.push(Reverse((r, i, m)));
            }
        }
        out.extend((0..n).filter(|&i| alive[i]).map(|i| symbols[i]));
    }
}

/// Pieces of up to this many symbols are merged by scanning an array of pair ranks, longer ones with a
/// heap.
const SHORT: usize = 64;

impl Merges {
    /// [`Merges::merge_all`] for a short piece, in place: the ranks of adjacent pairs in an array, the
    /// lowest (leftmost on a tie) merged, and the two pairs around it looked up again. Returns how many
    /// symbols are left at the front of `symbols`.
    fn merge_short(&self, symbols: &mut [u32]) -> usize {
        const NONE: (u32, u32) = (u32::MAX, 0);
        let mut n = symbols.len();
        let mut ranks = [NONE; SHORT];
        for i in 1..n {
            ranks[i - 1] = self.get(symbols[i - 1], symbols[i]).unwrap_or(NONE);
        }
        while n > 1 {
            let mut best = 0;
            for i in 1..n - 1 {
                if ranks[i].0 < ranks[best].0 {
                    best = i;
                }
            }
            let (rank, merged) = ranks[best];
            if rank == u32::MAX {
                break;
            }
            symbols[best] = merged;
            symbols.copy_within(best + 2..n, best + 1);
            ranks.copy_within(best + 1..n - 1, best);
            n -= 1;
            if best + 1 < n {
                ranks[best] = self.get(symbols[best], symbols[best + 1]).unwrap_or(NONE);
            }
            if best > 0 {
                ranks[best - 1] = self.get(symbols[best - 1], symbols[best]).unwrap_or(NONE);
            }
        }
        n
    }
}

/// Piece → ids, per thread, bounded.
///
/// Pieces of up to 15 bytes (nearly all) are packed with their length into a `u128` key and kept in a
/// two-way set-associative table ([`size_caches`] sizes it): one 64-byte line per set, ids inline (or in an arena when a piece
/// has more than three), so a lookup touches one line and nothing is allocated per entry. Pieces
/// are looked up a few behind the scanner ([`Cache::lookup`]): each one's line is prefetched
/// when it is scanned, so the misses of the long tail of rare words overlap instead of queueing.
/// Longer pieces (up to 64 bytes) go to a hash map; longer still are not cached.
#[derive(Debug, Default)]
pub struct Cache {
    sets: Sets,
    set_bits: u32,
    long: HashMap<Box<str>, Ids>,
    /// Ids of entries with more than [`INLINE`].
    arena: Vec<u32>,
    owner: u64,
}

const INLINE: usize = 3;

/// A cached piece's ids: inline, or `len` ids from `ids[0]` in the arena.
#[derive(Clone, Copy, Debug, Default)]
struct Ids {
    len: u32,
    ids: [u32; INLINE],
}

/// Two entries, most recently used first; a key of 0 is empty (no piece packs to 0).
#[derive(Clone, Copy, Debug, Default)]
#[repr(align(64))]
struct Set([(u128, Ids); 2]);

/// A cache's sets, in anonymous memory: zeroed (every set empty) by the kernel as pages are first
/// touched rather than written whole up front (that took 38 ms per 64 MiB cache), and backed by huge
/// pages where the kernel allows.
#[derive(Debug, Default)]
struct Sets(Option<memmap2::MmapMut>);

impl Sets {
    fn new(len: usize) -> Self {
        let map = memmap2::MmapMut::map_anon(len * std::mem::size_of::<Set>())
            .expect("memory for a piece cache (at most 64 MiB)");
        // A hint: without huge pages the cache works the same.
        #[cfg(target_os = "linux")]
        let _ = map.advise(memmap2::Advice::HugePage);
        Self(Some(map))
    }
}

impl std::ops::Deref for Sets {
    type Target = [Set];

    #[inline]
    #[allow(clippy::cast_ptr_alignment)] // the map is page-aligned
    fn deref(&self) -> &[Set] {
        match &self.0 {
            None => &[],
            // SAFETY: the map is page-aligned (a `Set` needs 64 bytes), a whole number of sets long and
            // lives as long as the borrow of `self`; any bytes are a valid `Set` (integers only).
            Some(map) => unsafe {
                std::slice::from_raw_parts(
                    map.as_ptr().cast::<Set>(),
                    map.len() / std::mem::size_of::<Set>(),
                )
            },
        }
    }
}

impl std::ops::DerefMut for Sets {
    #[inline]
    #[allow(clippy::cast_ptr_alignment)] // the map is page-aligned
    fn deref_mut(&mut self) -> &mut [Set] {
        match &mut self.0 {
            None => &mut [],
            // SAFETY: as in `deref`, and the borrow of `self` is exclusive.
            Some(map) => unsafe {
                std::slice::from_raw_parts_mut(
                    map.as_mut_ptr().cast::<Set>(),
                    map.len() / std::mem::size_of::<Set>(),
                )
            },
        }
    }
}

/// Sets per cache, as a power of two, for caches created from now on ([`size_caches`]; 4 MiB until
/// then).
static SET_BITS: AtomicU32 = AtomicU32::new(16);
/// At most 2^20 sets (64 MiB, 2 Mi short pieces) per thread.
const MAX_SET_BITS: u32 = 20;
const MIN_SET_BITS: u32 = 12;

/// Sizes the piece caches that threads create from now on so that `threads` of them take about
/// `bytes` together (each between 256 KiB and 64 MiB). A larger cache misses less: on the GPT-2
/// benchmark two workers ran fastest with 64 MiB each (L3 and TLB misses did not outweigh that).
pub fn size_caches(bytes: usize, threads: usize) {
    SET_BITS.store(set_bits(bytes, threads), Ordering::Relaxed);
}

fn set_bits(bytes: usize, threads: usize) -> u32 {
    let per_thread = bytes / threads.max(1) / std::mem::size_of::<Set>();
    per_thread.max(1).ilog2().clamp(MIN_SET_BITS, MAX_SET_BITS)
}
/// Pieces longer than this (bytes) are not cached.
const CACHED_PIECE_BYTES: usize = 64;
/// Long pieces kept; the cache is emptied when there are more.
const LONG_ENTRIES: usize = 1 << 18;
/// Arena ids kept; the cache is emptied when there are more.
const ARENA_IDS: usize = 1 << 22;
/// Pieces scanned ahead of their lookup.
const LOOKAHEAD: usize = 16;

/// A piece's key and set, computed (and its line prefetched) when it is scanned.
#[derive(Clone, Copy, Debug, Default)]
struct Probe {
    /// 0 for a piece of 16 bytes or more.
    key: u128,
    set: usize,
}

impl Cache {
    /// Empties the cache if it was filled for another encoder than `owner` (a number unique to each).
    pub fn belong_to(&mut self, owner: u64) {
        if self.owner != owner {
            self.clear();
            self.owner = owner;
        }
    }

    fn clear(&mut self) {
        self.sets.fill(Set::default());
        self.long.clear();
        self.arena.clear();
    }

    /// A lookup of pieces, in order, appending their ids to `out`: from the cache, or from `encode`
    /// (which appends a piece's ids), then kept. Give it the pieces with [`Lookup::push`], then call
    /// [`Lookup::finish`].
    ///
    /// The pieces are slices of `text` (what lies after a piece in `text` lets its key be read in one
    /// load).
    #[inline]
    pub fn lookup<'c, 'o, 't, E: Fn(&str, &mut Vec<u32>)>(
        &'c mut self,
        text: &'t str,
        out: &'o mut Vec<u32>,
        encode: E,
    ) -> Lookup<'c, 'o, 't, E> {
        if self.sets.is_empty() {
            self.set_bits = SET_BITS.load(Ordering::Relaxed);
            self.sets = Sets::new(1 << self.set_bits);
        }
        Lookup {
            cache: self,
            text,
            out,
            encode,
            ring: [("", Probe::default()); LOOKAHEAD],
            scanned: 0,
        }
    }

    /// `piece`'s key and set (its line prefetched); `text` holds `piece`.
    #[inline]
    fn probe(&self, text: &str, piece: &str) -> Probe {
        let bytes = piece.as_bytes();
        if bytes.is_empty() || bytes.len() >= 16 {
            return Probe::default();
        }
        let start = (piece.as_ptr() as usize).wrapping_sub(text.as_ptr() as usize);
        let key = match text.as_bytes().get(start..start + 16) {
            Some(window) => pack_window(window, bytes.len()),
            None => pack(bytes),
        };
        #[allow(clippy::cast_possible_truncation)] // the top SET_BITS bits of a u64
        let set = (mix(key) >> (64 - self.set_bits)) as usize;
        prefetch(&self.sets[set]);
        Probe { key, set }
    }

    /// Appends `piece`'s ids to `out`: from the cache (inline: nearly every piece) or through
    /// [`Cache::insert`].
    #[inline]
    fn resolve(
        &mut self,
        piece: &str,
        probe: Probe,
        out: &mut Vec<u32>,
        encode: &impl Fn(&str, &mut Vec<u32>),
    ) {
        let found = if probe.key != 0 {
            let set = &mut self.sets[probe.set].0;
            if set[0].0 == probe.key {
                Some(set[0].1)
            } else if set[1].0 == probe.key {
                set.swap(0, 1);
                Some(set[0].1)
            } else {
                None
            }
        } else {
            None
        };
        match found {
            Some(ids) => self.append(ids, out),
            None => self.insert(piece, probe, out, encode),
        }
    }

    /// Appends a cached piece's `ids` to `out`.
    #[inline]
    fn append(&self, ids: Ids, out: &mut Vec<u32>) {
        let len = ids.len as usize;
        if len <= INLINE {
            // A fixed-size copy (no call to memcpy), then the surplus cut off.
            let end = out.len() + len;
            out.extend_from_slice(&ids.ids);
            out.truncate(end);
        } else {
            let from = ids.ids[0] as usize;
            out.extend_from_slice(&self.arena[from..from + len]);
        }
    }

    /// [`Cache::resolve`] for a piece not in the sets: a long piece, or one to encode and keep.
    #[cold]
    #[inline(never)]
    fn insert(
        &mut self,
        piece: &str,
        probe: Probe,
        out: &mut Vec<u32>,
        encode: &impl Fn(&str, &mut Vec<u32>),
    ) {
        if probe.key == 0 {
            if piece.len() > CACHED_PIECE_BYTES {
                encode(piece, out);
                return;
            }
            if let Some(&ids) = self.long.get(piece) {
                self.append(ids, out);
                return;
            }
        }
        let from = out.len();
        encode(piece, out);
        let new = &out[from..];
        if self.arena.len() + new.len() > ARENA_IDS || self.long.len() >= LONG_ENTRIES {
            self.clear();
        }
        let mut ids = Ids {
            len: u32::try_from(new.len()).expect("a piece of at most 64 bytes"),
            ids: [0; INLINE],
        };
        if new.len() <= INLINE {
            ids.ids[..new.len()].copy_from_slice(new);
        } else {
            ids.ids[0] = u32::try_from(self.arena.len()).expect("the arena is bounded");
            self.arena.extend_from_slice(new);
        }
        if probe.key != 0 {
            let set = &mut self.sets[probe.set].0;
            set[1] = set[0];
            set[0] = (probe.key, ids);
        } else {
            self.long.insert(piece.into(), ids);
        }
    }
}

/// Pieces being looked up: each is probed (its set prefetched) when pushed, and resolved
/// sixteen pieces later.
#[derive(Debug)]
pub struct Lookup<'c, 'o, 't, E> {
    cache: &'c mut Cache,
    text: &'t str,
    out: &'o mut Vec<u32>,
    encode: E,
    ring: [(&'t str, Probe); LOOKAHEAD],
    scanned: usize,
}

impl<'t, E: Fn(&str, &mut Vec<u32>)> Lookup<'_, '_, 't, E> {
    /// The next piece (a slice of the lookup's text).
    #[inline]
    pub fn push(&mut self, piece: &'t str) {
        debug_assert!(
            self.text
                .as_bytes()
                .as_ptr_range()
                .contains(&piece.as_ptr())
                || piece.is_empty()
        );
        let slot = self.scanned % LOOKAHEAD;
        if self.scanned >= LOOKAHEAD {
            let (old, probe) = self.ring[slot];
            self.cache.resolve(old, probe, self.out, &self.encode);
        }
        self.ring[slot] = (piece, self.cache.probe(self.text, piece));
        self.scanned += 1;
    }

    /// Resolves the pieces still waiting.
    #[inline]
    pub fn finish(self) {
        for n in self.scanned.saturating_sub(LOOKAHEAD)..self.scanned {
            let (piece, probe) = self.ring[n % LOOKAHEAD];
            self.cache.resolve(piece, probe, self.out, &self.encode);
        }
    }
}

/// A 64-bit hash of a packed piece (the multiply of FxHash, over both halves).
#[inline]
fn mix(key: u128) -> u64 {
    const K: u64 = 0xf135_7aea_2e62_a9c5;
    #[allow(clippy::cast_possible_truncation)] // the two halves
    let (lo, hi) = (key as u64, (key >> 64) as u64);
    (lo.wrapping_mul(K).rotate_left(26) ^ hi).wrapping_mul(K)
}

/// Asks the CPU to bring `set`'s line into cache (a hint; no effect on what the program computes).
#[inline]
fn prefetch(set: &Set) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: `_mm_prefetch` reads nothing and cannot fault; the pointer comes from a live reference.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
            std::ptr::from_ref(set).cast::<i8>(),
        );
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = set;
}

/// [`pack`] of the first `len` (below 16) bytes of a 16-byte `window`: one load and a mask.
#[inline]
fn pack_window(window: &[u8], len: usize) -> u128 {
    let mut word = [0u8; 16];
    word.copy_from_slice(window);
    let mask = (1u128 << (8 * len)) - 1;
    u128::from_le_bytes(word) & mask | (len as u128) << 120
}

/// Up to 15 bytes and their count in a `u128` (built in registers: bytes copied to the stack and read
/// back whole would stall on store forwarding).
#[inline]
fn pack(bytes: &[u8]) -> u128 {
    let load = |at: usize| {
        let mut word = [0u8; 8];
        word.copy_from_slice(&bytes[at..at + 8]);
        u64::from_le_bytes(word)
    };
    let len = bytes.len();
    let (lo, hi) = if len >= 8 {
        // Bytes 8..len: the last eight, shifted down past the ones already in `lo`.
        let tail = if len == 8 {
            0
        } else {
            load(len - 8) >> (8 * (16 - len))
        };
        (load(0), tail)
    } else {
        let mut lo = 0u64;
        for (i, &b) in bytes.iter().enumerate() {
            lo |= u64::from(b) << (8 * i);
        }
        (lo, 0)
    };
    u128::from(lo) | u128::from(hi) << 64 | (len as u128) << 120
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caches_share_the_budget_within_bounds() {
        assert_eq!(std::mem::size_of::<Set>(), 64);
        assert_eq!(set_bits(128 << 20, 2), 20);
        assert_eq!(set_bits(128 << 20, 1), 20);
        assert_eq!(set_bits(128 << 20, 64), 15);
        assert_eq!(set_bits(128 << 20, 100_000), 12);
        assert_eq!(set_bits(0, 0), 12);
    }

    #[test]
    fn packed_pieces_differ_where_the_pieces_do() {
        let pieces: Vec<Vec<u8>> = (0..16)
            .flat_map(|len| {
                [
                    vec![b'a'; len],
                    vec![0; len],
                    (0..u8::try_from(len).unwrap()).collect::<Vec<u8>>(),
                ]
            })
            .collect();
        let mut seen = std::collections::HashMap::new();
        for piece in &pieces {
            if let Some(other) = seen.insert(pack(piece), piece) {
                assert_eq!(other, piece);
            }
        }
        let mut bytes = [0u8; 15];
        bytes[..11].copy_from_slice(b"hello world");
        assert_eq!(
            pack(&bytes[..11]),
            u128::from_le_bytes(*b"hello world\0\0\0\0\x0b")
        );
    }

    #[test]
    fn a_piece_packs_the_same_from_a_window_of_the_text_around_it() {
        let text: Vec<u8> = (1..=40u8).collect();
        for start in 0..=24 {
            for len in 1..16 {
                assert_eq!(
                    pack_window(&text[start..start + 16], len),
                    pack(&text[start..start + len]),
                    "{start} {len}"
                );
            }
        }
    }
}
