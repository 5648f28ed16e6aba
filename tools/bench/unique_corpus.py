"""Builds the unique real-text corpus of tools/bench/unique-corpus.sh from the packages it fetched.

Every document of every source (tools/bench/unique-corpus.md says which package, version and path each
comes from) is read as text, documents whose text was seen before are dropped (exact, by SHA-256 of the
UTF-8 text), then long paragraphs already seen in an earlier document are cut out too (the Debian
Handbook's translations leave some passages in English; repeating them would feed flame-prep's piece cache
text it has already seen). The documents are shuffled with a fixed seed so that every file, and every
prefix of the corpus, mixes all the sources, and written as parquet in the fineweb-edu layout: `text`
first, then `id`, `url` (a package URL: `pkg:deb/debian/NAME@VERSION#PATH`, `pkg:npm/NAME@VERSION#PATH`),
`language`; snappy, row groups of 1,000 documents, files `train-NNNNN.parquet` of about 32 MB of text.

Usage: unique_corpus.py SRC SHARED OUT   (SRC: the unpacked packages; SHARED: ../shared; OUT: a new
directory). Writes OUT/parquet/*.parquet and OUT/summary.json (documents, bytes, per source and language).
"""

import glob
import gzip
import hashlib
import html.parser
import json
import os
import random
import re
import sys
import tarfile
import uuid

import pyarrow as pa
import pyarrow.parquet as pq

SEED = 18
ROWS_PER_GROUP = 1_000
BYTES_PER_FILE = 32 * 10**6
POEMS_PER_DOCUMENT = 20
# A paragraph this long (UTF-8 bytes) is dropped from a document when an earlier document had it.
MIN_DEDUP_PARAGRAPH_BYTES = 80

HANDBOOK = ("debian-handbook", "11.20220922", "usr/share/doc/debian-handbook/html")
PYTHON_DOC = ("python3.11-doc", "3.11.2-6+deb12u7", "usr/share/doc/python3.11/html/_sources")
# Debian's translated manual pages (manpages-l10n, and the Japanese and Chinese projects): package, version,
# the man directory taken (zh_CN only: zh_TW holds the same pages in traditional characters).
MANPAGES = [
    ("manpages-de", "4.18.1-1", "de"), ("manpages-fr", "4.18.1-1", "fr"), ("manpages-es", "4.18.1-1", "es"),
    ("manpages-it", "4.18.1-1", "it"), ("manpages-nl", "4.18.1-1", "nl"), ("manpages-pl", "1:4.18.1-1", "pl"),
    ("manpages-pt-br", "4.18.1-1", "pt_BR"), ("manpages-ru", "4.18.1-1", "ru"), ("manpages-uk", "4.18.1-1", "uk"),
    ("manpages-ja", "0.5.0.0.20221215+dfsg-1", "ja"), ("manpages-zh", "1.6.4.0-1", "zh_CN"),
]
QURAN = ("quran-json", "3.1.2")
POETRY = ("chinese-poetry", "2.0.1")
# chinese-poetry's folders taken (the Tang poems, the Song ci, the Yuan qu and the classics; not the
# 260,000 Song shi, which would make a third of the corpus classical Chinese), with their language tag.
POETRY_PARTS = [
    ("quantangshi/poet.tang.*.json", "lzh-Hant"), ("songci/ci.song.*.json", "lzh-Hans"),
    ("yuanqu/yuanqu.json", "lzh-Hans"), ("shijing/*.json", "lzh-Hans"), ("chuci/*.json", "lzh-Hans"),
    ("lunyu/*.json", "lzh-Hans"), ("wudaishici/**/*.json", "lzh-Hans"), ("nalanxingde/*.json", "lzh-Hans"),
]


def deb_url(package, version, path):
    return f"pkg:deb/debian/{package}@{version}#{path}"


def npm_url(package, version, path):
    return f"pkg:npm/{package}@{version}#{path}"


