//! Data by name, as flame takes it: the job that flame's dataset flags describe (`--training.dataset`
//! and its parallel lists, `--model.tokenizer_path`, the batch flags), and the data service that serves
//! it when no `--data-endpoint` is given: flame-stream's own server, run in this process and reached over
//! shared memory, so the batches are the ones a separate flame-stream would serve.

use std::path::Path;

use anyhow::{Context, bail, ensure};
use flame_streamer::server::{Endpoint, ServerConfig, default_cache_dir, serve};
use flame_streamer::spec::{DatasetSpec, JobSpec, Order};

use crate::cli::Args;

/// `datasets.load_dataset`'s builders that read the files of `data_files` (the dataset names them).
const FILE_BUILDERS: &[&str] = &["json", "parquet", "csv", "text", "arrow"];

/// The job of `--data-job`, else the one the dataset flags describe for `world` ranks.
///
/// # Errors
/// An unreadable or invalid job file, both or neither of `--data-job` and `--training.dataset`, or
/// dataset flags that [`job_from_flags`] refuses.
pub fn load_job(args: &Args, world: u32) -> anyhow::Result<JobSpec> {
    match (&args.data_job, &args.dataset) {
        (Some(_), Some(_)) => bail!(
            "--data-job and --training.dataset both name the data: give one (a prepared job, or datasets by name)"
        ),
        (Some(path), None) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--data-job {}", path.display()))?;
            JobSpec::from_toml(&text).with_context(|| format!("--data-job {}", path.display()))
        }
        (None, Some(_)) => job_from_flags(args, world),
        (None, None) => bail!(
            "no data: name the datasets (--training.dataset, with --model.tokenizer_path) or give a job \
             (--data-job)"
        ),
    }
}

/// flame's dataset flags as a flame-stream job: one dataset per entry of `--training.dataset`, its
/// configuration, split, directory and files from the parallel lists (an empty entry: none, split
/// `train`), its share of the tokens from `--training.data_probs`, tokenized with
/// `--model.tokenizer_path` (BOS as the tokenizer adds it, no EOS: flame's), shuffled with
/// `--training.seed`, in the batches of the batch flags. An entry that is flame-prep's output (a
/// directory with its `manifest.json`) is served as the shards it is, tokenized already.
///
/// # Errors
/// A list of another length than `--training.dataset`, a share that is not a positive number, several
/// datasets without shares, no tokenizer, a `data_dir` or `data_files` this service cannot express, or
/// a job flame-stream would refuse.
pub fn job_from_flags(args: &Args, world: u32) -> anyhow::Result<JobSpec> {
    let names = list(args.dataset.as_deref().unwrap_or_default());
    ensure!(
        !names.is_empty() && names.iter().all(|n| !n.is_empty()),
        "--training.dataset {:?}: no dataset, or an empty entry",
        args.dataset.as_deref().unwrap_or_default()
    );
    let n = names.len();
    let parallel = |flag: &str, value: &Option<String>| -> anyhow::Result<Vec<Option<String>>> {
        let Some(value) = value else {
            return Ok(vec![None; n]);
        };
        let items = list(value);
        ensure!(
            items.len() == n,
            "--training.{flag} {value:?} has {} entries, --training.dataset {n}",
            items.len()
        );
        Ok(items
            .into_iter()
            .map(|s| (!s.is_empty()).then_some(s))
            .collect())
    };
    let configs = parallel("dataset_name", &args.dataset_name)?;
    let splits = parallel("dataset_split", &args.dataset_split)?;
    let dirs = parallel("data_dir", &args.data_dir)?;
    let files = parallel("data_files", &args.data_files)?;
    let shares = shares(args.data_probs.as_deref(), n)?;
    let mut datasets = Vec::with_capacity(n);
    for (i, name) in names.iter().enumerate() {
        if is_prepared(name) {
            ensure!(
                [&configs[i], &splits[i], &dirs[i], &files[i]]
                    .iter()
                    .all(|o| o.is_none()),
                "--training.dataset {name} is flame-prep's output (its manifest.json): its \
                 configuration, split and files were chosen when it was prepared; leave its entries of \
                 dataset_name, dataset_split, data_dir and data_files empty"
            );
            datasets.push(DatasetSpec::prepared(name.as_str(), shares[i]));
            continue;
        }
        datasets.push(DatasetSpec {
            dataset: Some(source(name, dirs[i].as_deref(), files[i].as_deref())?),
            name: configs[i].clone(),
            split: splits[i].clone(),
            weight: shares[i],
            ..DatasetSpec::prepared("", 1.0)
        });
    }
    let raw = datasets.iter().any(|d| d.dataset.is_some());
    let tokenizer = match (raw, &args.tokenizer_path) {
        (true, None) => bail!(
            "--training.dataset needs --model.tokenizer_path: the tokenizer the data service encodes with"
        ),
        (true, Some(path)) => Some(path.display().to_string()),
        (false, _) => None,
    };
    let job = JobSpec {
        seed: u64::try_from(args.seed).context("--training.seed: a seed is not negative")?,
        seq_len: args.seq_len,
        context_len: args.context_len,
        varlen: args.varlen,
        micro_batch_size: args.batch_size,
        global_batch_size: args.batch_size * args.gradient_accumulation_steps * world,
        order: Order::Flame,
        split: None,
        split_name: "train".into(),
        num_samples: None,
        epochs: None,
        tokenizer,
        bos: None,
        append_eod: false,
        streaming: args.streaming,
        datasets,
    };
    job.validate()
        .context("the job --training.dataset and the flags describe")?;
    Ok(job)
}

