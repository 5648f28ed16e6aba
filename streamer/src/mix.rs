//! Mixing datasets per token, exactly: which dataset each window of a global batch comes from.
//!
//! Every window holds `seq_len` tokens, so a share of windows is a share of tokens. Dataset `d` with
//! normalised weight `w_d` gets, in **every** global batch of `G` windows, either `floor(w_d·G)` or
//! `ceil(w_d·G)` windows — within one window of its weight. Which datasets get the extra window in
//! batch `b` is decided by a deficit carried from batch to batch (in exact integer arithmetic: quotas
//! are fixed-point with 16 fractional bits, so weights are honoured to 1/65536 of a window per batch),
//! so over many batches every share converges to its weight with an error below one window. Inside a
//! batch the windows of all datasets are interleaved by a keyed permutation.
//!
//! The carry makes the schedule sequential in `b`, but it is **periodic**: over [`PERIOD`] = 2^16
//! batches each dataset's fractional quota adds up to whole windows, and the carry, always within one
//! window, is back to zero. So batch `b` is batch `b mod PERIOD` shifted by whole periods, and
//! [`Mixer`] keeps the carry every [`CHECKPOINT_EVERY`] batches of one period (at most 64 of them): any
//! batch, at any step, costs fewer than 1024 replayed integer steps. Resume is O(1).

use std::collections::VecDeque;
use std::sync::{Mutex, PoisonError};

use flame_formats::permutation::{Permutation, splitmix64};

/// Batches between stored carries.
pub const CHECKPOINT_EVERY: u64 = 1024;

/// Batches after which the schedule repeats (shifted by whole windows); also the fixed-point unit of a
/// window in the quotas.
pub const PERIOD: u64 = 1 << 16;

const ONE: i128 = PERIOD as i128;

/// State after some batches: the carry and each dataset's windows so far.
#[derive(Clone, Debug)]
struct Carry {
    owed: Vec<i128>,
    windows: Vec<u64>,
}

/// A batch's number, counts, windows before it, and the carry after it.
type LastBatch = (u64, Vec<u64>, Vec<u64>, Carry);

/// Batches remembered: ranks of one job (and clients of one rank) ask for nearby batches, each of them
/// one step from a remembered one.
const BATCHES_REMEMBERED: usize = 256;

fn remember(last: &mut VecDeque<LastBatch>, entry: LastBatch) {
    if last.len() == BATCHES_REMEMBERED {
        last.pop_front();
    }
    last.push_back(entry);
}

/// The mixing schedule of a job.
#[derive(Debug)]
pub struct Mixer {
    batch: u64,
    seed: u64,
    /// `floor(w_d·G)` and the fractional part (in units of 2^-32) per dataset.
    base: Vec<u64>,
    fraction: Vec<i128>,
    extra: usize,
    /// Shared by every session of a job, like `last`; a lock poisoned by a panicking session is taken
    /// over, since only whole carries are ever pushed.
    checkpoints: Mutex<Vec<Carry>>,
    /// The last batches asked for: number, counts, windows before, and the carry after each, so that
    /// reading a batch again or the next one costs one step.
    last: Mutex<VecDeque<LastBatch>>,
    /// Windows of each dataset in one period.
    per_period: Vec<u64>,
}

/// Where a global sample comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Draw {
    /// Index of the dataset in the job.
    pub dataset: usize,
    /// How many windows of that dataset came before this one (its dataset-local window index).
    pub window: u64,
}

impl Mixer {
    /// Bytes a mixer of `datasets` holds at most: per dataset its quota, the carries of one period's
    /// checkpoints and of the batches remembered (the server's memory budget, [`crate::budget`]).
    pub fn state_bytes(datasets: usize) -> u64 {
        // A carry is an i128 and a u64 per dataset; a remembered batch adds two u64 per dataset.
        let (carry, remembered) = (16 + 8, 16 + 8 + 8 + 8);
        let per_dataset = 8
            + 16
            + 8
            + (PERIOD / CHECKPOINT_EVERY) * carry
            + BATCHES_REMEMBERED as u64 * remembered;
        datasets as u64 * per_dataset
    }

