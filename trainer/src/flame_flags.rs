//! flame's training flags (fla-org/flame's `train.sh -h`, torchtitan's names) that flame-train does not
//! take under its own name: each one is another name of a flame-train flag, accepted at the values that
//! ask for nothing flame-train lacks (a parallel degree of 1, float8 off, ...), accepted as meaning
//! nothing here (with a note saying why), or refused with the reason and what to use instead. Nothing
//! is skipped silently, on the command line or in a `--job.config_file` TOML: a key neither flame-train
//! nor this table knows is an error too.

/// What flame-train does with one of flame's flags.
#[derive(Clone, Copy, Debug)]
enum Disposition {
    /// Another name of flame-train's flag.
    Alias(&'static str),
    /// Accepted at these values (compared as text, booleans as `true`/`false`); any other value is
    /// refused with the reason.
    Only(&'static [&'static str], &'static str),
    /// Accepted with any value, which changes nothing here, for the reason given (printed once).
    NoEffect(&'static str),
    /// flame's old `--optimizer.scheduler`, mapped to torchtitan's schedule flags.
    OldScheduler,
}

use Disposition::{Alias, NoEffect, OldScheduler, Only};

const NO_TP: &str = "flame-train has no tensor parallelism (data parallelism only)";
const NO_PP: &str = "flame-train has no pipeline parallelism (data parallelism only)";
const NO_CP: &str = "flame-train has no context parallelism (data parallelism only)";
const NO_FLOAT8: &str = "flame-train has no float8 training (bf16 autocast)";
const LOADER: &str =
    "flame-stream feeds the trainer over shared memory: there are no loader workers";
const ONLY_PARAMETER: &str = "a setting of a feature that is off";

/// flame's flags that flame-train's own flags do not cover, with what flame-train does with each.
const FLAGS: &[(&str, Disposition)] = &[
    (
        "job.description",
        NoEffect("a run's label: flame-train logs it"),
    ),
    (
        "job.use_for_integration_test",
        NoEffect("a marker of torchtitan's own test configs"),
    ),
    (
        "model.name",
        NoEffect(
            "torchtitan's model family: flame-train reads the architecture from --model.config",
        ),
    ),
    (
        "model.flavor",
        NoEffect("torchtitan's model size: flame-train reads the architecture from --model.config"),
    ),
    (
        "model.norm_type",
        Only(
            &["rmsnorm", "fused_rmsnorm"],
            "flame-train's models normalise with RMSNorm",
        ),
    ),
    (
        "profiling.enable_memory_snapshot",
        Only(&["false"], "flame-train takes no memory snapshots"),
    ),
    (
        "profiling.save_memory_snapshot_folder",
        NoEffect(ONLY_PARAMETER),
    ),
    (
        "optimizer.name",
        Only(
            &["AdamW"],
            "flame-train's optimizer is AdamW (torch's, fused on CUDA)",
        ),
    ),
    (
        "optimizer.fused",
        NoEffect("AdamW runs fused on CUDA and unfused on the CPU, the same update either way"),
    ),
    ("optimizer.scheduler", OldScheduler),
    ("optimizer.min_lr_ratio", Alias("lr_scheduler.lr_min")),
    (
        "optimizer.early_step_in_backward",
        Only(
            &["false"],
            "flame-train steps the optimizer after the backward pass",
        ),
    ),
    ("training.warmup_steps", Alias("lr_scheduler.warmup_steps")),
    ("training.num_workers", NoEffect(LOADER)),
    ("training.prefetch_factor", NoEffect(LOADER)),
    ("training.pin_memory", NoEffect(LOADER)),
    ("training.persistent_workers", NoEffect(LOADER)),
    (
        "training.data_parallel_replicate_degree",
        Only(
            &["1"],
            "flame-train's data parallelism spans every rank (data_parallel_shard_degree -1)",
        ),
    ),
    (
        "training.data_parallel_shard_degree",
        Only(
            &["-1"],
            "flame-train's data parallelism spans every rank, each holding the whole model: the same \
             training as sharding over all of them (-1)",
        ),
    ),
    (
        "training.enable_cpu_offload",
        Only(&["false"], "flame-train does not offload to the CPU"),
    ),
    ("training.tensor_parallel_degree", Only(&["1"], NO_TP)),
    ("training.disable_loss_parallel", NoEffect(NO_TP)),
    (
        "training.mixed_precision_param",
        Only(
            &["bfloat16"],
            "flame-train computes in bf16 under autocast on CUDA, with fp32 parameters",
        ),
    ),
    (
        "training.compile",
        NoEffect("there is no compiler here: flame-train always runs its fastest path"),
    ),
    (
        "training.gc_freq",
        NoEffect("Python's garbage collector: there is none here"),
    ),
    (
        "metrics.enable_tensorboard",
        NoEffect("flame-train always writes TensorBoard events, to <dump_folder>/tb"),
    ),
    (
        "metrics.rank_0_only",
        Only(
            &["true"],
            "flame-train logs and writes metrics on rank 0 only",
        ),
    ),
    (
        "metrics.disable_color_printing",
        NoEffect("flame-train's log lines have no colours"),
    ),
    (
        "metrics.enable_wandb",
        NoEffect(
            "there is no network here: the metrics are TensorBoard files in <dump_folder>/tb, which \
             `wandb sync --sync-tensorboard` uploads",
        ),
    ),
    (
        "experimental.enable_async_tensor_parallel",
        Only(&["false"], NO_TP),
    ),
    ("experimental.pipeline_parallel_degree", Only(&["1"], NO_PP)),
    (
        "experimental.pipeline_parallel_split_points",
        NoEffect(ONLY_PARAMETER),
    ),
    (
        "experimental.pipeline_parallel_schedule",
        NoEffect(ONLY_PARAMETER),
    ),
    (
        "experimental.pipeline_parallel_schedule_csv",
        NoEffect(ONLY_PARAMETER),
    ),
    (
        "experimental.pipeline_parallel_microbatches",
        NoEffect(ONLY_PARAMETER),
    ),
    (
        "experimental.enable_compiled_autograd",
        Only(&["false"], "there is no compiler here"),
    ),
    ("experimental.context_parallel_degree", Only(&["1"], NO_CP)),
    (
        "experimental.context_parallel_rotate_method",
        NoEffect(ONLY_PARAMETER),
    ),
    (
        "checkpoint.async_mode",
        Only(
            &["disabled"],
            "flame-train writes checkpoints synchronously",
        ),
    ),
    ("float8.enable_float8_linear", Only(&["false"], NO_FLOAT8)),
    (
        "float8.enable_fsdp_float8_all_gather",
        Only(&["false"], NO_FLOAT8),
    ),
    (
        "float8.precompute_float8_dynamic_scale_for_fsdp",
        Only(&["false"], NO_FLOAT8),
    ),
    ("float8.scaling_type_input", NoEffect(ONLY_PARAMETER)),
    ("float8.scaling_type_weight", NoEffect(ONLY_PARAMETER)),
    ("float8.scaling_type_grad_output", NoEffect(ONLY_PARAMETER)),
    (
        "comm.trace_buf_size",
        NoEffect("torch's NCCL flight recorder: flame-train does not record collectives"),
    ),
    (
        "memory_estimation.enabled",
        Only(&["false"], "flame-train has no memory estimation"),
    ),
    (
        "memory_estimation.disable_fake_mode",
        NoEffect(ONLY_PARAMETER),
    ),
];

/// `argv` (without the program name) with flame's flags of the table resolved: aliases renamed to
/// flame-train's flags, the accepted ones dropped (each with a note, returned second), the refused ones
/// an error naming the flag, its value and the reason. Every other word is kept for clap, which parses
/// flame-train's own flags and refuses unknown ones. A flag of the table given bare (flame's form of a
/// boolean) has the value `true`.
///
/// # Errors
/// A flag of the table given a value flame-train cannot honour.
pub fn resolve(argv: &[String]) -> Result<(Vec<String>, Vec<String>), String> {
    let (mut out, mut notes) = (Vec::new(), Vec::new());
    let mut words = argv.iter().peekable();
    while let Some(arg) = words.next() {
        let Some(flag) = arg.strip_prefix("--") else {
            out.push(arg.clone());
            continue;
        };
        let (name, inline) = match flag.split_once('=') {
            Some((name, value)) => (name, Some(value.to_string())),
            None => (flag, None),
        };
        let Some((_, disposition)) = FLAGS.iter().find(|(known, _)| *known == name) else {
            out.push(arg.clone());
            continue;
        };
        // A value follows unless the flag is bare (flame's booleans) or the next word is a flag.
        let value = match inline {
            Some(value) => value,
            None => match words.next_if(|next| !is_flag(next)) {
                Some(value) => value.clone(),
                None => "true".to_string(),
            },
        };
        match *disposition {
            Alias(ours) => {
                notes.push(format!("--{name} is flame-train's --{ours}"));
                out.push(format!("--{ours}"));
                out.push(value);
            }
            Only(values, reason) => {
                if !values.contains(&value.as_str()) {
                    return Err(format!("--{name} {value}: {reason}"));
                }
            }
            NoEffect(reason) => notes.push(format!("--{name} {value}: no effect ({reason})")),
            OldScheduler => {
                let flags = old_scheduler(&value).ok_or_else(|| {
                    format!("--{name} {value}: flame's schedulers are wsd, cosine and linear")
                })?;
                notes.push(format!(
                    "--{name} {value} is torchtitan's {} (its warmup reaches the peak one step \
                     earlier than flame's old one)",
                    flags.join(" ")
                ));
                out.extend(flags.iter().map(ToString::to_string));
            }
        }
    }
    Ok((out, notes))
}

/// flame's old schedules (`flame/components/optimizer.py` before a4e9f75) as torchtitan's flags: cosine
/// and linear decay over every step after the warmup; WSD decays over the last tenth, by its default
/// `sqrt`.
fn old_scheduler(name: &str) -> Option<&'static [&'static str]> {
    match name {
        "cosine" => Some(&["--lr_scheduler.decay_type", "cosine"]),
        "linear" => Some(&["--lr_scheduler.decay_type", "linear"]),
        "wsd" => Some(&[
            "--lr_scheduler.decay_type",
            "sqrt",
            "--lr_scheduler.decay_ratio",
            "0.1",
        ]),
        _ => None,
    }
}

/// Whether flame's flag `name` is one of the table's (handled by [`resolve`]).
pub fn knows(name: &str) -> bool {
    FLAGS.iter().any(|(known, _)| *known == name)
}

/// Whether `word` is a flag rather than a value (negative numbers are values).
fn is_flag(word: &str) -> bool {
    word.starts_with("--")
}

#[cfg(test)]
mod tests {
    use super::resolve;