/// Whether `name` is flame-prep's output: a directory with its `manifest.json`, or that file.
fn is_prepared(name: &str) -> bool {
    let path = Path::new(name);
    path.join("manifest.json").is_file()
        || (path.file_name().is_some_and(|f| f == "manifest.json") && path.is_file())
}

/// The entries of a flame comma list, trimmed.
fn list(value: &str) -> Vec<String> {
    value.split(',').map(|s| s.trim().to_owned()).collect()
}

/// `--training.data_probs` as `n` positive shares (one dataset may leave it out).
fn shares(probs: Option<&str>, n: usize) -> anyhow::Result<Vec<f64>> {
    let Some(probs) = probs else {
        ensure!(
            n == 1,
            "--training.data_probs is needed with {n} datasets (each one's share, as flame requires)"
        );
        return Ok(vec![1.0]);
    };
    let shares = list(probs)
        .iter()
        .map(|p| p.parse::<f64>().ok().filter(|p| p.is_finite() && *p > 0.0))
        .collect::<Option<Vec<f64>>>()
        .with_context(|| format!("--training.data_probs {probs:?}: shares are positive numbers"))?;
    ensure!(
        shares.len() == n,
        "--training.data_probs {probs:?} has {} entries, --training.dataset {n}",
        shares.len()
    );
    Ok(shares)
}

/// What flame-stream reads for dataset `name` with `datasets.load_dataset`'s `data_dir` and
/// `data_files`: the files, for a builder name (`json`, `parquet`, ...); the directory under a local
/// dataset; else the name.
fn source(name: &str, dir: Option<&str>, files: Option<&str>) -> anyhow::Result<String> {
    match (files, dir) {
        (Some(files), _) if FILE_BUILDERS.contains(&name) => Ok(files.to_owned()),
        (Some(files), _) => bail!(
            "--training.data_files {files} with --training.dataset {name}: the data service reads \
             data_files with a builder name ({}); name a hub dataset's files by its configuration \
             (--training.dataset_name) instead",
            FILE_BUILDERS.join(", ")
        ),
        (None, Some(dir)) if Path::new(name).is_dir() => {
            Ok(Path::new(name).join(dir).display().to_string())
        }
        (None, Some(dir)) => bail!(
            "--training.data_dir {dir} with --training.dataset {name}: the data service takes a \
             data_dir under a local dataset directory only; name a hub dataset's part by its \
             configuration (--training.dataset_name)"
        ),
        (None, None) => {
            ensure!(
                !FILE_BUILDERS.contains(&name),
                "--training.dataset {name}: a builder name needs --training.data_files"
            );
            Ok(name.to_owned())
        }
    }
}

