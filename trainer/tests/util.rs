//! What the trainer's tests share: the repository's paths, the interop venv, and the flame-train binary.

use std::path::{Path, PathBuf};

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// `../shared` beside the repository: tokenizers, corpora, golden ids.
pub fn shared() -> PathBuf {
    repo().join("../shared")
}

/// The interop venv's interpreter (tools/setup-python.sh: torch and transformers on the CPU).
pub fn python() -> PathBuf {
    let output = std::process::Command::new("bash")
        .arg(repo().join("tools/setup-python.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// The directory of fla's kernels that `tools/setup-kernels.sh` builds (once; cached).
pub fn kernels() -> PathBuf {
    let output = std::process::Command::new("bash")
        .arg(repo().join("tools/setup-kernels.sh"))
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    PathBuf::from(String::from_utf8(output.stdout).unwrap().trim())
}

/// The flame-train binary with `argv` (whose first element is the program name), outside any
/// launcher's environment, plus `env`.
pub fn command(argv: &[String], env: &[(&str, &str)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_flame-train"));
    command
        .args(&argv[1..])
        .env_remove("RANK")
        .env_remove("SLURM_PROCID")
        .envs(env.iter().copied());
    command
}

/// Runs the flame-train binary with `argv` and checks that it succeeds.
pub fn launch(argv: &[String]) {
    let status = command(argv, &[]).status().unwrap();
    assert!(status.success(), "flame-train {:?}: {status}", &argv[1..]);
}

/// The names in the directory `dir`, sorted.
pub fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Copies the directory `from` to `to`, subdirectories included.
pub fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &to.join(entry.file_name()));
        } else {
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
}

/// The kernel venv's interpreter (fla-core and Triton, no torch), which `tools/setup-kernels.sh`
/// creates in flame's cache beside the build it makes (and [`kernels`] runs it).
pub fn kernel_python() -> PathBuf {
    kernels();
    let python = flame_preprocess::sample::cache_dir()
        .unwrap()
        .join("kernel-venv/bin/python");
    assert!(python.exists(), "{}: missing", python.display());
    python
}

/// Runs `command` and checks that it succeeds; returns what it printed (stdout, then stderr).
pub fn succeeds(command: &mut std::process::Command) -> String {
    let out = command.output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{said}");
    said
}

/// Checkpoints that `transformers` itself writes (`tools/interop/hf_checkpoint.py`), under `dir`:
/// `mistral/hf` and `llama/hf`.
pub fn transformers_checkpoints(dir: &Path) -> PathBuf {
    succeeds(
        std::process::Command::new(python())
            .arg(repo().join("tools/interop/hf_checkpoint.py"))
            .arg(dir),
    );
    dir.to_path_buf()
}

/// `tools/interop/hf_parity.py` on the cases `cases` (each a directory with `hf/` and
/// `logits.safetensors`) at `tolerance` (the script's 1e-4 when `None`): `transformers`' fp32 logits on
/// whole windows and on two packed documents, each run alone from position 0. Asserts that they agree
/// and returns what the script printed (each case's largest difference).
pub fn hf_parity(cases: &[&Path], tolerance: Option<&str>) -> String {
    let mut command = std::process::Command::new(python());
    command.arg(repo().join("tools/interop/hf_parity.py"));
    if let Some(tolerance) = tolerance {
        command.args(["--tolerance", tolerance]);
    }
    let output = command.args(cases).output().unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success() && stdout.contains("ok"),
        "{stdout}{}",
        String::from_utf8_lossy(&output.stderr)
    );
    eprint!("{stdout}");
    stdout
}
