//! What a run reports: flame's log line on stderr, `metrics.jsonl` and TensorBoard event files (rank 0),
//! with tokens per second per device, TFLOP/s and MFU from the model's own FLOPs per token, memory, the
//! learning rate, the gradient norm and the share of time spent waiting for data.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use anyhow::Context;
use tch::Device;

use crate::tensorboard::EventWriter;

/// One optimizer step's figures, as logged.
#[derive(Debug)]
pub struct StepReport {
    /// The step just taken (1-based: the number of steps taken so far).
    pub step: u64,
    /// Its loss, averaged over the ranks.
    pub loss: f64,
    /// The global gradient norm before clipping.
    pub grad_norm: f64,
    /// The learning rate the step used.
    pub lr: f64,
    /// The learning rate of the next step.
    pub next_lr: f64,
    /// Steps skipped so far for a non-finite gradient norm.
    pub skipped_steps: u64,
    /// Tokens trained on so far.
    pub tokens: u64,
}

/// Rank 0's outputs: the log line, `metrics.jsonl` and `tb/`.
pub struct Metrics {
    jsonl: std::fs::File,
    tensorboard: EventWriter,
    device: Device,
    world: u32,
    flops_per_token: u64,
    peak_flops: Option<f64>,
    /// When this process started training and from which step: the pace of the ETA.
    pace: Pace,
    /// Tokens, start and seconds spent waiting for data since the last log line.
    window: (u64, Instant, f64),
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Metrics {
    /// Opens `metrics.jsonl` (appending) and `tb/` under `dump_folder`, first dropping what they hold
    /// of the steps after `first_step` (the checkpoint this run resumes from, or 0): a resumed run
    /// logs each step once, however the run before it ended.
    ///
    /// # Errors
    /// When they cannot be read, rewritten or created.
    pub fn open(
        dump_folder: &Path,
        tb_folder: &str,
        device: Device,
        world: u32,
        flops_per_token: u64,
        first_step: u64,
    ) -> anyhow::Result<Self> {
        std::fs::create_dir_all(dump_folder)?;
        let jsonl_path = dump_folder.join("metrics.jsonl");
        truncate_jsonl(&jsonl_path, first_step)
            .with_context(|| format!("{}", jsonl_path.display()))?;
        let tb = dump_folder.join(tb_folder);
        crate::tensorboard::truncate_after(&tb, first_step)
            .with_context(|| format!("{}", tb.display()))?;
        let jsonl = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dump_folder.join("metrics.jsonl"))?;
        let tensorboard = EventWriter::create(&tb).with_context(|| format!("{}", tb.display()))?;
        let peak_flops = match device {
            Device::Cuda(i) => {
                crate::shim::cuda_device_name(i).and_then(|name| peak_bf16_flops(&name))
            }
            _ => None,
        };
        Ok(Self {
            jsonl,
            tensorboard,
            device,
            world,
            flops_per_token,
            peak_flops,
            pace: Pace {
                start: Instant::now(),
                first_step,
            },
            window: (0, Instant::now(), 0.0),
        })
    }

    /// Counts a step's tokens (all ranks) and its seconds of waiting for data (averaged over ranks).
    pub fn add(&mut self, tokens: u64, wait_seconds: f64) {
        self.window.0 += tokens;
        self.window.2 += wait_seconds;
    }

    /// Prints the log line and writes the metrics of the steps since the last one; `steps` is the
    /// run's last step, for the ETA.
    ///
    /// # Errors
    /// When the metrics files cannot be written.
    #[allow(clippy::cast_precision_loss)]
    pub fn log(&mut self, report: &StepReport, steps: u64) -> anyhow::Result<()> {
        let (window_tokens, window_start, window_wait) = self.window;
        let elapsed = window_start.elapsed().as_secs_f64();
        // Per device, as flame counts it.
        let tps = window_tokens as f64 / elapsed / f64::from(self.world);
        let tflops = tps * self.flops_per_token as f64 / 1e12;
        let waiting = 100.0 * window_wait / elapsed;
        let total = self.pace.start.elapsed().as_secs_f64();
        let eta = self.pace.eta_seconds(total, report.step, steps);
        let memory = device_memory(self.device);
        let mfu = self.peak_flops.map(|peak| 100.0 * tflops * 1e12 / peak);
        let (loss, gnorm) = (report.loss, report.grad_norm);
        eprintln!(
            "step: {:>6}  loss: {loss:7.4}  memory: {}  tps: {}  tflops: {tflops:.2}  mfu: {}  lr: {:.4e} gnorm: {gnorm:5.2} data: {waiting:.1}% [{}<{}]",
            report.step,
            memory.map_or_else(
                || "-".into(),
                |(used, total)| format!(
                    "{:.2}GiB({:.2}%)",
                    used as f64 / GIB,
                    100.0 * used as f64 / total as f64
                )
            ),
            thousands(tps),
            mfu.map_or_else(|| "-".into(), |m| format!("{m:.2}%")),
            report.next_lr,
            clock(total),
            clock(eta)
        );
        let line = serde_json::json!({"step": report.step, "loss": loss, "tps": tps,
            "tflops": tflops, "mfu_pct": mfu, "memory_gib": memory.map(|m| m.0 as f64 / GIB),
            "lr": report.lr, "grad_norm": gnorm, "data_loading_pct": waiting,
            "skipped_steps": report.skipped_steps, "tokens": report.tokens});
        // One write per line, so that a kill leaves at most one torn line for the next run to drop.
        self.jsonl.write_all(format!("{line}\n").as_bytes())?;
        self.tensorboard.scalars(
            report.step,
            &[
                ("loss_metrics/global_avg_loss", loss),
                ("throughput(tps)", tps),
                ("tflops", tflops),
                ("mfu(%)", mfu.unwrap_or(0.0)),
                ("memory/used(GiB)", memory.map_or(0.0, |m| m.0 as f64 / GIB)),
                ("optimizer/lr", report.lr),
                ("optimizer/grad_norm", gnorm),
                ("optimizer/skipped_step", report.skipped_steps as f64),
                ("time_metrics/data_loading(%)", waiting),
            ],
        )?;
        self.window = (0, Instant::now(), 0.0);
        Ok(())
    }
}

