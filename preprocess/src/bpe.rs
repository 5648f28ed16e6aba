//! What the fast encoders ([`crate::spm_bpe`], [`crate::byte_bpe`]) share: the merge table, BPE over
//! one piece as the `tokenizers` crate runs it, and the per-thread cache of piece → ids.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use rustc_hash::FxHashMap as HashMap;

/// Pair of ids → (rank, merged id).
#[derive(Debug)]
pub struct Merges(HashMap<(u32, u32), (u32, u32)>);

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
        Some(Self(map))
    }

    /// The pairs merged.
    pub fn pairs(&self) -> impl Iterator<Item = (u32, u32)> + '_ {
        self.0.keys().copied()
    }

    #[inline]
    fn get(&self, a: u32, b: u32) -> Option<(u32, u32)> {
        self.0.get(&(a, b)).copied()
    }

    /// BPE over `symbols` as `tokenizers`' `Word::merge_all`: the pair of lowest rank, leftmost first,
    /// until none is left. Appends the result to `out`.
    pub fn merge_all(&self, mut symbols: Vec<u32>, out: &mut Vec<u32>) {
        let n = symbols.len();
        if n < 2 {
            out.extend_from_slice(&symbols);
            return;
        }
        if n <= SHORT {
            self.merge_short(&mut symbols);
            out.extend_from_slice(&symbols);
            return;
        }
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
const SHORT: usize = 48;

impl Merges {
    /// [`Merges::merge_all`] for a short piece: the ranks of adjacent pairs in an array, the lowest
    /// (leftmost on a tie) merged, and the two pairs around it looked up again.
    fn merge_short(&self, symbols: &mut Vec<u32>) {
        let none = (u32::MAX, 0);
        let mut ranks: Vec<(u32, u32)> = symbols
            .windows(2)
            .map(|pair| self.get(pair[0], pair[1]).unwrap_or(none))
            .collect();
        loop {
            let Some((i, &(rank, merged))) = ranks
                .iter()
                .enumerate()
                .min_by_key(|&(i, &(rank, _))| (rank, i))
            else {
                return;
            };
            if rank == u32::MAX {
                return;
            }
            symbols[i] = merged;
            symbols.remove(i + 1);
            ranks.remove(i);
            if i < ranks.len() {
                ranks[i] = self.get(symbols[i], symbols[i + 1]).unwrap_or(none);
            }
            if i > 0 {
                ranks[i - 1] = self.get(symbols[i - 1], symbols[i]).unwrap_or(none);
            }
        }
    }
}

/// Piece → ids, per thread, bounded. Pieces of up to 15 bytes (nearly all) are keyed by their bytes
/// packed in a `u128`, and their ids are kept inline or in an arena, so a lookup hashes and compares
/// integers and the cache allocates nothing per entry.
#[derive(Debug, Default)]
pub struct Cache {
    short: HashMap<u128, Ids>,
    long: HashMap<Box<str>, Ids>,
    /// Ids of entries with more than [`INLINE`].
    arena: Vec<u32>,
    owner: u64,
}

const INLINE: usize = 3;

/// A cached piece's ids: inline, or `len` ids from `ids[0]` in the arena.
#[derive(Clone, Copy, Debug)]
struct Ids {
    len: u32,
    ids: [u32; INLINE],
}

/// Pieces longer than this (bytes) are not cached.
const CACHED_PIECE_BYTES: usize = 64;
/// Entries kept per cache; it is emptied when full.
const CACHE_ENTRIES: usize = 1 << 20;

impl Cache {
    /// Empties the cache if it was filled for another encoder than `owner` (a number unique to each).
    pub fn belong_to(&mut self, owner: u64) {
        if self.owner != owner {
            self.clear();
            self.owner = owner;
        }
    }

    fn clear(&mut self) {
        self.short.clear();
        self.long.clear();
        self.arena.clear();
    }

    /// Appends the ids of `piece` to `out`: from the cache, or from `encode` (which appends them), then
    /// kept.
    #[inline]
    pub fn encode(&mut self, piece: &str, out: &mut Vec<u32>, encode: impl FnOnce(&mut Vec<u32>)) {
        let bytes = piece.as_bytes();
        if bytes.len() > CACHED_PIECE_BYTES {
            encode(out);
            return;
        }
        let key = (bytes.len() < 16).then(|| pack(bytes));
        let found = match key {
            Some(key) => self.short.get(&key),
            None => self.long.get(piece),
        };
        if let Some(ids) = found {
            let len = ids.len as usize;
            if len <= INLINE {
                out.extend_from_slice(&ids.ids[..len]);
            } else {
                let from = ids.ids[0] as usize;
                out.extend_from_slice(&self.arena[from..from + len]);
            }
            return;
        }
        let from = out.len();
        encode(out);
        if self.short.len() + self.long.len() >= CACHE_ENTRIES {
            self.clear();
        }
        let new = &out[from..];
        let mut ids = Ids {
            len: u32::try_from(new.len()).expect("a piece of at most 64 bytes"),
            ids: [0; INLINE],
        };
        if new.len() <= INLINE {
            ids.ids[..new.len()].copy_from_slice(new);
        } else {
            ids.ids[0] =
                u32::try_from(self.arena.len()).expect("the arena is bounded by the entries");
            self.arena.extend_from_slice(new);
        }
        match key {
            Some(key) => self.short.insert(key, ids),
            None => self.long.insert(piece.into(), ids),
        };
    }
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
}
