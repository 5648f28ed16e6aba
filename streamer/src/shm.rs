//! Shared memory for clients on the server's host: a ring of slots per client, zero-copy reads.
//!
//! A client on a Unix socket sends `ShmOpen { slots }`. The server creates the ring as an anonymous
//! `memfd` (sealed against resizing), maps it read-write, and passes the descriptor back with
//! `ShmReady` over `SCM_RIGHTS`; the client maps it read-only. Nothing has a name in `/dev/shm`, so
//! nothing stale survives a crash of either side: the memory goes when the last descriptor and mapping
//! go. From then on a `Request` is answered by `Slot { slot, bytes }`: the micro-batch is in that slot.
//! The slot is the client's until it sends `Release { slot }`; the server writes only free slots and
//! refuses a request when the client holds them all.
//!
//! A slot holds one micro-batch, little-endian, every array aligned to its element:
//!
//! | offset | field |
//! |---|---|
//! | 0 | magic `FLSB` |
//! | 4 | samples `B` (`u32`) |
//! | 8 | step (`u64`) |
//! | 16 | micro-step (`u64`) |
//! | 24 | tokens per sample `T` (`u32`) |
//! | 28 | `cu_seqlens` values in all (`u32`) |
//! | 32 | per sample: global index `u64`, dataset `u32`, `cu_seqlens` count `u32` |
//! | 32 + 16·B | tokens, `u32` `[B, T]`, row-major |
//! | then | every sample's `cu_seqlens` (`u32`), one after the other |

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use memmap2::{Mmap, MmapMut, MmapOptions};

use crate::stream::BatchBuffers;

/// The first bytes of a slot.
pub const SLOT_MAGIC: [u8; 4] = *b"FLSB";
const HEADER: usize = 32;
const ENTRY: usize = 16;
/// Most slots a ring may have.
pub const MAX_SLOTS: u32 = 64;

/// Bytes one slot needs for `samples` samples of `tokens_per_sample` tokens (with the most
/// `cu_seqlens` a sample can have: one per token, plus one), rounded up to whole pages.
pub fn slot_bytes(samples: u32, tokens_per_sample: u32) -> u64 {
    let (b, t) = (u64::from(samples), u64::from(tokens_per_sample));
    let bytes = HEADER as u64 + b * (ENTRY as u64 + 4 * t + 4 * (t + 1));
    bytes.div_ceil(4096) * 4096
}

/// Bytes the slot image of `batch` takes.
pub fn image_bytes(batch: &BatchBuffers) -> usize {
    HEADER + ENTRY * batch.samples.len() + 4 * (batch.tokens.len() + batch.cu_seqlens.len())
}

/// Writes the slot image of a micro-batch at the start of `out`; returns its length.
///
/// # Panics
/// If `out` is shorter than [`image_bytes`].
pub fn encode_slot(step: u64, micro_step: u64, batch: &BatchBuffers, out: &mut [u8]) -> usize {
    let u32_of = |n: usize| u32::try_from(n).expect("slot fields fit u32");
    let mut at = 0;
    let mut put = |bytes: &[u8]| {
        out[at..at + bytes.len()].copy_from_slice(bytes);
        at += bytes.len();
    };
    put(&SLOT_MAGIC);
    put(&u32_of(batch.samples.len()).to_le_bytes());
    put(&step.to_le_bytes());
    put(&micro_step.to_le_bytes());
    put(&u32_of(batch.tokens_per_sample()).to_le_bytes());
    put(&u32_of(batch.cu_seqlens.len()).to_le_bytes());
    for &(index, dataset, cu_count) in &batch.samples {
        put(&index.to_le_bytes());
        put(&dataset.to_le_bytes());
        put(&cu_count.to_le_bytes());
    }
    put(bytemuck::cast_slice(&batch.tokens));
    put(bytemuck::cast_slice(&batch.cu_seqlens));
    at
}

/// A micro-batch read in place from a slot (or any buffer holding a slot image), checked on creation.
#[derive(Debug)]
pub struct SlotBatch<'a> {
    bytes: &'a [u8],
    samples: usize,
    tokens_per_sample: usize,
    cu_starts: Vec<usize>,
}

fn field<const N: usize>(bytes: &[u8], at: usize) -> [u8; N] {
    bytes[at..at + N].try_into().expect("checked length")
}