    /// The schedule for `weights` (positive, any scale) and global batches of `batch` windows.
    pub fn new(weights: &[f64], batch: u32, seed: u64) -> Self {
        let total: f64 = weights.iter().sum();
        let batch_units = i128::from(batch) * ONE;
        #[allow(clippy::cast_possible_truncation, clippy::cast_precision_loss)]
        let mut quota: Vec<i128> = weights
            .iter()
            .map(|w| ((w / total) * batch_units as f64).floor() as i128)
            .collect();
        // Hand the rounding leftover to the first datasets so quotas sum to the batch exactly.
        let mut leftover = batch_units - quota.iter().sum::<i128>();
        let n = quota.len();
        for i in 0..2 * n {
            if leftover == 0 {
                break;
            }
            let step = leftover.signum();
            quota[i % n] += step;
            leftover -= step;
        }
        let base: Vec<u64> = quota
            .iter()
            .map(|q| u64::try_from(q / ONE).expect("non-negative"))
            .collect();
        let fraction: Vec<i128> = quota.iter().map(|q| q % ONE).collect();
        let extra = usize::try_from(u64::from(batch) - base.iter().sum::<u64>()).expect("small");
        let start = Carry {
            owed: vec![0; weights.len()],
            windows: vec![0; weights.len()],
        };
        Self {
            batch: u64::from(batch),
            seed,
            base,
            fraction,
            extra,
            checkpoints: Mutex::new(vec![start]),
            last: Mutex::new(VecDeque::new()),
            per_period: quota
                .iter()
                .map(|&q| u64::try_from(q).expect("non-negative"))
                .collect(),
        }
    }

    /// Windows per dataset in batch `b` after `carry`; advances `carry` past it.
    fn step(&self, carry: &mut Carry) -> Vec<u64> {
        for (owed, f) in carry.owed.iter_mut().zip(&self.fraction) {
            *owed += f;
        }
        let mut counts = self.base.clone();
        // Only datasets with a fractional quota are eligible: one whose quota is whole never gets more.
        let mut by_need: Vec<usize> = (0..counts.len())
            .filter(|&d| self.fraction[d] > 0)
            .collect();
        by_need.sort_by(|&a, &b| carry.owed[b].cmp(&carry.owed[a]).then(a.cmp(&b)));
        for &d in by_need.iter().take(self.extra) {
            counts[d] += 1;
            carry.owed[d] -= ONE;
        }
        for (w, c) in carry.windows.iter_mut().zip(&counts) {
            *w += c;
        }
        counts
    }

    /// Windows per dataset in batch `b`, and each dataset's windows in all batches before it.
    pub fn batch(&self, b: u64) -> (Vec<u64>, Vec<u64>) {
        let mut last = self.last.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some((_, counts, before, _)) = last.iter().rev().find(|entry| entry.0 == b) {
            return (counts.clone(), before.clone());
        }
        if let Some((_, _, _, carry)) = last.iter().rev().find(|entry| entry.0 + 1 == b) {
            let mut carry = carry.clone();
            let before = carry.windows.clone();
            let counts = self.step(&mut carry);
            remember(&mut last, (b, counts.clone(), before.clone(), carry));
            return (counts, before);
        }
        let (periods, b_in_period) = (b / PERIOD, b % PERIOD);
        let mut checkpoints = self
            .checkpoints
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let k = usize::try_from(b_in_period / CHECKPOINT_EVERY).expect("fits");
        while checkpoints.len() <= k {
            let mut carry = checkpoints.last().expect("the start").clone();
            for _ in 0..CHECKPOINT_EVERY {
                self.step(&mut carry);
            }
            checkpoints.push(carry);
        }
        let mut carry = checkpoints[k].clone();
        drop(checkpoints);
        for _ in (k as u64) * CHECKPOINT_EVERY..b_in_period {
            self.step(&mut carry);
        }
        // Whole periods before: each gives every dataset exactly its quota of windows per period.
        for (w, q) in carry.windows.iter_mut().zip(&self.per_period) {
            *w += periods * q;
        }
        let before = carry.windows.clone();
        let counts = self.step(&mut carry);
        remember(&mut last, (b, counts.clone(), before.clone(), carry));
        (counts, before)
    }

