//! The server's memory budgets: for job state, what a job will hold, estimated before anything is built;
//! for sessions, the buffers they keep between requests ([`SessionMemory`]).
//!
//! A job's state is what [`Stream`](crate::stream::Stream) keeps besides the mapped files (which are the
//! page cache's, shared, and not counted): in flame's order each dataset's block totals and bounded caches
//! ([`epoch::state_bytes`]) and the mixer's carries ([`Mixer::state_bytes`]); in Megatron's order
//! each dataset's document lengths and its document, sample and shuffle indices
//! ([`GptIndex::state_bytes`]), and the blend's two indices. The Megatron indices grow with the client's
//! `num_samples`, so [`state_bytes`] is computed from the datasets' sizes alone and the server refuses a
//! job that does not fit ([`crate::jobs`]) before allocating any of it. [`ByteSize`] is a byte count as
//! people write it (`8GiB`).
//!
//! A session keeps, besides the micro-batch it is computing or sending (at most 1 GiB, checked), its
//! client's shared-memory ring (at most 4 GiB) and the micro-batches it prepared ahead (`--prefetch` of
//! them). Those are reserved against one [`SessionMemory`] for all sessions before they are allocated:
//! a ring that does not fit is refused with the figures, and prefetching waits for room.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use crate::epoch;
use crate::megatron::{GptIndex, normalize, samples_per_dataset};
use crate::metrics::Metrics;
use crate::mix::Mixer;
use crate::spec::{JobSpec, Order};

/// The budget when the server is not told one: 8 GiB.
pub const DEFAULT_MAX_JOB_MEMORY: ByteSize = ByteSize(8 << 30);
/// The budget for sessions' rings and prefetched micro-batches when the server is not told one: 8 GiB.
pub const DEFAULT_MAX_SESSION_MEMORY: ByteSize = ByteSize(8 << 30);

/// The bytes all sessions' rings and prefetched micro-batches may take together
/// (`serve --max-session-memory`); what they hold is published as `flame_stream_session_bytes`.
#[derive(Debug)]
pub struct SessionMemory {
    budget_bytes: u64,
    metrics: Arc<Metrics>,
}

impl SessionMemory {
    /// A budget of `budget_bytes`, its use counted in `metrics`.
    pub fn new(budget_bytes: u64, metrics: Arc<Metrics>) -> Self {
        Self {
            budget_bytes,
            metrics,
        }
    }

    /// The budget.
    pub fn budget_bytes(&self) -> u64 {
        self.budget_bytes
    }

    /// Bytes reserved now.
    pub fn held_bytes(&self) -> u64 {
        self.metrics.session_bytes.load(Ordering::SeqCst)
    }

    /// Reserves `bytes` until the reservation is dropped; `None` when they do not fit beside what is
    /// held.
    pub fn reserve(&self, bytes: u64) -> Option<Reservation<'_>> {
        self.metrics
            .session_bytes
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |held| {
                held.checked_add(bytes)
                    .filter(|&total| total <= self.budget_bytes)
            })
            .ok()?;
        Some(Reservation {
            memory: self,
            bytes,
        })
    }
}

/// Bytes of [`SessionMemory`] held until dropped.
#[derive(Debug)]
#[must_use = "the bytes are given back when the reservation is dropped"]
pub struct Reservation<'a> {
    memory: &'a SessionMemory,
    bytes: u64,
}

impl Reservation<'_> {
    /// Gives back what is reserved beyond `bytes` (a micro-batch smaller than its bound).
    pub fn shrink_to(&mut self, bytes: u64) {
        let excess = self.bytes.saturating_sub(bytes);
        self.memory
            .metrics
            .session_bytes
            .fetch_sub(excess, Ordering::SeqCst);
        self.bytes -= excess;
    }
}

impl Drop for Reservation<'_> {
    fn drop(&mut self) {
        self.memory
            .metrics
            .session_bytes
            .fetch_sub(self.bytes, Ordering::SeqCst);
    }
}