class HtmlText(html.parser.HTMLParser):
    """The visible text of a Publican/DocBook XHTML page, one line per block element, navigation left out."""

    BLOCKS = {"p", "div", "li", "dt", "dd", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "table",
              "blockquote", "title", "section", "td", "th"}
    VOID = {"br", "img", "meta", "link", "hr", "input", "col", "area", "base", "wbr"}
    SKIP = {"script", "style", "head"}
    NAVIGATION_IDS = {"banner", "title"}  # "Download the ebook", the site logos

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.parts, self.skip_depth, self.pre_depth = [], 0, 0

    def is_navigation(self, attrs):
        attrs = dict(attrs)
        return attrs.get("id") in self.NAVIGATION_IDS or "docnav" in (attrs.get("class") or "").split()

    def handle_startendtag(self, tag, attrs):
        if tag == "br" and not self.skip_depth:
            self.parts.append("\n")

    def handle_starttag(self, tag, attrs):
        if tag in self.VOID:
            self.handle_startendtag(tag, attrs)
        elif self.skip_depth or tag in self.SKIP or self.is_navigation(attrs):
            self.skip_depth += 1
        else:
            self.pre_depth += tag == "pre"
            if tag in self.BLOCKS:
                self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag in self.VOID:
            return
        if self.skip_depth:
            self.skip_depth -= 1
            return
        self.pre_depth -= tag == "pre" and self.pre_depth > 0
        if tag in self.BLOCKS:
            self.parts.append("\n")

    def handle_data(self, data):
        if not self.skip_depth:
            self.parts.append(data if self.pre_depth else re.sub(r"\s+", " ", data))

    def text(self):
        # Outside <pre>, runs of white space were collapsed to one space: a line may start with one.
        lines = (line[1:].rstrip() if line.startswith(" ") and not line.startswith("  ") else line.rstrip()
                 for line in "".join(self.parts).split("\n"))
        return re.sub(r"\n{3,}", "\n\n", "\n".join(lines)).strip()


def html_text(path):
    parser = HtmlText()
    with open(path, encoding="utf-8") as f:
        parser.feed(f.read())
    parser.close()
    return parser.text()


# roff's named characters (`\(em`, `\[em]`) that manual pages use; any other becomes nothing.
ROFF_CHARS = {"em": "—", "en": "–", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘", "cq": "’",
              "bu": "•", "co": "©", "rg": "®", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "ga": "`", "ha": "^",
              "ti": "~", "rs": "\\", "mu": "×", "de": "°", "+-": "±", "->": "→", "<-": "←", ">=": "≥",
              "<=": "≤", "!=": "≠", "hy": "-", "sc": "§", "ps": "¶", "tm": "™"}
ROFF_SIMPLE = {"-": "-", "e": "\\", "~": " ", " ": " ", "0": " ", "t": "\t"}
# A font change, size change or string (dropped); a named character (group 1 or 2); a one-character escape
# (group 3; `\&`, `\|`, `\c` and the like become nothing).
ROFF_ESCAPE = re.compile(r"\\(?:f(?:\[[^\]]*\]|\(..|.)|s[-+]?\d|\*(?:\[[^\]]*\]|\(..|.)"
                         r"|\((..)|\[([^\]]*)\]|(.))")
ROFF_QUOTED = re.compile(r'"((?:[^"]|"")*)"|(\S+)')
# Macros whose arguments are text: alternating-font ones (`.BR a b` is "ab"), the others joined by spaces.
ROFF_ALTERNATING = {"BR", "BI", "IB", "IR", "RB", "RI"}
ROFF_TEXT_MACROS = {"SH", "SS", "B", "I", "SM", "SB", "UR", "MT", *ROFF_ALTERNATING}
ROFF_BREAKS = {"PP", "P", "LP", "TP", "IP", "sp", "SH", "SS", "TQ", "HP", "EX", "EE"}


def roff_escape(match):
    name = match.group(1) or match.group(2)
    if name is not None:
        return ROFF_CHARS.get(name, "")
    return ROFF_SIMPLE.get(match.group(3) or "", "")