    fn words(line: &str) -> Vec<String> {
        line.split_whitespace().map(String::from).collect()
    }

    #[test]
    fn aliases_are_renamed_and_flame_train_flags_pass_through() {
        let (out, notes) = resolve(&words(
            "--training.warmup_steps 100 --training.steps 5 --optimizer.min_lr_ratio=0.1 --training.varlen",
        ))
        .unwrap();
        assert_eq!(
            out,
            words(
                "--lr_scheduler.warmup_steps 100 --training.steps 5 --lr_scheduler.lr_min 0.1 --training.varlen"
            )
        );
        assert_eq!(notes.len(), 2, "{notes:?}");
    }

    #[test]
    fn off_values_are_accepted_and_others_refused_with_the_reason() {
        let accepted = "--training.tensor_parallel_degree 1 --training.data_parallel_shard_degree -1 \
                        --float8.enable_float8_linear false --optimizer.name AdamW --training.steps 3";
        let (out, notes) = resolve(&words(accepted)).unwrap();
        assert_eq!(out, words("--training.steps 3"));
        assert!(notes.is_empty(), "{notes:?}");
        for (line, said) in [
            ("--training.tensor_parallel_degree 2", "tensor parallelism"),
            ("--optimizer.name Lion", "AdamW"),
            ("--checkpoint.async_mode async", "synchronously"),
            // flame's bare boolean means true.
            ("--float8.enable_float8_linear --training.steps 3", "float8"),
        ] {
            let err = resolve(&words(line)).unwrap_err();
            let flag = line.split_whitespace().next().unwrap();
            assert!(err.starts_with(flag) && err.contains(said), "{line}: {err}");
        }
    }