/// The data service's endpoint: `--data-endpoint`'s, else that of flame-stream's server started in
/// this process on a Unix socket in a temporary directory (returned, to be kept for the run), with
/// flame's cache for the datasets it prepares.
///
/// # Errors
/// When the server cannot listen.
pub fn data_service(args: &Args) -> anyhow::Result<(Endpoint, Option<tempfile::TempDir>)> {
    if let Some(endpoint) = &args.data_endpoint {
        return Ok((endpoint.clone(), None));
    }
    let dir = tempfile::Builder::new()
        .prefix("flame-train-data-")
        .tempdir()
        .context("a directory for the data service's socket")?;
    let running = serve(&ServerConfig {
        listen: vec![Endpoint::Unix(dir.path().join("data.sock"))],
        max_connections: 4,
        prefetch_depth: 2,
        cache_dir: default_cache_dir(),
        ..ServerConfig::default()
    })
    .context("starting the data service (flame-stream's server, in this process)")?;
    let endpoint = running
        .endpoints
        .into_iter()
        .next()
        .context("the data service listens nowhere")?;
    Ok((endpoint, Some(dir)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn args(flags: &str) -> Args {
        let argv =
            format!("flame-train --training.steps 1 --model.tokenizer_path tok.json {flags}");
        Args::try_parse_from(argv.split_whitespace()).unwrap()
    }

    #[test]
    fn flames_dataset_flags_are_a_job_of_raw_datasets() {
        let a = args(
            "--training.dataset HuggingFaceFW/fineweb-edu,json --training.dataset_name sample-100BT, \
             --training.data_files ,a.jsonl --training.data_probs 0.6,0.4 --training.seq_len 64 \
             --training.batch_size 2 --training.gradient_accumulation_steps 3 --training.varlen \
             --training.seed 7 --training.streaming",
        );
        let job = job_from_flags(&a, 2).unwrap();
        assert_eq!((job.seed, job.seq_len, job.micro_batch_size), (7, 64, 2));
        assert_eq!(job.global_batch_size, 2 * 3 * 2);
        assert!(job.varlen && job.streaming);
        assert_eq!(job.tokenizer.as_deref(), Some("tok.json"));
        let d = &job.datasets;
        assert_eq!(d[0].dataset.as_deref(), Some("HuggingFaceFW/fineweb-edu"));
        assert_eq!(d[0].name.as_deref(), Some("sample-100BT"));
        assert_eq!((d[0].weight, d[1].weight), (0.6, 0.4));
        assert_eq!(d[1].dataset.as_deref(), Some("a.jsonl"));
        assert_eq!(d[1].name, None);
    }

    /// Issue 24: an entry that is flame-prep's output is served as its shards, beside raw datasets; it
    /// takes no configuration, and a job of such entries alone needs no tokenizer.
    #[test]
    fn flame_preps_output_is_served_as_prepared_shards() {
        let dir = tempfile::tempdir().unwrap();
        let prepared = dir.path().join("owt");
        std::fs::create_dir(&prepared).unwrap();
        std::fs::write(prepared.join("manifest.json"), "{}").unwrap();
        let p = prepared.display();
        let job = job_from_flags(
            &args(&format!(
                "--training.dataset {p},a.jsonl --training.data_probs 3,1 --training.seq_len 64"
            )),
            1,
        )
        .unwrap();
        let d = &job.datasets;
        assert_eq!(
            (d[0].path.as_str(), d[0].dataset.as_deref()),
            (p.to_string().as_str(), None)
        );
        assert_eq!(
            (d[1].dataset.as_deref(), d[0].weight),
            (Some("a.jsonl"), 3.0)
        );
        assert_eq!(job.tokenizer.as_deref(), Some("tok.json"), "a.jsonl is raw");
        let alone = Args::try_parse_from(
            format!("flame-train --training.steps 1 --training.dataset {p}").split_whitespace(),
        )
        .unwrap();
        let job = job_from_flags(&alone, 1).unwrap();
        assert_eq!(
            (job.datasets[0].path.as_str(), job.tokenizer),
            (p.to_string().as_str(), None)
        );
        let configured = args(&format!("--training.dataset {p} --training.dataset_name x"));
        let err = job_from_flags(&configured, 1).unwrap_err().to_string();
        assert!(err.contains("flame-prep's output"), "{err}");
    }

    #[test]
    fn dataset_flags_that_cannot_be_served_are_refused_with_the_flag() {
        for (flags, said) in [
            ("--training.dataset a,b", "--training.data_probs is needed"),
            (
                "--training.dataset a,b --training.data_probs 1",
                "has 1 entries",
            ),
            (
                "--training.dataset a --training.data_probs=0",
                "positive numbers",
            ),
            (
                "--training.dataset a,b --training.data_probs 1,1 --training.dataset_name x",
                "dataset_name",
            ),
            (
                "--training.dataset org/x --training.data_files f.json",
                "builder name",
            ),
            (
                "--training.dataset org/x --training.data_dir sub",
                "data_dir",
            ),
            ("--training.dataset json", "needs --training.data_files"),
        ] {
            let err = format!("{:#}", job_from_flags(&args(flags), 1).unwrap_err());
            assert!(err.contains(said), "{flags}: {err}");
        }
        let no_tokenizer = Args::try_parse_from([
            "flame-train",
            "--training.steps",
            "1",
            "--training.dataset",
            "a",
        ])
        .unwrap();
        let err = job_from_flags(&no_tokenizer, 1).unwrap_err().to_string();
        assert!(err.contains("--model.tokenizer_path"), "{err}");
        let both = args("--training.dataset a --data-job j.toml");
        assert!(
            load_job(&both, 1)
                .unwrap_err()
                .to_string()
                .contains("give one")
        );
    }
}
