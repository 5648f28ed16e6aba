//! The README's promises, checked: its numpy snippet runs, and its quickstart has exactly two commands.

use std::process::Command;

use flame_e2e::repo_root;

const MARKER: &str = "<!-- ci: tests/tests/readme.rs runs the next python block";

fn readme() -> String {
    std::fs::read_to_string(repo_root().join("README.md")).unwrap()
}

/// The body of the first fenced block with `lang` after `from` in `text`.
fn block_after(text: &str, from: usize, lang: &str) -> String {
    let fence = format!("```{lang}\n");
    let start = text[from..].find(&fence).unwrap() + from + fence.len();
    let end = text[start..].find("```").unwrap() + start;
    text[start..end].to_owned()
}

#[test]
fn numpy_snippet_reads_the_packed_fixture() {
    let text = readme();
    let at = text
        .find(MARKER)
        .expect("README keeps the CI marker before the numpy snippet");
    let snippet = block_after(&text, at, "python");
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("readme_snippet.py");
    std::fs::write(&script, snippet).unwrap();
    let python = Command::new("bash")
        .arg(repo_root().join("tools/setup-python.sh"))
        .output()
        .unwrap();
    assert!(
        python.status.success(),
        "{}",
        String::from_utf8_lossy(&python.stderr)
    );
    let python = String::from_utf8(python.stdout).unwrap();
    let run = Command::new(python.trim())
        .arg(&script)
        .current_dir(repo_root())
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "README snippet failed:\n{}",
        String::from_utf8_lossy(&run.stderr)
    );
    assert!(String::from_utf8_lossy(&run.stdout).starts_with("(114, 256) uint16 [  0"));
}

#[test]
fn quickstart_is_exactly_two_commands() {
    let text = readme();
    let at = text
        .find("## Quickstart")
        .expect("README has a Quickstart section");
    assert!(
        at < text.find("## What is here").unwrap(),
        "the quickstart comes first"
    );
    let commands: Vec<String> = block_after(&text, at, "sh")
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(str::to_owned)
        .collect();
    assert_eq!(commands.len(), 2, "{commands:?}");
    assert_eq!(commands[1], "bash tools/test.sh");
}