/// Bytes of state the job `spec` will hold once planned, over datasets of `documents[i]` documents each
/// (in the job's split). `tokens(i)`, the tokens of dataset `i`'s split, is asked for only in Megatron's
/// order, where the number of epochs depends on it. Saturates at `u64::MAX`; never panics.
pub fn state_bytes(spec: &JobSpec, documents: &[u64], tokens: impl Fn(usize) -> u64) -> u64 {
    let seq_len = u64::from(spec.seq_len);
    let total: u128 = match spec.order {
        Order::Flame => {
            let plans: u128 = documents
                .iter()
                .map(|&d| u128::from(epoch::state_bytes(d)))
                .sum();
            plans + u128::from(Mixer::state_bytes(documents.len()))
        }
        Order::Megatron => {
            let num_samples = spec.num_samples.unwrap_or(0);
            let lengths: u128 = documents.iter().map(|&d| u128::from(d) * 4).sum();
            let indices: u128 = if documents.len() == 1 {
                u128::from(GptIndex::state_bytes(
                    documents[0],
                    tokens(0),
                    num_samples,
                    seq_len,
                ))
            } else {
                // As `MegatronOrder::build`: each dataset is built for its share plus the surplus.
                let weights: Vec<f64> = spec.datasets.iter().map(|d| d.weight).collect();
                let sizes = samples_per_dataset(&normalize(&weights), num_samples);
                let datasets: u128 = documents
                    .iter()
                    .zip(&sizes)
                    .enumerate()
                    .map(|(i, (&d, &(_, buffer)))| {
                        u128::from(GptIndex::state_bytes(d, tokens(i), buffer, seq_len))
                    })
                    .sum();
                let blend: u128 = sizes.iter().map(|&(target, _)| u128::from(target)).sum();
                // The blend: a u16 dataset and a u64 sample per sample.
                datasets + blend * 10
            };
            lengths + indices
        }
    };
    u64::try_from(total).unwrap_or(u64::MAX)
}

/// A number of bytes, written as people write it: `8GiB`, `512 MiB`, `1.5G`, `1000000`.
///
/// `K`, `M`, `G`, `T` (with or without `iB`) are powers of 1024; `KB`, `MB`, `GB`, `TB` powers of 1000;
/// case does not matter. Displayed in the largest binary unit that keeps it at or above 1.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct ByteSize(pub u64);

impl std::str::FromStr for ByteSize {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let trimmed = text.trim();
        let split = trimmed
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(trimmed.len());
        let (number, unit) = trimmed.split_at(split);
        let unit_bytes: u64 = match unit.trim().to_ascii_lowercase().as_str() {
            "" | "b" => 1,
            "k" | "kib" => 1 << 10,
            "m" | "mib" => 1 << 20,
            "g" | "gib" => 1 << 30,
            "t" | "tib" => 1 << 40,
            "kb" => 1_000,
            "mb" => 1_000_000,
            "gb" => 1_000_000_000,
            "tb" => 1_000_000_000_000,
            _ => {
                return Err(format!(
                    "{text:?}: unknown unit {unit:?} (use B, KiB, MiB, GiB, TiB, KB, MB, GB or TB)"
                ));
            }
        };
        let bad = || format!("{text:?} is not a byte count such as 8GiB or 1000000");
        if let Ok(whole) = number.parse::<u64>() {
            return whole.checked_mul(unit_bytes).map(Self).ok_or_else(bad);
        }
        let value = number.parse::<f64>().map_err(|_| bad())?;
        #[allow(clippy::cast_precision_loss)] // a unit is at most 2^40, exact in f64
        let bytes = (value * unit_bytes as f64).round();
        #[allow(clippy::cast_precision_loss)]
        if !(bytes.is_finite() && bytes >= 0.0 && bytes < u64::MAX as f64) {
            return Err(bad());
        }
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // checked just above
        Ok(Self(bytes as u64))
    }
}