def roff_text(source):
    """The text of a manual page's roff source: headings, paragraphs and the words of text macros."""
    lines = []
    for line in source.split("\n"):
        if not line.startswith((".", "'")):
            lines.append(line)
            continue
        request, _, rest = line[1:].strip().partition(" ")
        if request in ROFF_BREAKS:
            lines.append("")
        if request == "IP":
            words = ROFF_QUOTED.findall(rest)[:1]  # the tag; the indent after it is a number
        elif request in ROFF_TEXT_MACROS:
            words = ROFF_QUOTED.findall(rest)
        else:
            continue  # comments (`.\"`), .TH, .nf, .RS and every other request
        words = [(quoted or bare).replace('""', '"') for quoted, bare in words]
        if words:
            lines.append(("" if request in ROFF_ALTERNATING else " ").join(words))
    text = ROFF_ESCAPE.sub(roff_escape, "\n".join(lines))
    return re.sub(r"\n{3,}", "\n\n", text).strip()


def manpages(src):
    """One document per manual page (the symbolic links to other pages left out)."""
    for package, version, lang in MANPAGES:
        base = os.path.join(src, "deb", package)
        for path in sorted(glob.glob(os.path.join(base, "usr/share/man", lang, "man*/*.gz"))):
            if os.path.islink(path):
                continue
            with gzip.open(path) as f:
                text = roff_text(f.read().decode("utf-8"))
            yield package, text, deb_url(package, version, os.path.relpath(path, base)), lang.replace("_", "-")


def shared_corpus(shared):
    """The shared corpus (../shared/data/README.md), parquet and JSONL."""
    for path in sorted(glob.glob(os.path.join(shared, "data/corpus/fineweb-edu-schema/data/*.parquet"))):
        table = pq.read_table(path, columns=["text", "url", "language"])
        for text, url, language in zip(*(table.column(c).to_pylist() for c in ("text", "url", "language"))):
            yield "shared corpus", text, url, language
    for path in sorted(glob.glob(os.path.join(shared, "data/corpus/jsonl/*.jsonl"))):
        with open(path, encoding="utf-8") as f:
            for line in f:
                if line.strip():
                    doc = json.loads(line)
                    yield "shared corpus", doc["text"], doc["source"], doc["language"]


def debian_handbook(src):
    package, version, root = HANDBOOK
    base = os.path.join(src, "deb", package, root)
    for lang in sorted(os.listdir(base)):
        if lang == "Common_Content" or not os.path.isdir(os.path.join(base, lang)):
            continue
        for path in sorted(glob.glob(os.path.join(base, lang, "*.html"))):
            yield (package, html_text(path),
                   deb_url(package, version, os.path.relpath(path, os.path.join(src, "deb", package))), lang)


def python_doc(src):
    package, version, root = PYTHON_DOC
    base = os.path.join(src, "deb", package)
    for path in sorted(glob.glob(os.path.join(base, root, "**/*.rst.txt"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            yield package, f.read(), deb_url(package, version, os.path.relpath(path, base)), "en"


def npm_members(src, package, version, pattern):
    """(path in the package, parsed JSON) of the tarball's members matching `pattern`, in name order."""
    archive = os.path.join(src, "npm", f"{package.lstrip('@').replace('/', '-')}-{version}.tgz")
    regex = re.compile(pattern)
    with tarfile.open(archive, "r:gz") as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile() and regex.fullmatch(m.name)),
                         key=lambda m: m.name)
        for member in members:
            yield member.name, json.load(tar.extractfile(member))


def quran(src):
    """One document per surah and language: the Arabic, the transliteration and ten translations."""
    package, version = QURAN
    for path, surahs in npm_members(src, package, version, r"package/dist/quran(_[a-z]+)?\.json"):
        lang = re.search(r"quran_?([a-z]*)\.json", path).group(1) or "ar"
        field = {"ar": "text", "transliteration": "transliteration"}.get(lang, "translation")
        lang = {"transliteration": "ar-Latn"}.get(lang, lang)
        for surah in surahs:
            title = surah.get("translation") or surah["transliteration"]
            lines = [title if lang != "ar" else surah["name"], ""]
            lines += [verse[field] for verse in surah["verses"]]
            yield (package, "\n".join(lines), npm_url(package, version, f"{path}#{surah['id']}"),
                   lang)


def poems(src):
    """Classical Chinese poetry, POEMS_PER_DOCUMENT poems (title, author, lines) a document."""
    package, version = POETRY
    for part, lang in POETRY_PARTS:
        pattern = "package/dist/" + re.escape(part).replace(r"\*\*/", "(?:.*/)?").replace(r"\*", "[^/]*")
        for path, items in npm_members(src, package, version, pattern):
            if isinstance(items, dict):
                items = [items]
            items = [p for p in items if isinstance(p, dict) and (p.get("paragraphs") or p.get("content"))]
            for start in range(0, len(items), POEMS_PER_DOCUMENT):
                blocks = []
                for poem in items[start:start + POEMS_PER_DOCUMENT]:
                    head = " ".join(str(poem[k]) for k in ("title", "rhythmic", "chapter", "section", "author")
                                    if poem.get(k))
                    body = poem.get("paragraphs") or poem.get("content")
                    body = body if isinstance(body, list) else [body]
                    blocks.append("\n".join([head, *map(str, body)]).strip())
                yield (package, "\n\n".join(blocks),
                       npm_url(package, version, f"{path}#{start}"), lang)


def drop_seen_paragraphs(text, seen):
    """`text` without its long paragraphs (lines) that an earlier document had; records the new ones."""
    kept = []
    for line in text.split("\n"):
        if len(line.encode()) >= MIN_DEDUP_PARAGRAPH_BYTES:
            digest = hashlib.sha256(line.encode()).digest()[:16]
            if digest in seen:
                continue
            seen.add(digest)
        kept.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(kept)).strip()