impl<'a> SlotBatch<'a> {
    /// Checks `bytes` as a slot image: magic, and every count against the bytes present.
    ///
    /// # Errors
    /// What is wrong, with its offset.
    pub fn parse(bytes: &'a [u8]) -> Result<Self, String> {
        if bytes.len() < HEADER || bytes[..4] != SLOT_MAGIC {
            return Err("slot: no FLSB header at offset 0".into());
        }
        if !(bytes.as_ptr() as usize).is_multiple_of(4) {
            return Err("slot: not 4-byte aligned".into());
        }
        let samples = u32::from_le_bytes(field(bytes, 4)) as usize;
        let tokens_per_sample = u32::from_le_bytes(field(bytes, 24)) as usize;
        let cu_total = u32::from_le_bytes(field(bytes, 28)) as usize;
        let need = samples
            .checked_mul(ENTRY + 4 * tokens_per_sample)
            .and_then(|n| n.checked_add(HEADER + 4 * cu_total))
            .ok_or("slot: counts overflow")?;
        if need > bytes.len() {
            return Err(format!(
                "slot: {samples} samples of {tokens_per_sample} tokens and {cu_total} cu_seqlens need {need} bytes, the slot holds {}",
                bytes.len()
            ));
        }
        let mut cu_starts = Vec::with_capacity(samples + 1);
        let mut at = HEADER + samples * (ENTRY + 4 * tokens_per_sample);
        cu_starts.push(at);
        for i in 0..samples {
            let count = u32::from_le_bytes(field(bytes, HEADER + i * ENTRY + 12)) as usize;
            at += 4 * count;
            cu_starts.push(at);
        }
        if at != HEADER + samples * (ENTRY + 4 * tokens_per_sample) + 4 * cu_total {
            return Err(format!(
                "slot: the samples' cu_seqlens counts do not add up to {cu_total}"
            ));
        }
        Ok(Self {
            bytes,
            samples,
            tokens_per_sample,
            cu_starts,
        })
    }

    /// Optimizer step.
    pub fn step(&self) -> u64 {
        u64::from_le_bytes(field(self.bytes, 8))
    }

    /// Micro-step inside the step.
    pub fn micro_step(&self) -> u64 {
        u64::from_le_bytes(field(self.bytes, 16))
    }

    /// Samples in the micro-batch.
    pub fn len(&self) -> usize {
        self.samples
    }

    /// Whether it holds no sample.
    pub fn is_empty(&self) -> bool {
        self.samples == 0
    }

    /// Tokens per sample.
    pub fn tokens_per_sample(&self) -> usize {
        self.tokens_per_sample
    }

    /// All tokens, `[B, T]` row-major, in place.
    pub fn tokens(&self) -> &'a [u32] {
        let start = HEADER + self.samples * ENTRY;
        bytemuck::cast_slice(&self.bytes[start..start + 4 * self.samples * self.tokens_per_sample])
    }

    /// Sample `i`'s global index.
    pub fn index(&self, i: usize) -> u64 {
        u64::from_le_bytes(field(self.bytes, HEADER + i * ENTRY))
    }

    /// Sample `i`'s dataset.
    pub fn dataset(&self, i: usize) -> u32 {
        u32::from_le_bytes(field(self.bytes, HEADER + i * ENTRY + 8))
    }

    /// Sample `i`'s tokens, in place.
    pub fn sample_tokens(&self, i: usize) -> &'a [u32] {
        &self.tokens()[i * self.tokens_per_sample..(i + 1) * self.tokens_per_sample]
    }

    /// The samples, copied out of the slot.
    pub fn to_samples(&self) -> Vec<crate::protocol::WireSample> {
        (0..self.samples)
            .map(|i| crate::protocol::WireSample {
                dataset: self.dataset(i),
                index: self.index(i),
                cu_seqlens: self.cu_seqlens(i).to_vec(),
                tokens: self.sample_tokens(i).to_vec(),
            })
            .collect()
    }

    /// Sample `i`'s `cu_seqlens`, in place.
    pub fn cu_seqlens(&self, i: usize) -> &'a [u32] {
        bytemuck::cast_slice(&self.bytes[self.cu_starts[i]..self.cu_starts[i + 1]])
    }
}

/// Who a slot belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum SlotState {
    /// The server may write it.
    Free,
    /// Written ahead by the server, not yet handed to the client.
    Prepared,
    /// The client's, until it releases it.
    Held,
}

/// The server's side of one client's ring.
pub struct Ring {
    file: File,
    map: MmapMut,
    slot_bytes: u64,
    states: Vec<SlotState>,
}

impl std::fmt::Debug for Ring {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ring")
            .field("slot_bytes", &self.slot_bytes)
            .field("states", &self.states)
            .finish_non_exhaustive()
    }
}

