"""Builds a Unigram tokenizer.json from a SentencePiece unigram `.model`, for the exactness fixtures
(tests/data/tokenizers/PROVENANCE.md says which model and package).

Usage: spm_unigram_tokenizer.py {t5|nfkc} MODEL OUT.json

The model's pieces, scores and types and its normalizer's precompiled character map are read from the
protobuf by hand (ModelProto: 1 pieces {1 piece, 2 score, 3 type}, 3 normalizer_spec {2 precompiled_charsmap}),
so nothing but `tokenizers` is needed. Two layouts:

- `t5`: as transformers' converter lays out T5's tokenizer.json: the model's `Precompiled` normalizer,
  `WhitespaceSplit` then `Metaspace` (prepend always), Unigram with the model's unknown piece, `$A </s>`.
- `nfkc`: NFKC instead of the character map, and `Metaspace` then `Digits` (one a piece) and
  `Punctuation` (isolated): the pre-tokenizers of issue 18 in their general form.

Control, unknown and user-defined pieces become special added tokens, as in T5's file. The output is the
same bytes on every run.
"""

import struct
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors


def varint(data, at):
    value, shift = 0, 0
    while True:
        byte = data[at]
        at += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, at
        shift += 7


def fields(data):
    """(field number, wire type, value) of a protobuf message: ints for varints, bytes otherwise."""
    at = 0
    while at < len(data):
        key, at = varint(data, at)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, at = varint(data, at)
        elif wire == 1:
            value, at = data[at : at + 8], at + 8
        elif wire == 2:
            length, at = varint(data, at)
            value, at = data[at : at + length], at + length
        elif wire == 5:
            value, at = data[at : at + 4], at + 4
        else:
            raise ValueError(f"wire type {wire}")
        yield number, wire, value


NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def read_model(path):
    """([(piece, score, type)], precompiled_charsmap) of a SentencePiece model file."""
    pieces, charsmap = [], b""
    with open(path, "rb") as f:
        data = f.read()
    for number, _, value in fields(data):
        if number == 1:
            piece, score, kind = None, 0.0, NORMAL
            for n, _, v in fields(value):
                if n == 1:
                    piece = v.decode("utf-8")
                elif n == 2:
                    score = struct.unpack("<f", v)[0]
                elif n == 3:
                    kind = v
            pieces.append((piece, score, kind))
        elif number == 3:
            for n, _, v in fields(value):
                if n == 2:
                    charsmap = bytes(v)
    return pieces, charsmap


def build(layout, pieces, charsmap):
    unk_id = next(i for i, (_, _, kind) in enumerate(pieces) if kind == UNKNOWN)
    tokenizer = Tokenizer(models.Unigram([(p, s) for p, s, _ in pieces], unk_id, byte_fallback=False))
    metaspace = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    if layout == "t5":
        tokenizer.normalizer = normalizers.Precompiled(charsmap)
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), metaspace])
    elif layout == "nfkc":
        tokenizer.normalizer = normalizers.NFKC()
        tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
            [metaspace, pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.Punctuation("isolated")]
        )
    else:
        raise SystemExit(f"unknown layout {layout}")
    tokenizer.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always", split=True)
    special = [p for p, _, kind in pieces if kind in (UNKNOWN, CONTROL, USER_DEFINED)]
    tokenizer.add_special_tokens([AddedToken(p, special=True, normalized=False) for p in special])
    eos = "</s>"
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"$A {eos}", pair=f"$A {eos} $B {eos}", special_tokens=[(eos, tokenizer.token_to_id(eos))]
    )
    return tokenizer


def main():
    if len(sys.argv) != 4:
        raise SystemExit(__doc__)
    layout, model, out = sys.argv[1:]
    pieces, charsmap = read_model(model)
    tokenizer = build(layout, pieces, charsmap)
    with open(out, "w", encoding="utf-8") as f:
        f.write(tokenizer.to_str(pretty=True))
    print(f"{out}: {tokenizer.get_vocab_size(with_added_tokens=True)} pieces, {layout} layout")


if __name__ == "__main__":
    main()