    #[test]
    fn flames_old_schedulers_are_torchtitans_flags() {
        let (out, notes) = resolve(&words(
            "--optimizer.scheduler wsd --optimizer.min_lr_ratio 0.1",
        ))
        .unwrap();
        assert_eq!(
            out,
            words(
                "--lr_scheduler.decay_type sqrt --lr_scheduler.decay_ratio 0.1 --lr_scheduler.lr_min 0.1"
            )
        );
        assert_eq!(notes.len(), 2);
        let err = resolve(&words("--optimizer.scheduler exp")).unwrap_err();
        assert!(err.contains("wsd, cosine and linear"), "{err}");
    }

    #[test]
    fn flags_that_change_nothing_here_are_accepted_with_a_note() {
        let (out, notes) = resolve(&words(
            "--training.compile --metrics.enable_wandb true --training.num_workers 32",
        ))
        .unwrap();
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(notes.len(), 3);
        assert!(
            notes[1].contains("wandb sync --sync-tensorboard"),
            "{}",
            notes[1]
        );
    }

    /// Every flag of flame's `train.sh -h` (../shared/notes/flame-flags.md) is flame-train's own or in
    /// the table.
    #[test]
    fn every_flag_of_flames_list_is_answered() {
        use clap::CommandFactory;
        let notes = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../../shared/notes/flame-flags.md");
        let text = std::fs::read_to_string(&notes).unwrap();
        let ours: Vec<String> = crate::cli::Args::command()
            .get_arguments()
            .filter_map(|a| a.get_long().map(String::from))
            .collect();
        // The bullets, continuation lines joined, without their (…) and {…} asides.
        let mut bullets: Vec<String> = Vec::new();
        for line in text.lines() {
            if let Some(bullet) = line.strip_prefix("- ") {
                bullets.push(bullet.to_string());
            } else if let (Some(last), true) = (bullets.last_mut(), line.starts_with("  ")) {
                last.push_str(line);
            }
        }
        let mut checked = 0;
        for bullet in bullets {
            let mut depth = 0;
            let bare: String = bullet
                .chars()
                .filter(|&c| {
                    depth += i32::from(c == '(' || c == '{');
                    let keep = depth == 0;
                    depth -= i32::from(c == ')' || c == '}');
                    keep && c != ')' && c != '}'
                })
                .collect();
            let Some((section, keys)) = bare.split_once(": ") else {
                continue;
            };
            if section == "environment" || section.contains(' ') {
                continue;
            }
            for key in keys.split(',') {
                let key = key.trim().trim_matches('`');
                let flag = format!("{section}.{key}");
                assert!(
                    ours.contains(&flag) || super::knows(&flag),
                    "{flag}: neither flame-train's nor in flame_flags' table"
                );
                checked += 1;
            }
        }
        assert!(
            checked > 80,
            "read {checked} flags from {}",
            notes.display()
        );
    }
}
