"""Reference token ids from the Python `tokenizers` library, for flame's exactness tests.

Usage: python tokenize_reference.py TOKENIZER_JSON TEXTS_JSONL [--add-special-tokens]
TEXTS_JSONL holds one {"text": ...} per line. Prints one line per text: "<count> <sha256>", where the
hash is over the ids as little-endian uint32. Literal special-token strings are encoded as plain text
(`encode_special_tokens = True`), as flame does by default.
"""

import hashlib
import json
import sys

import numpy
from tokenizers import Tokenizer


def main():
    tokenizer = Tokenizer.from_file(sys.argv[1])
    tokenizer.encode_special_tokens = True
    add_special_tokens = "--add-special-tokens" in sys.argv[3:]
    with open(sys.argv[2], encoding="utf-8") as f:
        texts = [json.loads(line)["text"] for line in f]
    out = sys.stdout
    for start in range(0, len(texts), 256):
        for encoding in tokenizer.encode_batch_fast(texts[start : start + 256], add_special_tokens=add_special_tokens):
            ids = numpy.asarray(encoding.ids, dtype="<u4")
            out.write(f"{len(ids)} {hashlib.sha256(ids.tobytes()).hexdigest()}\n")


if __name__ == "__main__":
    main()
