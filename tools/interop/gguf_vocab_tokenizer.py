"""A Hugging Face tokenizer.json rebuilt from one of llama.cpp's vocabulary-only GGUF files
(`models/ggml-vocab-*.gguf`, shipped in PyPI's llama-cpp-python sdist), for the exactness fixtures of
tests/data/tokenizers (see its PROVENANCE.md).

Usage: gguf_vocab_tokenizer.py {phi-3|bert} VOCAB.gguf OUT.json [REFERENCE.inp REFERENCE.out]

- phi-3: a SentencePiece BPE vocabulary (`tokenizer.ggml.model = llama`) laid out as Phi-3's own
  tokenizer.json is (Llama-2's "legacy" layout: `Prepend("▁")` + `Replace(" ", "▁")` normalizer, no
  pre-tokenizer, byte-fallback BPE, `<s>` added by the post-processor as the GGUF's `add_bos_token` says).
  Merges are generated from the pieces and their scores as transformers' `LlamaConverter` does from
  `tokenizer.model` (`generate_merges`, ordered by score), with the scores SentencePiece gives control
  pieces (0.0) rather than the -1000 the GGUF writer put on them. Ids 32000-32010 are Phi-3's added tokens
  (special per the GGUF's token types, `rstrip` as Phi-3's tokenizer_config.json has them: every one but
  `<|endoftext|>`); `</s>` is a non-special added token with `rstrip`, as in Phi-3. The GGUF's
  `[PAD32011]`… entries only pad the embedding and are not tokens of Phi-3's tokenizer.json.
- bert: a WordPiece vocabulary (`tokenizer.ggml.model = bert`), its tokens as they were before llama.cpp's
  converter respelled them, laid out as `BertWordPieceTokenizer` (and bert-base-uncased's tokenizer.json)
  has it: lowercasing `BertNormalizer`, `BertPreTokenizer`, WordPiece with `##`, `[CLS] $A [SEP]`.

With REFERENCE.inp/.out (llama.cpp's test texts and the ids Hugging Face's tokenizer gives them, without
special tokens, beside each GGUF), every text is encoded and compared; any difference is an error.

Needs `tokenizers` and `transformers` (the test venv, tools/setup-python.sh). The GGUF header is read
here (format: github.com/ggml-org/ggml docs/gguf.md), so no `gguf` package is needed.
"""

import struct
import sys

from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers.tokenization_utils_base import generate_merges

# GGUF metadata value types.
SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
STRING, ARRAY = 8, 9
# llama.cpp's token types.
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6


def read_metadata(path):
    """The key/value metadata of a GGUF file (the tensors are not read)."""
    with open(path, "rb") as f:
        data = f.read()
    at = 0

    def take(fmt):
        nonlocal at
        (value,) = struct.unpack_from(fmt, data, at)
        at += struct.calcsize(fmt)
        return value

    def string():
        nonlocal at
        n = take("<Q")
        at += n
        return data[at - n : at].decode("utf-8")

    def value(kind):
        if kind == STRING:
            return string()
        if kind == ARRAY:
            item, n = take("<I"), take("<Q")
            return [value(item) for _ in range(n)]
        return take(SCALARS[kind])

    if data[:4] != b"GGUF":
        raise SystemExit(f"{path}: not a GGUF file")
    at = 4
    version, _tensors, num_keys = take("<I"), take("<Q"), take("<Q")
    if version != 3:
        raise SystemExit(f"{path}: GGUF version {version}, this reader knows 3")
    meta = {}
    for _ in range(num_keys):
        key = string()
        meta[key] = value(take("<I"))
    return meta