def main():
    src, shared, out = sys.argv[1:]
    seen_docs, seen_paragraphs, docs = set(), set(), []
    sources = {}
    for generator in (shared_corpus(shared), debian_handbook(src), python_doc(src), manpages(src), quran(src),
                      poems(src)):
        for source, text, url, lang in generator:
            stat = sources.setdefault(source, {"documents": 0, "bytes_in": 0, "bytes": 0,
                                               "dropped_documents": 0})
            stat["bytes_in"] += len(text.encode())
            digest = hashlib.sha256(text.encode()).digest()
            if digest in seen_docs or not text.strip():
                stat["dropped_documents"] += 1
                continue
            seen_docs.add(digest)
            text = drop_seen_paragraphs(text, seen_paragraphs)
            if not text:
                stat["dropped_documents"] += 1
                continue
            stat["documents"] += 1
            stat["bytes"] += len(text.encode())
            docs.append((text, url, lang))
    # Cutting paragraphs could make two documents equal again: dedup once more on the final texts.
    unique, final = set(), []
    for doc in docs:
        digest = hashlib.sha256(doc[0].encode()).digest()
        if digest not in unique:
            unique.add(digest)
            final.append(doc)
    random.Random(SEED).shuffle(final)

    os.makedirs(os.path.join(out, "parquet"))
    file_docs, file_bytes, index = [], 0, 0

    def flush():
        nonlocal file_docs, file_bytes, index
        texts, urls, langs = zip(*file_docs)
        table = pa.table({"text": list(texts), "id": [f"<urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, u)}>" for u in urls],
                          "url": list(urls), "language": list(langs)})
        pq.write_table(table, os.path.join(out, "parquet", f"train-{index:05d}.parquet"),
                       row_group_size=ROWS_PER_GROUP, compression="snappy")
        file_docs, file_bytes, index = [], 0, index + 1

    for doc in final:
        file_docs.append(doc)
        file_bytes += len(doc[0].encode())
        if file_bytes >= BYTES_PER_FILE:
            flush()
    if file_docs:
        flush()

    languages = {}
    for text, _, lang in final:
        languages[lang] = languages.get(lang, 0) + len(text.encode())
    summary = {"documents": len(final), "text_bytes": sum(len(t.encode()) for t, _, _ in final), "files": index,
               "sources": sources, "language_bytes": dict(sorted(languages.items(), key=lambda kv: -kv[1]))}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2, ensure_ascii=False)
    print(f"unique-corpus: {summary['documents']} unique documents, {summary['text_bytes'] / 1e6:.1f} MB of "
          f"text, {index} files, {len(languages)} languages", file=sys.stderr)
    for name, stat in sources.items():
        print(f"  {name:34} {stat['documents']:7} docs {stat['bytes'] / 1e6:7.2f} MB "
              f"(of {stat['bytes_in'] / 1e6:.2f} MB; {stat['dropped_documents']} documents dropped as repeats)",
              file=sys.stderr)


if __name__ == "__main__":
    main()