impl Ring {
    /// Creates an anonymous ring of `slots` slots of `slot_bytes` bytes, sealed against resizing.
    ///
    /// # Errors
    /// When the kernel refuses the memory.
    pub fn create(slots: u32, slot_bytes: u64) -> std::io::Result<Self> {
        use rustix::fs::{MemfdFlags, SealFlags};
        let fd = rustix::fs::memfd_create(
            "flame-stream-ring",
            MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
        )?;
        let file = File::from(fd);
        file.set_len(u64::from(slots) * slot_bytes)?;
        rustix::fs::fcntl_add_seals(&file, SealFlags::SHRINK | SealFlags::GROW | SealFlags::SEAL)?;
        // SAFETY: the memfd is ours alone until it is sent; clients map it read-only, and the size is
        // sealed, so the mapping can neither shrink under us nor be written by anyone else.
        let map = unsafe { MmapOptions::new().map_mut(&file)? };
        Ok(Self {
            file,
            map,
            slot_bytes,
            states: vec![SlotState::Free; slots as usize],
        })
    }

    /// The descriptor to send to the client.
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// Slots in the ring.
    pub fn slots(&self) -> u32 {
        u32::try_from(self.states.len()).expect("at most MAX_SLOTS")
    }

    /// Bytes per slot.
    pub fn slot_bytes(&self) -> u64 {
        self.slot_bytes
    }

    /// Writes a micro-batch into a free slot, prepared for the client but not yet its; returns the slot
    /// and the bytes written, or `None` when no slot is free.
    ///
    /// # Errors
    /// When the batch is larger than a slot.
    pub fn prepare(
        &mut self,
        (step, micro_step): (u64, u64),
        batch: &BatchBuffers,
    ) -> Result<Option<(u32, u64)>, String> {
        let bytes = image_bytes(batch);
        if bytes as u64 > self.slot_bytes {
            return Err(format!(
                "a batch of {bytes} bytes does not fit a slot of {}",
                self.slot_bytes
            ));
        }
        let Some(slot) = self.states.iter().position(|s| *s == SlotState::Free) else {
            return Ok(None);
        };
        #[allow(clippy::cast_possible_truncation)] // the ring is mapped, so it fits usize
        let start = slot * self.slot_bytes as usize;
        encode_slot(step, micro_step, batch, &mut self.map[start..start + bytes]);
        self.states[slot] = SlotState::Prepared;
        Ok(Some((
            u32::try_from(slot).expect("at most MAX_SLOTS"),
            bytes as u64,
        )))
    }

    /// Hands a prepared slot to the client, which holds it until it releases it.
    pub fn hand_over(&mut self, slot: u32) {
        let state = &mut self.states[slot as usize];
        assert_eq!(
            *state,
            SlotState::Prepared,
            "only a prepared slot is handed over"
        );
        *state = SlotState::Held;
    }

    /// Frees a prepared slot the client did not ask for after all.
    pub fn discard(&mut self, slot: u32) {
        let state = &mut self.states[slot as usize];
        if *state == SlotState::Prepared {
            *state = SlotState::Free;
        }
    }

    /// Whether the client holds every slot.
    pub fn all_held(&self) -> bool {
        self.states.iter().all(|s| *s == SlotState::Held)
    }

    /// The client gives `slot` back.
    ///
    /// # Errors
    /// A slot the client does not hold.
    pub fn release(&mut self, slot: u32) -> Result<(), String> {
        match self.states.get_mut(slot as usize) {
            Some(state) if *state == SlotState::Held => {
                *state = SlotState::Free;
                Ok(())
            }
            _ => Err(format!(
                "release of slot {slot}, which the client does not hold"
            )),
        }
    }
}

/// The client's read-only view of its ring.
#[derive(Debug)]
pub struct RingMap {
    map: Mmap,
    slots: u32,
    slot_bytes: u64,
}

impl RingMap {
    /// Maps the ring the server sent, read-only, after checking its size.
    ///
    /// # Errors
    /// A descriptor that is not a ring of that size.
    pub fn open(fd: OwnedFd, slots: u32, slot_bytes: u64) -> std::io::Result<Self> {
        let file = File::from(fd);
        let len = file.metadata()?.len();
        if len != u64::from(slots) * slot_bytes {
            return Err(std::io::Error::other(format!(
                "shared ring of {len} bytes is not {slots} slots of {slot_bytes}"
            )));
        }
        // SAFETY: the server sealed the size, and writes only slots the client does not hold; slots are
        // read (through `slot`) only while held.
        let map = unsafe { MmapOptions::new().map(&file)? };
        Ok(Self {
            map,
            slots,
            slot_bytes,
        })
    }

