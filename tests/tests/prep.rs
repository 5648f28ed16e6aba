//! flame-prep's output as the streamer and trainers open it: a `flame_formats::Corpus`.

use std::path::Path;

use clap::Parser;
use flame_e2e::shared_dir;
use flame_formats::{Corpus, Shard};
use flame_preprocess::cli::Cli;
use flame_preprocess::config::Config;

/// Runs flame-prep (the library the binary calls) with `args` and opens its output.
fn prep(args: &[&str], output: &Path) -> Corpus {
    let mut argv = vec![
        "flame-prep",
        "--output",
        output.to_str().unwrap(),
        "--quiet",
    ];
    argv.extend(args);
    let cli = Cli::try_parse_from(argv).unwrap();
    let config = Config::from_args(&cli.tokenize).unwrap();
    flame_preprocess::run::run(&config, true).unwrap();
    Corpus::open(&config.output_dir).unwrap()
}

/// Every document of a Megatron-layout corpus, in order.
fn documents(corpus: &Corpus) -> Vec<Vec<i64>> {
    let mut documents = Vec::new();
    for shard in corpus.shards() {
        let Shard::Megatron(dataset) = shard else {
            panic!("a document-level corpus expected");
        };
        for d in 0..dataset.num_documents() {
            documents.push(dataset.document(d).unwrap().to_i64_vec());
        }
    }
    documents
}

/// Issue 16: a corpus with empty texts holds them as documents: `<s>` alone with Mistral's post-processor,
/// no tokens (a document of zero sequences) with GPT-2; the manifest counts them, and packing keeps
/// every other token.
#[test]
fn empty_texts_are_documents_of_the_corpus() {
    let work = tempfile::tempdir().unwrap();
    let input = work.path().join("gaps.jsonl");
    std::fs::write(
        &input,
        "{\"text\": \"\"}\n{\"text\": \"a\"}\n{\"text\": \"\"}\n{\"text\": \"b c\"}\n{\"text\": \"\"}\n",
    )
    .unwrap();
    let tokenizer = |name: &str| {
        shared_dir()
            .join("data/tokenizers")
            .join(name)
            .join("tokenizer.json")
    };
    let (mistral, gpt2) = (tokenizer("mistral-7b-v0.1"), tokenizer("gpt2"));
    let (input, mistral, gpt2) = (
        input.to_str().unwrap(),
        mistral.to_str().unwrap(),
        gpt2.to_str().unwrap(),
    );
    let out = work.path().join("out");

    let corpus = prep(
        &[
            "--dataset",
            input,
            "--tokenizer",
            mistral,
            "--name",
            "mistral",
        ],
        &out,
    );
    assert_eq!(
        documents(&corpus),
        [vec![1], vec![1, 264], vec![1], vec![1, 287, 277], vec![1]]
    );
    assert_eq!(corpus.num_sequences(), 5);
    assert_eq!(corpus.manifest().unwrap().totals.empty_documents, 3);
    corpus.verify().unwrap();

    let gpt2_args = [
        "--dataset",
        input,
        "--tokenizer",
        gpt2,
        "--append-eod",
        "--name",
    ];
    let corpus = prep(&[&gpt2_args[..], &["gpt2"]].concat(), &out);
    let empty = Vec::<i64>::new();
    assert_eq!(
        documents(&corpus),
        [
            empty.clone(),
            vec![64, 50256],
            empty.clone(),
            vec![65, 269, 50256],
            empty
        ]
    );
    assert_eq!((corpus.num_documents(), corpus.num_sequences()), (5, 2));
    let totals = corpus.manifest().unwrap().totals;
    assert_eq!((totals.documents, totals.empty_documents), (5, 3));
    corpus.verify().unwrap();

    let corpus = prep(
        &[&gpt2_args[..], &["gpt2-packed", "--context_length", "2"]].concat(),
        &out,
    );
    let windows: Vec<Vec<i64>> = (0..corpus.num_sequences())
        .map(|i| corpus.sequence(i).unwrap().to_i64_vec())
        .collect();
    assert_eq!(windows, [vec![64, 50256], vec![65, 269]]);
    assert_eq!(
        (0..2)
            .map(|i| corpus.window_cu_seqlens(i).unwrap().unwrap())
            .collect::<Vec<_>>(),
        [vec![0, 2], vec![0, 2]]
    );
    let manifest = corpus.manifest().unwrap();
    assert_eq!(
        (manifest.totals.documents, manifest.totals.empty_documents),
        (5, 3)
    );
    corpus.verify().unwrap();
}
