#!/usr/bin/env bash
# Builds (once) the benchmark corpus of issue 18: at least 100 MB of unique real text, multilingual, from
# registry packages (tools/bench/unique-corpus.md: what, where from, licences), as parquet files in the
# fineweb-edu layout, and prints its directory (the files are in its parquet/; summary.json counts them).
#
# The packages are fetched with the ordinary clients (`npm pack`, `apt-get download`; 175 MB, once; 370 MB
# unpacked) into ${FLAME_CACHE:-~/.cache/flame}/bench/unique-corpus/src and each is checked against the
# SHA-256 below; a mismatch is an error, never a silent refresh. The corpus directory is named after the
# SHA-256 of those hashes, of the shared corpus's files and of the build script, so a change to any input
# builds a new one.
# Takes 2–4 minutes on 2 cores the first time (most of it parsing HTML and roff); the parquet files come
# out byte for byte the same on every build.
#
# Usage: tools/bench/unique-corpus.sh   (needs npm, apt-get, dpkg-deb and the bench venv,
# tools/setup-python.sh bench, which it creates if missing)
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
root="$(cd "$here/../.." && pwd)"
shared="${FLAME_SHARED:-$root/../shared}"
cache="${FLAME_CACHE:-$HOME/.cache/flame}/bench/unique-corpus"
src="$cache/src"

# kind | package=version | file as downloaded | sha256
PACKAGES=(
    "npm|quran-json@3.1.2|quran-json-3.1.2.tgz|d1454352cae9c7506d28d160486b2eb62472d45e36e01cee192d8ade889a6d49"
    "npm|chinese-poetry@2.0.1|chinese-poetry-2.0.1.tgz|25b549e46919c3a0569db6b68ddc96956b04a484ea4518ad2bbd4f137e307e86"
    "deb|debian-handbook=11.20220922|debian-handbook_11.20220922_all.deb|3d5dbeac1f1afc9c094eab9d0f701f6ecff99c4927d5a4794cf6c85678134faa"
    "deb|python3.11-doc=3.11.2-6+deb12u7|python3.11-doc_3.11.2-6+deb12u7_all.deb|eafa42c54a08dcf3892d2e9f8e29644877c241d09186ca19a4d06129a339c9f3"
    "deb|manpages-de=4.18.1-1|manpages-de_4.18.1-1_all.deb|37d2e7ee51f22952aecec3af93647ff59194a3c74bb7a694560f49c7f7ab3978"
    "deb|manpages-es=4.18.1-1|manpages-es_4.18.1-1_all.deb|d21e9f85e487f149ae45b5c525b2b1a70ae7fd38d4b05b47c8753042c66f4c2b"
    "deb|manpages-fr=4.18.1-1|manpages-fr_4.18.1-1_all.deb|ec29759cc0e4a44dc7719c1e32869d0060667049e584f09556f0d982b969ea33"
    "deb|manpages-it=4.18.1-1|manpages-it_4.18.1-1_all.deb|4b18e87cc1b6a930d40949ddc86fb8e84b50da1a862cd17e2a504eeb8e3b4e48"
    "deb|manpages-ja=0.5.0.0.20221215+dfsg-1|manpages-ja_0.5.0.0.20221215+dfsg-1_all.deb|4d270e9a1e83be4de0c072a110892a17dc9caa4b501257324006ac28d82c5743"
    "deb|manpages-nl=4.18.1-1|manpages-nl_4.18.1-1_all.deb|c1ac0e9fb2ff88a8d7f796042ce7d876fa8918e5d3367521c7f09dd885eb3b2d"
    "deb|manpages-pl=1:4.18.1-1|manpages-pl_1%3a4.18.1-1_all.deb|31e518ea8331b5204d4fd0032037f96af1ba94a5afa4f0585dca1996b270cdf9"
    "deb|manpages-pt-br=4.18.1-1|manpages-pt-br_4.18.1-1_all.deb|da971a7bc0107f7b74b4ae592d1d7cc6424fa7e77cc1808f5c110a07edaf3890"
    "deb|manpages-ru=4.18.1-1|manpages-ru_4.18.1-1_all.deb|5d5821dad5840652ba9c1c6b85bdc785c1fc52148a71c18fab6658c9659244c0"
    "deb|manpages-uk=4.18.1-1|manpages-uk_4.18.1-1_all.deb|7ad64b12010584a6cc10a341ba561a6774e8493166524f386bcd9fd7cbebdd5b"
    "deb|manpages-zh=1.6.4.0-1|manpages-zh_1.6.4.0-1_all.deb|81bae29495f6445db290e3f329f1203eb19b651c2a7ea165b74ebdc853a32ac1"
)

sha256() { sha256sum "$1" | cut -d' ' -f1; }

mkdir -p "$src/npm" "$src/deb"
# One build at a time: two benchmark runs may ask for the corpus together.
exec 9> "$cache.lock"
flock 9

inputs=()
for entry in "${PACKAGES[@]}"; do
    IFS='|' read -r kind spec file want <<< "$entry"
    path="$src/$kind/$file"
    if [[ ! -f "$path" || "$(sha256 "$path")" != "$want" ]]; then
        rm -f "$path"
        echo "unique-corpus: fetching $spec" >&2
        case "$kind" in
            npm) (cd "$src/npm" && npm pack --silent "$spec" > /dev/null) ;;
            # apt-get download writes into the current directory; it needs `apt-get update` to have run once.
            deb) (cd "$src/deb" && apt-get download -q "$spec" 2>&1 | grep -v '^W: Download is performed unsandboxed' >&2 || true) ;;
        esac
        [[ -f "$path" ]] || { echo "unique-corpus: $spec: download failed (deb: run apt-get update)" >&2; exit 1; }
        got="$(sha256 "$path")"
        if [[ "$got" != "$want" ]]; then
            echo "unique-corpus: $file: sha256 $got, expected $want" >&2
            exit 1
        fi
    fi
    if [[ "$kind" == deb && ! -f "$src/deb/${file%%_*}/.unpacked-$want" ]]; then
        rm -rf "$src/deb/${file%%_*}"
        dpkg-deb -x "$path" "$src/deb/${file%%_*}"
        touch "$src/deb/${file%%_*}/.unpacked-$want"
    fi
    inputs+=("$want")
done
for path in "$shared"/data/corpus/fineweb-edu-schema/data/*.parquet "$shared"/data/corpus/jsonl/*.jsonl; do
    inputs+=("$(sha256 "$path")")
done
inputs+=("$(sha256 "$here/unique_corpus.py")")
key="$(printf '%s\n' "${inputs[@]}" | sha256sum | cut -c1-16)"
out="$cache/corpus-$key"

if [[ ! -f "$out/done" ]]; then
    python="$(bash "$root/tools/setup-python.sh" bench)"
    echo "unique-corpus: building $out" >&2
    rm -rf "$cache"/corpus-*  # an older build's; this one replaces it
    "$python" "$here/unique_corpus.py" "$src" "$shared" "$out.tmp"
    touch "$out.tmp/done"
    mv "$out.tmp" "$out"
fi
echo "$out"