    /// The micro-batch in `slot` (its first `bytes` bytes).
    ///
    /// # Errors
    /// A slot or size outside the ring, or a slot image that does not check.
    pub fn slot(&self, slot: u32, bytes: u64) -> Result<SlotBatch<'_>, String> {
        if slot >= self.slots || bytes > self.slot_bytes {
            return Err(format!(
                "slot {slot} of {bytes} bytes is outside the ring ({} slots of {})",
                self.slots, self.slot_bytes
            ));
        }
        #[allow(clippy::cast_possible_truncation)] // mapped, so it fits usize
        let start = slot as usize * self.slot_bytes as usize;
        #[allow(clippy::cast_possible_truncation)]
        SlotBatch::parse(&self.map[start..start + bytes as usize])
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)] // a failed unwrap is a failed test
mod tests {
    use super::*;

    fn buffers(samples: &[(u64, Vec<u32>, Vec<u32>)]) -> BatchBuffers {
        let mut out = BatchBuffers::default();
        for (index, tokens, cu) in samples {
            out.tokens.extend(tokens);
            out.cu_seqlens.extend(cu);
            out.samples.push((
                *index,
                u32::try_from(*index % 3).unwrap(),
                u32::try_from(cu.len()).unwrap(),
            ));
        }
        out
    }

    #[test]
    fn a_slot_image_reads_back_in_place() {
        let samples = buffers(&[
            (7, vec![1, 2, 3, 4], vec![0, 1, 4]),
            (9, vec![5, 6, 7, 8], vec![0, 4]),
        ]);
        let ring_bytes = slot_bytes(2, 4);
        let mut ring = Ring::create(2, ring_bytes).unwrap();
        let (slot, bytes) = ring.prepare((3, 1), &samples).unwrap().unwrap();
        ring.hand_over(slot);
        let fd = ring.fd().try_clone_to_owned().unwrap();
        let map = RingMap::open(fd, 2, ring_bytes).unwrap();
        let batch = map.slot(slot, bytes).unwrap();
        assert_eq!((batch.step(), batch.micro_step(), batch.len()), (3, 1, 2));
        assert_eq!(batch.tokens(), [1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(batch.sample_tokens(1), [5, 6, 7, 8]);
        assert_eq!((batch.index(1), batch.dataset(1)), (9, 0));
        assert_eq!(batch.cu_seqlens(0), [0, 1, 4]);
        assert_eq!(batch.cu_seqlens(1), [0, 4]);
    }

    #[test]
    fn held_slots_are_never_written_and_bad_releases_are_refused() {
        let batch = buffers(&[(1, vec![1, 2], vec![0, 2])]);
        let mut ring = Ring::create(2, 4096).unwrap();
        let (a, _) = ring.prepare((0, 0), &batch).unwrap().unwrap();
        let (b, _) = ring.prepare((0, 1), &batch).unwrap().unwrap();
        assert_eq!((a, b), (0, 1));
        assert_eq!(ring.prepare((0, 2), &batch).unwrap(), None);
        ring.hand_over(a);
        assert!(ring.release(b).is_err(), "prepared, not held");
        ring.discard(b);
        let (c, _) = ring.prepare((0, 2), &batch).unwrap().unwrap();
        ring.hand_over(c);
        assert!(ring.all_held());
        ring.release(0).unwrap();
        assert!(ring.release(0).is_err());
        assert!(ring.release(5).is_err());
        let big = buffers(&[(1, vec![0; 2000], vec![0, 2000])]);
        assert!(ring.prepare((0, 3), &big).is_err());
    }

    #[test]
    fn damaged_slot_images_are_refused() {
        let samples = buffers(&[(1, vec![1, 2], vec![0, 2])]);
        let mut image = vec![0; image_bytes(&samples)];
        encode_slot(0, 0, &samples, &mut image);
        // An 8-aligned copy to parse from.
        let aligned = |bytes: &[u8]| {
            let mut words = vec![0u64; bytes.len().div_ceil(8)];
            bytemuck::cast_slice_mut::<u64, u8>(&mut words)[..bytes.len()].copy_from_slice(bytes);
            words
        };
        let words = aligned(&image);
        let whole = &bytemuck::cast_slice::<u64, u8>(&words)[..image.len()];
        assert!(SlotBatch::parse(whole).is_ok());
        assert!(SlotBatch::parse(&whole[..whole.len() - 1]).is_err());
        for (at, value) in [(0usize, 0u8), (4, 200), (24, 255), (28, 9), (44, 7)] {
            let mut bad = image.clone();
            bad[at] = value;
            let words = aligned(&bad);
            let bytes = &bytemuck::cast_slice::<u64, u8>(&words)[..bad.len()];
            assert!(SlotBatch::parse(bytes).is_err(), "byte {at} = {value}");
        }
    }
}