    /// The dataset and dataset-local window of global sample `k`.
    pub fn draw(&self, k: u64) -> Draw {
        self.draws(k..k + 1)[0]
    }

    /// The draws of samples `range`, which lie in one global batch (a micro-batch does), looking the
    /// batch up once.
    ///
    /// # Panics
    /// If `range` spans two batches.
    pub fn draws(&self, range: std::ops::Range<u64>) -> Vec<Draw> {
        let b = range.start / self.batch;
        assert!(
            range.is_empty() || (range.end - 1) / self.batch == b,
            "{range:?} spans batches"
        );
        let (counts, before) = self.batch(b);
        let mut state = self.seed ^ b;
        let order = Permutation::new(self.batch, splitmix64(&mut state));
        range
            .map(|k| place(order.apply(k % self.batch), &counts, &before))
            .collect()
    }
}

/// Which dataset (and window of it) holds `slot` of a batch of `counts`, after `before` windows.
fn place(slot: u64, counts: &[u64], before: &[u64]) -> Draw {
    {
        let mut start = 0;
        for (dataset, &count) in counts.iter().enumerate() {
            if slot < start + count {
                return Draw {
                    dataset,
                    window: before[dataset] + (slot - start),
                };
            }
            start += count;
        }
        unreachable!("counts sum to the batch")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_batch_is_within_one_window_of_the_weights() {
        let weights = [0.5, 0.3, 0.15, 0.05];
        let mixer = Mixer::new(&weights, 32, 7);
        let mut totals = [0u64; 4];
        for b in 0..3000 {
            let (counts, before) = mixer.batch(b);
            assert_eq!(before.as_slice(), totals.as_slice(), "batch {b}");
            if b % 7 == 0 {
                // A fresh mixer (a resumed job) agrees.
                assert_eq!(
                    Mixer::new(&weights, 32, 7).batch(b),
                    (counts.clone(), before.clone())
                );
            }
            assert_eq!(counts.iter().sum::<u64>(), 32);
            for (d, &c) in counts.iter().enumerate() {
                let target = weights[d] * 32.0;
                #[allow(clippy::cast_precision_loss)]
                let off = (c as f64 - target).abs();
                assert!(off < 1.0, "batch {b} dataset {d}: {c} windows for {target}");
                totals[d] += c;
            }
            for (d, &t) in totals.iter().enumerate() {
                #[allow(clippy::cast_precision_loss)]
                let off = (t as f64 - weights[d] * 32.0 * (b + 1) as f64).abs();
                assert!(off < 1.0 + 1e-6, "after batch {b}, dataset {d}: {t}");
            }
        }
    }

    #[test]
    fn the_schedule_repeats_every_period_so_any_batch_is_reached_in_constant_time() {
        let weights = [0.61, 0.27, 0.0937, 0.0263];
        let mixer = Mixer::new(&weights, 24, 3);
        // Stepping through a whole period brings the carry back to zero.
        let mut carry = Carry {
            owed: vec![0; 4],
            windows: vec![0; 4],
        };
        for _ in 0..PERIOD {
            mixer.step(&mut carry);
        }
        assert_eq!(carry.owed, [0; 4]);
        assert_eq!(carry.windows, mixer.per_period);
        // So batch b of period p is batch b of period 0, shifted by p periods of windows.
        for (p, b) in [(1u64, 5u64), (7, 0), (1_000_000, 4095), (3, PERIOD - 1)] {
            let (counts, before) = mixer.batch(b);
            let (far_counts, far_before) = Mixer::new(&weights, 24, 3).batch(p * PERIOD + b);
            assert_eq!(far_counts, counts);
            let shifted: Vec<u64> = before
                .iter()
                .zip(&mixer.per_period)
                .map(|(w, q)| w + p * q)
                .collect();
            assert_eq!(far_before, shifted);
        }
        // And stepping across a period boundary agrees with jumping there.
        let sequential = Mixer::new(&weights, 24, 3);
        for b in PERIOD - 3..PERIOD + 3 {
            assert_eq!(sequential.batch(b), Mixer::new(&weights, 24, 3).batch(b));
        }
    }
}
