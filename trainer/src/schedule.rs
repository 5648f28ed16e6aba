//! The learning-rate schedule: torchtitan's linear warmup, stable, decay (`linear_warmup_stable_decay`),
//! as flame uses it through `--lr_scheduler.*` (../shared/notes/flame.md §3.2).
//!
//! With `N` training steps and `W` warmup steps (at most `N`): `D` decay steps are `round(N·decay_ratio)`
//! (at most `N − W`) when a ratio is given, else `N − W`; `S = N + 1 − W − D` stable steps (one more than
//! the steps left, so the rate never reaches its floor inside the run). For the 0-indexed step `s`:
//! `(s+1)/W` while warming up, `1` while stable, then with `p = (s + 1 − W − S)/D` the decay `g` is
//! `1 − p` (linear), `1 − √p` (sqrt) or `(1 + cos πp)/2` (cosine) and the factor is `lr_min + (1 − lr_min)·g`
//! (`lr_min` is a ratio of the peak).

/// How the rate falls after the stable phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DecayType {
    /// `1 − p`.
    Linear,
    /// `1 − √p`.
    Sqrt,
    /// `(1 + cos πp) / 2`.
    Cosine,
}

/// A schedule's phase lengths and floor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Schedule {
    warmup: u64,
    stable: u64,
    decay: u64,
    decay_type: DecayType,
    lr_min: f64,
}

impl Schedule {
    /// The schedule of a run of `steps` steps.
    #[allow(
        clippy::cast_possible_truncation,
        clippy::cast_sign_loss,
        clippy::cast_precision_loss
    )]
    pub fn new(
        steps: u64,
        warmup: u64,
        decay_ratio: Option<f64>,
        decay_type: DecayType,
        lr_min: f64,
    ) -> Self {
        let warmup = warmup.min(steps);
        let decay = decay_ratio.map_or(steps - warmup, |r| {
            ((steps as f64 * r).round_ties_even().max(0.0) as u64).min(steps - warmup)
        });
        Self {
            warmup,
            stable: steps + 1 - warmup - decay,
            decay,
            decay_type,
            lr_min,
        }
    }

    /// The factor on the peak rate at 0-indexed step `s`.
    #[allow(clippy::cast_precision_loss)]
    pub fn factor(&self, s: u64) -> f64 {
        if s < self.warmup {
            return (s + 1) as f64 / self.warmup as f64;
        }
        if s < self.warmup + self.stable {
            return 1.0;
        }
        let p = (s + 1 - self.warmup - self.stable) as f64 / self.decay as f64;
        let g = match self.decay_type {
            DecayType::Linear => 1.0 - p,
            DecayType::Sqrt => 1.0 - p.sqrt(),
            DecayType::Cosine => 0.5 * (1.0 + (std::f64::consts::PI * p).cos()),
        };
        self.lr_min + (1.0 - self.lr_min) * g
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn warmup_stable_decay_follows_the_formula() {
        // N = 10, W = 2, decay_ratio 0.5: D = 5, S = 10 + 1 − 2 − 5 = 4.
        let s = Schedule::new(10, 2, Some(0.5), DecayType::Linear, 0.1);
        let want = [0.5, 1.0, 1.0, 1.0, 1.0, 1.0, 0.82, 0.64, 0.46, 0.28];
        for (step, &w) in want.iter().enumerate() {
            assert!(
                close(s.factor(step as u64), w),
                "step {step}: {} != {w}",
                s.factor(step as u64)
            );
        }
        // sqrt and cosine at p = 0.2 (step 6) and p = 0.8 (step 9).
        let sqrt = Schedule::new(10, 2, Some(0.5), DecayType::Sqrt, 0.0);
        assert!(close(sqrt.factor(6), 1.0 - 0.2f64.sqrt()));
        let cosine = Schedule::new(10, 2, Some(0.5), DecayType::Cosine, 0.0);
        assert!(close(
            cosine.factor(9),
            0.5 * (1.0 + (std::f64::consts::PI * 0.8).cos())
        ));
    }

    #[test]
    fn without_a_decay_ratio_the_decay_takes_every_step_after_warmup() {
        // flame's README run: N = 20480, W = 1024 gives D = 19456 and one stable step.
        let s = Schedule::new(20480, 1024, None, DecayType::Cosine, 0.1);
        assert_eq!((s.decay, s.stable), (19456, 1));
        assert!(close(s.factor(0), 1.0 / 1024.0));
        assert!(close(s.factor(1024), 1.0));
        assert!(
            s.factor(20479) > 0.1,
            "the floor is never reached inside the run"
        );
        // Warmup longer than the run is cut to it; a decay ratio too large is cut to what is left.
        let short = Schedule::new(5, 10, Some(0.9), DecayType::Linear, 0.0);
        assert_eq!((short.warmup, short.decay, short.stable), (5, 0, 1));
        assert!(close(short.factor(4), 1.0));
    }
}