const GIB: f64 = 1_073_741_824.0;

/// Device memory in use on a CUDA device (see [`crate::shim::cuda_memory`]); `None` on the CPU.
fn device_memory(device: Device) -> Option<(u64, u64)> {
    match device {
        Device::Cuda(i) => crate::shim::cuda_memory(i),
        _ => None,
    }
}

/// Dense bf16 peak of a GPU by its name, as torchtitan's `get_peak_flops` tabulates them (SXM parts
/// unless the name says otherwise); `None` for a GPU not in the table, whose MFU is then not shown.
pub fn peak_bf16_flops(name: &str) -> Option<f64> {
    let tflops = if name.contains("H100") || name.contains("H200") || name.contains("H800") {
        if name.contains("PCIe") {
            756.0
        } else if name.contains("NVL") {
            835.0
        } else {
            989.0
        }
    } else if name.contains("GB200") {
        2500.0
    } else if name.contains("B200") {
        2250.0
    } else if name.contains("A100") || name.contains("A800") {
        312.0
    } else if name.contains("L40S") {
        362.0
    } else {
        return None;
    };
    Some(tflops * 1e12)
}

/// Keeps only the whole lines of `path` (if it exists) whose `step` is at most `step`, rewriting it
/// atomically when anything is dropped.
fn truncate_jsonl(path: &Path, step: u64) -> anyhow::Result<()> {
    let text = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e.into()),
    };
    let mut kept = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        let logged = line.ends_with(b"\n")
            && serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["step"].as_u64())
                .is_some_and(|s| s <= step);
        if logged {
            kept.extend_from_slice(line);
        }
    }
    if kept.len() != text.len() {
        flame_formats::write_atomic(path, &kept)?;
    }
    Ok(())
}

/// When a process started training, and from which step (a resumed checkpoint's, or 0).
#[derive(Clone, Copy, Debug)]
struct Pace {
    start: Instant,
    first_step: u64,
}

impl Pace {
    /// Seconds left until step `steps`, `elapsed` seconds after the start, at `step`: at the pace of
    /// the steps this process took, not counting those of the checkpoint it resumed from.
    #[allow(clippy::cast_precision_loss)]
    fn eta_seconds(&self, elapsed: f64, step: u64, steps: u64) -> f64 {
        let done = step.saturating_sub(self.first_step).max(1);
        elapsed / done as f64 * steps.saturating_sub(step) as f64
    }
}

/// `24,723`, as flame prints tokens per second.
fn thousands(x: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let digits = (x.max(0.0).round() as u64).to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn clock(seconds: f64) -> String {
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let s = seconds.max(0.0) as u64;
    format!("{:2}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_formats_tokens_per_second_and_knows_the_peaks_of_common_gpus() {
        assert_eq!(thousands(24_723.4), "24,723");
        assert_eq!(thousands(999.0), "999");
        assert_eq!(thousands(1_234_567.0), "1,234,567");
        assert_eq!(peak_bf16_flops("NVIDIA H100 80GB HBM3"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA H100 PCIe"), Some(756e12));
        assert_eq!(peak_bf16_flops("NVIDIA H200"), Some(989e12));
        assert_eq!(peak_bf16_flops("NVIDIA A100-SXM4-80GB"), Some(312e12));
        assert_eq!(peak_bf16_flops("NVIDIA GeForce RTX 4090"), None);
    }

    /// Issue 16: after resuming at step 900 of 1000, 10 steps in 10 s leave 90 steps: 90 s, not the
    /// 1 s that counting the resumed checkpoint's 900 steps as this run's would give.
    #[test]
    fn the_eta_counts_only_the_steps_this_run_took() {
        let resumed = Pace {
            start: Instant::now(),
            first_step: 900,
        };
        assert!((resumed.eta_seconds(10.0, 910, 1000) - 90.0).abs() < 1e-9);
        let fresh = Pace {
            first_step: 0,
            ..resumed
        };
        assert!((fresh.eta_seconds(10.0, 10, 100) - 90.0).abs() < 1e-9);
    }
}
