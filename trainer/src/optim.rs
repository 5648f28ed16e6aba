//! AdamW with its state in tensors this crate owns, so a checkpoint holds it and a resumed run continues
//! bit for bit. The update is PyTorch's `AdamW` (decoupled weight decay applied first, bias-corrected
//! moments); weight decay applies to every parameter, as torchtitan's optimizer does for flame.

use tch::{Kind, Tensor};

/// AdamW hyper-parameters (flame's defaults: betas 0.9 and 0.95, weight decay 0.1).
#[derive(Clone, Copy, Debug)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator epsilon.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

/// The optimizer: per parameter its moments, and the step count.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    params: Vec<(String, Tensor)>,
    exp_avg: Vec<Tensor>,
    exp_avg_sq: Vec<Tensor>,
    step: i64,
    /// On CUDA: per-parameter float32 step counters for the fused kernel.
    fused_steps: Option<Vec<Tensor>>,
}

impl AdamW {
    /// An optimizer over `params` (named, as in the model's `VarStore`), moments at zero.
    pub fn new(params: Vec<(String, Tensor)>, config: AdamWConfig) -> Self {
        let zeros = |p: &Tensor| p.zeros_like().to_kind(Kind::Float);
        let exp_avg = params.iter().map(|(_, p)| zeros(p)).collect();
        let exp_avg_sq = params.iter().map(|(_, p)| zeros(p)).collect();
        let fused_steps = params
            .first()
            .is_some_and(|(_, p)| p.device().is_cuda())
            .then(|| {
                params
                    .iter()
                    .map(|(_, p)| Tensor::zeros([], (Kind::Float, p.device())))
                    .collect()
            });
        Self {
            config,
            params,
            exp_avg,
            exp_avg_sq,
            step: 0,
            fused_steps,
        }
    }

    fn tensors(&self) -> Vec<Tensor> {
        self.params.iter().map(|(_, p)| p.shallow_clone()).collect()
    }

    /// Zeroes every parameter's gradient (on CUDA, drops them: backward makes fresh ones).
    pub fn zero_grad(&mut self) {
        if self.fused_steps.is_some() {
            crate::shim::zero_grads(&self.tensors()).expect("zero_grads");
            return;
        }
        for (_, p) in &mut self.params {
            p.zero_grad();
        }
    }

    /// The global L2 norm of the gradients, computed on the device (no host synchronisation).
    pub fn grad_norm(&self) -> Tensor {
        if self.fused_steps.is_some() {
            return crate::shim::grad_norm(&self.tensors()).expect("grad_norm");
        }
        let norms: Vec<Tensor> = self
            .params
            .iter()
            .map(|(_, p)| p.grad().to_kind(Kind::Float).norm())
            .collect();
        Tensor::stack(&norms, 0).norm()
    }

    /// Scales the gradients so their global norm is at most `max_norm`, given that norm (still on the
    /// device): `min(1, max / (norm + 1e-6))`, as `clip_grad_norm_`.
    pub fn clip(&mut self, norm: &Tensor, max_norm: f64) {
        if self.fused_steps.is_some() {
            crate::shim::clip_grads(&self.tensors(), norm, max_norm).expect("clip_grads");
            return;
        }
        let coef = (norm + 1e-6)
            .reciprocal()
            .multiply_scalar(max_norm)
            .clamp_max(1.0);
        tch::no_grad(|| {
            for (_, p) in &mut self.params {
                let mut g = p.grad();
                let _ = g.g_mul_(&coef.to_kind(g.kind()));
            }
        });
    }

    /// One update at learning rate `lr`: the fused multi-tensor kernel on CUDA, the same arithmetic
    /// parameter by parameter elsewhere.
    #[allow(clippy::cast_precision_loss)]
    pub fn step(&mut self, lr: f64) {
        self.step += 1;
        let c = self.config;
        if let Some(steps) = &self.fused_steps {
            let params = self.tensors();
            let grads: Vec<Tensor> = params.iter().map(Tensor::grad).collect();
            crate::shim::fused_adamw(
                &params,
                &grads,
                &self.exp_avg,
                &self.exp_avg_sq,
                steps,
                lr,
                (c.beta1, c.beta2),
                c.weight_decay,
                c.eps,
            )
            .expect("fused AdamW");
            return;
        }
        let bias1 = 1.0 - c.beta1.powi(i32::try_from(self.step).unwrap_or(i32::MAX));
        let bias2 = 1.0 - c.beta2.powi(i32::try_from(self.step).unwrap_or(i32::MAX));
        tch::no_grad(|| {
            for (((_, p), m), v) in self
                .params
                .iter_mut()
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
            {
                let g = p.grad().to_kind(Kind::Float);
                let _ = p.g_mul_scalar_(1.0 - lr * c.weight_decay);
                let _ = m.g_mul_scalar_(c.beta1).g_add_(&(&g * (1.0 - c.beta1)));
                let _ = v
                    .g_mul_scalar_(c.beta2)
                    .g_add_(&(&g * &g * (1.0 - c.beta2)));
                let denom = (v.divide_scalar(bias2)).sqrt() + c.eps;
                let update = m.divide_scalar(bias1) / denom * lr;
                let _ = p.g_sub_(&update.to_kind(p.kind()));
            }
        });
    }

    /// Updates taken so far.
    pub fn steps_taken(&self) -> i64 {
        self.step
    }

    /// The state as named tensors (for a checkpoint): each parameter's `exp_avg.NAME` and
    /// `exp_avg_sq.NAME`.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for (((name, _), m), v) in self.params.iter().zip(&self.exp_avg).zip(&self.exp_avg_sq) {
            out.push((format!("exp_avg.{name}"), m.shallow_clone()));
            out.push((format!("exp_avg_sq.{name}"), v.shallow_clone()));
        }
        out
    }

    /// Restores what [`AdamW::state`] saved, and the step count.
    ///
    /// # Errors
    /// A missing tensor or one of another shape.
    pub fn load_state(&mut self, state: &[(String, Tensor)], steps: i64) -> Result<(), String> {
        let find = |key: &str| {
            state
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, t)| t)
                .ok_or_else(|| format!("optimizer state has no {key}"))
        };
        tch::no_grad(|| -> Result<(), String> {
            for (((name, _), m), v) in self
                .params
                .iter()
                .zip(&mut self.exp_avg)
                .zip(&mut self.exp_avg_sq)
            {
                for (target, key) in [
                    (m, format!("exp_avg.{name}")),
                    (v, format!("exp_avg_sq.{name}")),
                ] {
                    let saved = find(&key)?;
                    if saved.size() != target.size() {
                        return Err(format!(
                            "optimizer state {key} has shape {:?}, the model {:?}",
                            saved.size(),
                            target.size()
                        ));
                    }
                    target.copy_(saved);
                }
            }
            Ok(())
        })?;
        self.step = steps;
        #[allow(clippy::cast_precision_loss)]
        if let Some(counters) = &mut self.fused_steps {
            for counter in counters {
                let _ = counter.fill_(steps as f64);
            }
        }
        Ok(())
    }
}