def phi3(meta):
    tokens = meta["tokenizer.ggml.tokens"]
    types = meta["tokenizer.ggml.token_type"]
    scores = meta["tokenizer.ggml.scores"]
    # The SentencePiece model's pieces: everything below the first added token.
    num_pieces = next(i for i, t in enumerate(tokens) if t == "<|endoftext|>")
    vocab = {tokens[i]: i for i in range(num_pieces)}
    piece_scores = {
        tokens[i]: (0.0 if types[i] in (CONTROL, USER_DEFINED, UNKNOWN) else scores[i]) for i in range(num_pieces)
    }
    merges = generate_merges(vocab, vocab_scores=piece_scores)
    tok = Tokenizer(models.BPE(vocab, merges, unk_token="<unk>", fuse_unk=True, byte_fallback=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"), normalizers.Replace(" ", "\u2581")])
    tok.decoder = decoders.Sequence(
        [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse(), decoders.Strip(" ", 1, 0)]
    )
    added = []
    for i, (token, kind) in enumerate(zip(tokens, types)):
        if kind == UNKNOWN and token.startswith("[PAD"):
            continue
        if kind in (CONTROL, USER_DEFINED) or i >= num_pieces:
            special = kind == CONTROL
            rstrip = token == "</s>" or (i > num_pieces and not token.startswith("[PAD"))
            added.append((i, AddedToken(token, special=special, normalized=False, rstrip=rstrip)))
    for i, token in sorted(added, key=lambda a: a[0]):
        if token.special:
            tok.add_special_tokens([token])
        else:
            tok.add_tokens([token])
        assert tok.token_to_id(token.content) == i, (token.content, i, tok.token_to_id(token.content))
    if meta.get("tokenizer.ggml.add_bos_token", False):
        bos = meta["tokenizer.ggml.bos_token_id"]
        tok.post_processor = processors.TemplateProcessing(
            single=f"{tokens[bos]} $A", pair=f"{tokens[bos]} $A {tokens[bos]} $B", special_tokens=[(tokens[bos], bos)]
        )
    return tok


def unphantom(token):
    """A WordPiece token as it was before llama.cpp's converter marked word starts with `▁` and dropped the
    `##` of continuations (its `phantom`: `[…]` tokens are kept as they are)."""
    if token.startswith("[") and token.endswith("]"):
        return token
    if token.startswith("\u2581"):
        return token[1:]
    return "##" + token


def bert(meta):
    tokens = [unphantom(t) for t in meta["tokenizer.ggml.tokens"]]
    vocab = {t: i for i, t in enumerate(tokens)}
    assert len(vocab) == len(tokens), "duplicate tokens"
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", continuing_subword_prefix="##", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True, strip_accents=None, lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    for name in ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"):
        tok.add_special_tokens([AddedToken(name, special=True, normalized=False)])
    cls, sep = meta["tokenizer.ggml.cls_token_id"], meta["tokenizer.ggml.seperator_token_id"]
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS]:0 $A:0 [SEP]:0",
        pair="[CLS]:0 $A:0 [SEP]:0 $B:1 [SEP]:1",
        special_tokens=[("[CLS]", cls), ("[SEP]", sep)],
    )
    return tok


def check(tok, inp, out):
    with open(inp, encoding="utf-8") as f:
        texts = f.read().split("\n__ggml_vocab_test__\n")[:-1]
    with open(out, encoding="utf-8") as f:
        want = [[int(x) for x in line.split()] for line in f.read().split("\n")[: len(texts)]]
    bad = 0
    for text, ids in zip(texts, want):
        got = tok.encode(text, add_special_tokens=False).ids
        if got != ids:
            bad += 1
            print(f"differs: {text!r}: {got} != {ids}", file=sys.stderr)
    print(f"{len(texts) - bad}/{len(texts)} reference texts equal", file=sys.stderr)
    if bad:
        raise SystemExit(1)


def main():
    kind, src, out = sys.argv[1:4]
    meta = read_metadata(src)
    tok = {"phi-3": phi3, "bert": bert}[kind](meta)
    if len(sys.argv) > 4:
        check(tok, sys.argv[4], sys.argv[5])
    tok.save(out, pretty=False)
    print(out, tok.get_vocab_size(with_added_tokens=True), file=sys.stderr)


if __name__ == "__main__":
    main()