impl std::fmt::Display for ByteSize {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut unit = 0;
        while unit + 1 < units.len() && self.0 >> (10 * (unit + 1)) > 0 {
            unit += 1;
        }
        let scale = 1u64 << (10 * unit);
        if self.0.is_multiple_of(scale) {
            write!(f, "{} {}", self.0 / scale, units[unit])
        } else {
            #[allow(clippy::cast_precision_loss)] // shown to one decimal
            let value = self.0 as f64 / scale as f64;
            write!(f, "{value:.1} {}", units[unit])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::megatron::MegatronOrder;

    /// Bytes the vectors of `index` hold.
    fn held(index: &GptIndex) -> u128 {
        (index.document_index.capacity() * 4
            + index.sample_index.capacity() * std::mem::size_of::<(u64, u32)>()
            + index.shuffle_index.capacity() * 8) as u128
    }

    #[test]
    fn the_megatron_estimate_is_what_the_indices_hold() {
        // One epoch, several epochs, and a short final epoch shuffled apart.
        let lengths: Vec<u32> = (0..500).map(|d| d % 37).collect();
        let tokens: u64 = lengths.iter().map(|&l| u64::from(l)).sum();
        for num_samples in [10, 500, 3000, 2600] {
            let index = GptIndex::build(&lengths, Some(num_samples), 16, 3).unwrap();
            assert_eq!(
                u128::from(GptIndex::state_bytes(500, tokens, num_samples, 16)),
                held(&index),
                "{num_samples} samples"
            );
        }
        // A blend adds each dataset's lengths and indices and the blend's 10 bytes per sample.
        let lengths = [lengths.clone(), lengths[..300].to_vec()];
        let tokens = |i: usize| lengths[i].iter().map(|&l| u64::from(l)).sum::<u64>();
        let blended = JobSpec::for_test(1, Order::Megatron, &[0.7, 0.3], Some(400));
        let estimate = state_bytes(&blended, &[500, 300], tokens);
        let seq_len = u64::from(blended.seq_len);
        MegatronOrder::build(&lengths, &[0.7, 0.3], 400, seq_len, 1).unwrap();
        let sizes = samples_per_dataset(&normalize(&[0.7, 0.3]), 400);
        let indices: u128 = (0..2)
            .map(|i| held(&GptIndex::build(&lengths[i], Some(sizes[i].1), seq_len, 1).unwrap()))
            .sum();
        let blend: u128 = sizes.iter().map(|s| u128::from(s.0)).sum::<u128>() * 10;
        assert_eq!(u128::from(estimate), 800 * 4 + indices + blend);
    }

    #[test]
    fn the_estimate_grows_with_num_samples_and_saturates_instead_of_overflowing() {
        let small = state_bytes(
            &JobSpec::for_test(1, Order::Megatron, &[1.0], Some(1_000)),
            &[100],
            |_| 5_000,
        );
        let large = state_bytes(
            &JobSpec::for_test(1, Order::Megatron, &[1.0], Some(1_000_000)),
            &[100],
            |_| 5_000,
        );
        assert!(
            large > 1000 * small / 2 && large > 24_000_000,
            "{small} {large}"
        );
        let huge = JobSpec::for_test(1, Order::Megatron, &[1.0, 2.0], Some(u64::MAX));
        assert_eq!(state_bytes(&huge, &[u64::MAX, 1], |_| 2), u64::MAX);
        // Flame's order does not depend on the samples, only on the documents.
        let flame = state_bytes(
            &JobSpec::for_test(1, Order::Flame, &[1.0], Some(u64::MAX)),
            &[10_000_000],
            |_| unreachable!("flame's order needs no token counts"),
        );
        assert!(flame < 64 << 20, "{flame}");
    }

    #[test]
    fn session_memory_is_reserved_within_its_budget_and_given_back_when_dropped() {
        let memory = SessionMemory::new(100, Arc::default());
        let mut frame = memory.reserve(60).unwrap();
        assert!(memory.reserve(41).is_none(), "60 + 41 > 100");
        frame.shrink_to(20);
        let ring = memory.reserve(80).unwrap();
        assert_eq!(memory.held_bytes(), 100);
        assert!(memory.reserve(1).is_none());
        drop(frame);
        assert_eq!(memory.held_bytes(), 80);
        drop(ring);
        assert_eq!(memory.held_bytes(), 0);
        assert!(memory.reserve(u64::MAX).is_none(), "no overflow");
    }

    #[test]
    fn byte_sizes_parse_as_people_write_them_and_display_in_binary_units() {
        for (text, bytes) in [
            ("8GiB", 8 << 30),
            ("8 GiB", 8 << 30),
            ("8g", 8 << 30),
            ("512MiB", 512 << 20),
            ("1.5G", 3 << 29),
            ("2GB", 2_000_000_000),
            ("1000000", 1_000_000),
            ("0", 0),
        ] {
            assert_eq!(text.parse::<ByteSize>(), Ok(ByteSize(bytes)), "{text}");
        }
        for bad in ["", "GiB", "8 parsecs", "-1G", "1.2.3G", "99999999999T"] {
            assert!(bad.parse::<ByteSize>().is_err(), "{bad}");
        }
        assert_eq!(ByteSize(8 << 30).to_string(), "8 GiB");
        assert_eq!(ByteSize(3 << 29).to_string(), "1.5 GiB");
        assert_eq!(ByteSize(1000).to_string(), "1000 B");
        assert_eq!(ByteSize(u64::MAX).to_string(), "16.0 EiB");
    }
}
