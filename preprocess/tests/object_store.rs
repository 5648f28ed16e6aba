//! Object-store inputs against a local S3-compatible server (moto, started by this test on loopback):
//! a glob and a prefix of `s3://` objects give exactly the shards of the same files read locally.

use std::path::Path;

use flame_e2e::s3_server::S3Server;

use crate::util::{flame_prep_with_env, python, shared, snapshot};

#[test]
fn s3_globs_and_prefixes_read_like_local_files() {
    let work = tempfile::tempdir().unwrap();
    let local = work.path().join("fineweb");
    std::fs::create_dir(&local).unwrap();
    let moby = shared().join("data/corpus/jsonl/en-moby-dick.jsonl");
    let go = shared().join("data/corpus/jsonl/code-go-std-1mb.jsonl");
    std::fs::copy(&moby, local.join("part-2.jsonl")).unwrap();
    std::fs::copy(&go, local.join("part-10.jsonl")).unwrap();
    let server = S3Server::start(
        python(),
        "corpus",
        &[
            (&moby, "fineweb/part-2.jsonl"),
            (&go, "fineweb/part-10.jsonl"),
            (&moby, "elsewhere/x.jsonl"),
        ],
    );
    let tokenizer = shared().join("data/tokenizers/gpt2/tokenizer.json");
    let (tokenizer, out) = (tokenizer.to_str().unwrap(), work.path().join("out"));
    let cache = work.path().join("cache");
    let env = [
        ("AWS_ENDPOINT", server.endpoint.as_str()),
        ("AWS_ACCESS_KEY_ID", "testing"),
        ("AWS_SECRET_ACCESS_KEY", "testing"),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ALLOW_HTTP", "true"),
        ("FLAME_CACHE", cache.to_str().unwrap()),
    ];
    let run = |dataset: &str, name: &str| {
        let run = flame_prep_with_env(
            &[
                "--dataset",
                dataset,
                "--tokenizer",
                tokenizer,
                "--output",
                out.to_str().unwrap(),
                "--name",
                name,
                "--shard-tokens",
                "200000",
            ],
            &env,
        );
        assert_eq!(run.code, 0, "{dataset}: {}", run.stderr);
        out.join("fineweb").join(name).join("train")
    };
    let shards = |dir: &Path| snapshot(dir, |name| name.starts_with("shard_"));
    let expected = shards(&run(local.to_str().unwrap(), "local"));
    assert!(expected.len() >= 4);
    for (url, name) in [
        ("s3://corpus/fineweb/*.jsonl", "glob"),
        ("s3://corpus/fineweb/", "prefix"),
    ] {
        let dir = run(url, name);
        assert_eq!(shards(&dir), expected, "{url}");
        let manifest = flame_formats::Manifest::load(&dir).unwrap();
        let uris: Vec<&str> = manifest.sources.iter().map(|s| s.uri.as_str()).collect();
        assert_eq!(
            uris,
            [
                "s3://corpus/fineweb/part-2.jsonl",
                "s3://corpus/fineweb/part-10.jsonl"
            ]
        );
    }
    assert!(
        cache
            .join("objects/s3/corpus/fineweb/part-10.jsonl")
            .is_file()
    );
    let file_url = format!("file://{}", local.display());
    assert_eq!(shards(&run(&file_url, "file")), expected);
}

#[test]
fn an_unreachable_store_names_the_url() {
    let work = tempfile::tempdir().unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("http://127.0.0.1:{}", listener.local_addr().unwrap().port());
    drop(listener);
    let tokenizer = shared().join("data/tokenizers/gpt2/tokenizer.json");
    let run = flame_prep_with_env(
        &[
            "--dataset",
            "s3://corpus/fineweb/*.jsonl",
            "--tokenizer",
            tokenizer.to_str().unwrap(),
            "--output",
            work.path().to_str().unwrap(),
        ],
        &[
            ("AWS_ENDPOINT", &dead),
            ("AWS_ACCESS_KEY_ID", "x"),
            ("AWS_SECRET_ACCESS_KEY", "x"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_ALLOW_HTTP", "true"),
            ("FLAME_CACHE", work.path().to_str().unwrap()),
        ],
    );
    assert_eq!(run.code, 1);
    assert!(
        run.stderr
            .contains("s3://corpus/fineweb/*.jsonl: cannot list objects"),
        "{}",
        run.stderr
    );
}
