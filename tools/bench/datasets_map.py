"""flame's old preprocessing (`training/preprocess.py`, FLA, final version), as a peer for tools/bench/prep.py.

The pipeline of ../shared/notes/flame.md §2.1, re-created on the registries' `datasets` and `transformers`:
`load_dataset` (here the `parquet` builder on local files instead of a hub id, which converts them into the
`datasets` Arrow cache as a first run does), `shuffle(seed)`, `map(tokenize, batched=True, batch_size=2048,
num_proc=N, remove_columns=...)` where `tokenize` encodes with the fast tokenizer (BOS from the tokenizer)
and cuts each map batch's concatenated ids into rows of exactly `seq_len` tokens, dropping the batch's
remainder as the original does; then `save_to_disk`.

Usage: python datasets_map.py --data-files 'DIR/*.parquet' --tokenizer DIR --output OUT --num-proc 2
(set HF_DATASETS_CACHE to an empty directory to time a first run).
"""

import argparse
import itertools

from datasets import load_dataset
from transformers import AutoTokenizer


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-files", required=True)
    parser.add_argument("--tokenizer", required=True)
    parser.add_argument("--output", required=True)
    parser.add_argument("--num-proc", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--seed", type=int, default=42)
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer)
    dataset = load_dataset("parquet", data_files=args.data_files, split="train")
    dataset = dataset.shuffle(seed=args.seed)

    def tokenize(examples):
        ids = list(itertools.chain.from_iterable(tokenizer(examples["text"])["input_ids"]))
        kept = len(ids) // args.seq_len * args.seq_len
        return {"input_ids": [ids[i:i + args.seq_len] for i in range(0, kept, args.seq_len)]}

    dataset = dataset.map(tokenize, batched=True, batch_size=args.batch_size, num_proc=args.num_proc,
                          remove_columns=dataset.column_names)
    dataset.save_to_disk(args.output, num_proc=args.num_proc)
    print(f"{len(dataset)} rows of {args.seq_len} tokens")


if __name__ == "__main__":
    main()
