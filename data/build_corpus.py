"""Builds the bundled corpus `data/corpus/{zh,en,code}.jsonl.gz` from Debian packages.

    apt-get update && apt-get download fortunes-zh manpages-zh debian-reference-zh-cn python3.11-doc
    for f in *.deb; do dpkg -x "$f" /tmp/deb/x; done
    python data/build_corpus.py --root=/tmp/deb/x

(`python3-doc` is a metapackage; the text is in `python3.11-doc`.) Without `--root` the script
downloads and unpacks the packages itself into a temporary directory (needs apt-get). Every file
is selected in sorted order under fixed byte budgets, so the output is deterministic. One JSON
object per line: `{"text": ..., "source": <package>:<path>}`. Sources and licenses: data/README.md.
"""

from __future__ import annotations

import argparse
import glob
import gzip
import json
import os
import re
import subprocess
import tempfile

PACKAGES = ("fortunes-zh", "manpages-zh", "debian-reference-zh-cn", "python3.11-doc")
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "corpus")
# Uncompressed byte budgets per source (the whole corpus stays a few MB).
BUDGET = {"fortunes": 700_000, "poems": 130_000, "debref": 600_000, "man": 450_000,
          "pydoc": 1_200_000, "code": 450_000}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _utf8(b: bytes) -> str:
    return b.decode("utf-8", errors="replace").replace("\r\n", "\n")


def fortunes(root: str):
    """Each `%`-separated fortune is a document (poems, sayings); ANSI colour codes removed."""
    base = f"{root}/usr/share/games/fortunes"
    for name, budget in (("tang300", "poems"), ("song100", "poems"), ("chinese", "fortunes")):
        with open(f"{base}/{name}", "rb") as f:
            text = _ANSI.sub("", _utf8(f.read()))
        for part in text.split("\n%\n"):
            part = part.strip("\n")
            if part.strip():
                yield budget, part, f"fortunes-zh:/usr/share/games/fortunes/{name}"


def debian_reference(root: str):
    """The plain-text Debian Reference (zh-cn), split at numbered section headings."""
    path = f"{root}/usr/share/debian-reference/debian-reference.zh-cn.txt.gz"
    with gzip.open(path, "rb") as f:
        text = _utf8(f.read()).replace("\u00a0", " ")
    # Table-of-contents lines also start with a number; they come out shorter than 200 chars.
    sections = re.split(r"\n(?=\d+\.\d+(?:\.\d+)*\. \S)", text)
    for s in sections:
        s = re.sub(r"\n{3,}", "\n\n", s).strip()
        if len(s) > 200:
            yield "debref", s, "debian-reference-zh-cn:/usr/share/debian-reference/debian-reference.zh-cn.txt.gz"


def _roff_to_text(src: str) -> str:
    out = []
    for line in src.split("\n"):
        if line.startswith(".\\\"") or line.startswith("'\\\""):
            continue
        if line.startswith("."):
            m = re.match(r"\.(SH|SS|B|I|BI|BR|IR|IB|RB|RI)\s+(.*)", line)
            if not m:
                continue
            line = m.group(2).strip('"')
        line = re.sub(r"\\f[BIRP]|\\f\(..|\\[/,&]", "", line)
        line = line.replace("\\-", "-").replace("\\e", "\\").replace("\\ ", " ")
        out.append(line)
    return re.sub(r"\n{3,}", "\n\n", "\n".join(out)).strip()


def manpages(root: str):
    """zh_CN section 1 man pages, roff markup stripped, one page per document."""
    for path in sorted(glob.glob(f"{root}/usr/share/man/zh_CN/man1/*.gz")):
        with gzip.open(path, "rb") as f:
            text = _roff_to_text(_utf8(f.read()))
        if len(text) > 200:
            yield "man", text, "manpages-zh:" + path[len(root):]


_CODE_DIRECTIVE = re.compile(r"^\s*\.\. (code-block|testcode|literalinclude)::\s*(python3?)?\s*$")


def _code_blocks(rst: str):
    """Literal blocks (after `::` or `.. code-block:: python`) holding Python, dedented."""
    lines = rst.split("\n")
    i = 0
    while i < len(lines):
        line = lines[i]
        opens = line.rstrip().endswith("::") and not line.strip().startswith("..")
        opens = opens or bool(_CODE_DIRECTIVE.match(line))
        i += 1
        if not opens:
            continue
        while i < len(lines) and (not lines[i].strip() or lines[i].lstrip().startswith(":")):
            i += 1
        block = []
        while i < len(lines) and (not lines[i].strip() or lines[i].startswith((" ", "\t"))):
            block.append(lines[i])
            i += 1
        indent = min((len(b) - len(b.lstrip()) for b in block if b.strip()), default=0)
        code = "\n".join(b[indent:] for b in block).strip("\n")
        if re.search(r"^(def |class |import |from |for |if |while |with |>>> )", code, re.M):
            yield code


def python_docs(root: str):
    """English prose (tutorial, howto, faq, reference, library) and the Python code inside it."""
    base = f"{root}/usr/share/doc/python3.11/html/_sources"
    for sub in ("tutorial", "howto", "faq", "reference", "library"):
        for path in sorted(glob.glob(f"{base}/{sub}/*.rst.txt")):
            with open(path, "rb") as f:
                text = _utf8(f.read())
            src = "python3.11-doc:" + path[len(root):]
            yield "pydoc", text.strip(), src
            blocks = list(_code_blocks(text))
            if blocks:
                yield "code", "\n\n\n".join(blocks), src


def build(root: str) -> dict[str, int]:
    used = {k: 0 for k in BUDGET}
    docs = {"zh": [], "en": [], "code": []}
    lang = {"fortunes": "zh", "poems": "zh", "debref": "zh", "man": "zh", "pydoc": "en", "code": "code"}
    for gen in (fortunes, debian_reference, manpages, python_docs):
        for budget, text, source in gen(root):
            n = len(text.encode("utf-8"))
            if used[budget] + n > BUDGET[budget]:
                continue
            used[budget] += n
            docs[lang[budget]].append({"text": text, "source": source})
    os.makedirs(OUT, exist_ok=True)
    for name, rows in docs.items():
        path = os.path.join(OUT, f"{name}.jsonl.gz")
        # mtime=0: the same input gives byte-identical output.
        with open(path, "wb") as raw, gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) as f:
            for row in rows:
                f.write((json.dumps(row, ensure_ascii=False) + "\n").encode("utf-8"))
        print(f"{path}: {len(rows)} documents, {os.path.getsize(path):,} bytes compressed")
    return used


def _download(tmp: str) -> str:
    subprocess.run(["apt-get", "download", *PACKAGES], cwd=tmp, check=True)
    root = os.path.join(tmp, "x")
    for deb in sorted(glob.glob(f"{tmp}/*.deb")):
        subprocess.run(["dpkg", "-x", deb, root], check=True)
    return root


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--root", default="", help="directory the .deb packages were extracted into (dpkg -x)")
    args = p.parse_args()
    if args.root:
        used = build(args.root)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            used = build(_download(tmp))
    print({k: f"{v:,} B" for k, v in used.items()})


if __name__ == "__main__":
    main()
