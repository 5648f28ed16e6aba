//! The Hugging Face hub path against a local server speaking the endpoints `hf-hub` uses
//! (`flame_e2e::fake_hub`), then the same job offline from the standard cache, and the one-line error with
//! neither hub nor cache.

use std::collections::HashMap;

use flame_e2e::fake_hub::{COMMIT, FakeHub, dead_endpoint};
use flame_e2e::parquet_of_texts;

use crate::util::{flame_prep_with_env, shared, snapshot};

fn fineweb_like() -> HashMap<String, Vec<(String, Vec<u8>)>> {
    let card = "---\nlicense: odc-by\nconfigs:\n- config_name: default\n  data_files:\n  - split: train\n    path: data/*/*\n- config_name: sample-10BT\n  data_files:\n  - split: train\n    path: sample/10BT/*\n---\n# A fineweb-edu-shaped test repo\n";
    let dataset = vec![
        ("README.md".to_owned(), card.as_bytes().to_vec()),
        (
            "sample/10BT/000_00000.parquet".to_owned(),
            parquet_of_texts(&["Call me Ishmael.", "It was the best of times."]),
        ),
        (
            "sample/10BT/001_00000.parquet".to_owned(),
            parquet_of_texts(&["Whan that Aprill with his shoures soote"]),
        ),
        (
            "data/CC-MAIN-2024-10/train-00000.parquet".to_owned(),
            parquet_of_texts(&["not in the sample config"]),
        ),
    ];
    let tokenizer =
        std::fs::read(shared().join("data/tokenizers/mistral-7b-v0.1/tokenizer.json")).unwrap();
    let model = vec![
        ("tokenizer.json".to_owned(), tokenizer),
        (
            "tokenizer_config.json".to_owned(),
            br#"{"bos_token": "<s>", "eos_token": "</s>"}"#.to_vec(),
        ),
    ];
    HashMap::from([
        ("datasets/HuggingFaceFW/fineweb-edu".to_owned(), dataset),
        ("fla-hub/transformer-1.3B-100B".to_owned(), model),
    ])
}

#[test]
fn hub_datasets_download_into_the_cache_and_work_offline() {
    let hub = FakeHub::start(fineweb_like());
    let work = tempfile::tempdir().unwrap();
    let hf_home = work.path().join("hf");
    let endpoint = hub.endpoint();
    let online = work.path().join("online");
    let args = |out: &std::path::Path| -> Vec<String> {
        [
            "--dataset",
            "fineweb-edu",
            "--name",
            "sample-10BT",
            "--split",
            "train",
            "--json",
            "--output",
            out.to_str().unwrap(),
        ]
        .iter()
        .map(|s| (*s).to_owned())
        .collect()
    };
    let online_args = args(&online);
    let run = flame_prep_with_env(
        &online_args.iter().map(String::as_str).collect::<Vec<_>>(),
        &[
            ("HF_ENDPOINT", &endpoint),
            ("HF_HOME", hf_home.to_str().unwrap()),
            ("HF_TOKEN", "hf_secret"),
        ],
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    let summary: serde_json::Value = serde_json::from_str(run.stdout.trim()).unwrap();
    assert_eq!(
        summary["documents"], 3,
        "two files of the sample-10BT config"
    );
    let hub_snapshot = hf_home
        .join("hub/datasets--HuggingFaceFW--fineweb-edu/snapshots")
        .join(COMMIT);
    assert!(hub_snapshot.join("sample/10BT/001_00000.parquet").is_file());
    assert!(
        !hub_snapshot
            .join("data/CC-MAIN-2024-10/train-00000.parquet")
            .exists(),
        "files of other configs are not downloaded"
    );
    assert!(
        hf_home
            .join("hub/models--fla-hub--transformer-1.3B-100B/snapshots")
            .join(COMMIT)
            .join("tokenizer.json")
            .is_file()
    );
    let requests = hub.requests.lock().unwrap().clone();
    assert!(
        requests
            .iter()
            .all(|(_, auth)| auth.as_deref() == Some("Bearer hf_secret")),
        "HF_TOKEN is sent: {requests:?}"
    );
    let manifest =
        flame_formats::Manifest::load(&online.join("fineweb-edu/sample-10BT/train")).unwrap();
    assert_eq!(
        (manifest.tokenizer.bos_id, manifest.tokenizer.eos_id),
        (Some(1), Some(2))
    );

    let offline = work.path().join("offline");
    let offline_args = args(&offline);
    let dead = dead_endpoint();
    for env in [
        [("HF_HUB_OFFLINE", "1"), ("HF_ENDPOINT", dead.as_str())],
        [("HF_HUB_OFFLINE", "0"), ("HF_ENDPOINT", dead.as_str())],
    ] {
        let mut env = env.to_vec();
        env.push(("HF_HOME", hf_home.to_str().unwrap()));
        let _ = std::fs::remove_dir_all(&offline);
        let run = flame_prep_with_env(
            &offline_args.iter().map(String::as_str).collect::<Vec<_>>(),
            &env,
        );
        assert_eq!(run.code, 0, "{env:?}: {}", run.stderr);
        assert_eq!(
            snapshot(&offline.join("fineweb-edu/sample-10BT/train"), |name| name
                != "manifest.json"),
            snapshot(&online.join("fineweb-edu/sample-10BT/train"), |name| name
                != "manifest.json")
        );
    }
}

#[test]
fn no_hub_and_no_cache_is_one_clear_line() {
    let work = tempfile::tempdir().unwrap();
    let dead = dead_endpoint();
    let run = flame_prep_with_env(
        &[
            "--dataset",
            "HuggingFaceFW/fineweb-edu",
            "--output",
            work.path().to_str().unwrap(),
        ],
        &[
            ("HF_ENDPOINT", &dead),
            ("HF_HOME", work.path().join("empty").to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 1);
    let lines: Vec<&str> = run.stderr.lines().filter(|l| l.contains("error")).collect();
    assert_eq!(lines.len(), 1, "{}", run.stderr);
    assert!(
        lines[0].contains("cannot be reached")
            && lines[0].contains("not in the hub cache")
            && lines[0].contains("HF_HOME"),
        "{}",
        lines[0]
    );
    let offline = flame_prep_with_env(
        &[
            "--dataset",
            "HuggingFaceFW/fineweb-edu",
            "--output",
            work.path().to_str().unwrap(),
        ],
        &[
            ("HF_HUB_OFFLINE", "1"),
            ("HF_HOME", work.path().join("empty").to_str().unwrap()),
        ],
    );
    assert!(
        offline
            .stderr
            .contains("HF_HUB_OFFLINE is set, and it is not in the hub cache"),
        "{}",
        offline.stderr
    );
}
