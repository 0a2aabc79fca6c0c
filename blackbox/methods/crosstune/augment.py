"""LLM augmentation by in-context learning, saved line by line so it can resume.

For each class ``c`` and each ``i < n``, the generator (any provider with ``text``) sees a
prompt listing ``augment_shots`` few-shot examples of class ``c`` (picked with the seed
``(seed, c, i)``) and its description, and writes one more. Prompts go to the generator in
fixed chunks of ``batch_size``, each sampled with a seed derived from ``(seed, chunk)``, so an interrupted generation resumes where it
stopped and ends identical to an uninterrupted one; the client's cache also makes a re-run
free. Each result is appended to ``augment.jsonl`` (one JSON line, flushed and fsynced) as

    {"i": 3, "label": "positive", "raw": "...", "text": "..." | null, "status": "ok" | "unparsed",
     "shown": ["few-shot text", ...]}

``shown`` (the prompt's few-shot examples) lets :meth:`CrossTuneClassifier.fit` keep an
example out of the fold heads validated on one of its sources: a generation paraphrases
its prompt's examples, and would otherwise leak them into their own validation fold.

Unparseable generations (empty, too short, a copy of a prompt example, only punctuation)
are counted and dropped, never raised.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from blackbox.client import Client, Ledger
from blackbox.errors import CapabilityError, bad_value
from blackbox.provider import Provider, fmt_caps, load_provider
from blackbox.types import Capability, GenerateRequest

AUGMENT_FILE = "augment.jsonl"
_BULLET = re.compile(r"^\s*(?:[-*•]|\d+[.)]|text:|example:)\s*", re.IGNORECASE)


def generator_client(provider: "str | Provider | Client", cache: Any = None, what: str = "augmentation",
                     max_queries: int | None = None) -> Client:
    """A client for a provider that must offer ``text`` (checked before any query); a new
    client's ledger refuses calls past ``max_queries``."""
    if isinstance(provider, str):
        provider = load_provider(provider)
    client = provider if isinstance(provider, Client) else Client(provider, cache=cache, ledger=Ledger(max_queries=max_queries))
    if Capability.TEXT not in set(client.capabilities):
        raise CapabilityError(
            f"crosstune {what}: needs text, but provider {client.name} has only {fmt_caps(client.capabilities)}; "
            "built-in providers with it: hf-causal, openai"
        )
    if client.ledger is None:
        client.ledger = Ledger()
    return client


def build_prompt(label: str, description: str, examples: Sequence[str]) -> str:
    """The in-context prompt for one new example of ``label``."""
    lines = [f"Examples of texts with the label \"{label}\" ({description}):"]
    lines += [f"- {' '.join(e.split())}" for e in examples]
    lines.append("-")
    return "\n".join(lines)


def first_line(raw: Any, prefix: "re.Pattern[str]") -> str | None:
    """The first non-empty line of ``raw`` with ``prefix`` (a bullet, a field name) and
    surrounding quotes stripped; None for a non-string or blank answer."""
    if not isinstance(raw, str):
        return None
    for line in raw.splitlines():
        line = prefix.sub("", line).strip().strip('"').strip("'").strip()
        if line:
            return line
    return None


def parse_generation(raw: str, examples: Sequence[str], min_chars: int = 8) -> str | None:
    """The generated example in ``raw`` (first non-empty line, bullet/quotes stripped), or None."""
    line = first_line(raw, _BULLET)
    if line is None:
        return None
    if len(line) < min_chars or not re.search(r"[A-Za-z]", line):
        return None
    norm = " ".join(line.lower().split())
    if any(norm == " ".join(e.lower().split()) for e in examples):
        return None
    return line


def read_augment_file(path: Path) -> list[dict[str, Any]]:
    """Complete lines of ``augment.jsonl`` (a torn last line is ignored)."""
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            obj = json.loads(line)
        except json.JSONDecodeError:
            break
        if not isinstance(obj, dict) or "label" not in obj or "i" not in obj:
            break
        out.append(obj)
    return out


def _plan(classes: Sequence[str], n: int) -> list[tuple[str, int]]:
    return [(c, i) for i in range(n) for c in classes]  # interleaved: a partial run covers every class


def generate_examples(
    client: Client,
    texts: Sequence[str],
    labels: Sequence[str],
    descriptions: dict[str, str],
    *,
    n_per_class: int,
    seed: int = 0,
    shots: int = 4,
    temperature: float = 0.8,
    max_tokens: int = 48,
    path: str | Path | None = None,
    batch_size: int = 8,
    progress: Callable[[int, int], None] | None = None,
    stop_after: int | None = None,
) -> dict[str, Any]:
    """Generate ``n_per_class`` examples per class; resume from ``path`` when it has lines.

    Returns ``{"examples": [(text, label)], "generated", "unparsed", "records", "queries"}``.
    ``stop_after`` ends early once that many new records are written (at a chunk boundary;
    for tests of resume).
    """
    if isinstance(n_per_class, bool) or not isinstance(n_per_class, int) or n_per_class < 0:
        raise bad_value("augment_n", "an integer >= 0", n_per_class)
    classes = sorted(set(labels))
    by_class = {c: [t for t, y in zip(texts, labels) if y == c] for c in classes}
    plan = _plan(classes, n_per_class)
    file = Path(path) if path is not None else None
    records = read_augment_file(file) if file is not None else []
    if file is not None and file.is_file():
        # drop a torn tail, so appends start on a clean line
        file.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records), encoding="utf-8")
    for k, r in enumerate(records[: len(plan)]):
        if (r["label"], r["i"]) != plan[k]:
            raise bad_value(f"{file}", "generated examples of this run's classes and order", f"line {k + 1} is {r['label']!r} #{r['i']}")
    # Requests go in fixed chunks of ``batch_size`` (one sampled request per chunk, seeded by
    # the chunk's index), so a resumed run restarts at the last complete chunk.
    records = records[: len(plan)]
    if len(records) < len(plan):
        records = records[: len(records) - len(records) % batch_size]
        if file is not None:
            file.write_text("".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in records), encoding="utf-8")
    q0 = client.ledger.queries if client.ledger is not None else 0
    if progress:
        progress(len(records), len(plan))
    fh = file.open("a", encoding="utf-8") if file is not None else None
    new = 0
    try:
        for start in range(len(records), len(plan), batch_size):
            if stop_after is not None and new >= stop_after:
                break
            chunk = plan[start : start + batch_size]
            prompts, shown = [], []
            for c, i in chunk:
                pool = by_class[c]
                rng = np.random.default_rng([seed, classes.index(c), i, 5])
                ex = [pool[j] for j in rng.choice(len(pool), size=min(shots, len(pool)), replace=False)]
                shown.append(ex)
                prompts.append(build_prompt(c, descriptions.get(c, c), ex))
            chunk_seed = int(np.random.SeedSequence([seed, start // batch_size, 13]).generate_state(1)[0] >> 1)
            req = GenerateRequest(prompts=tuple(prompts), max_tokens=max_tokens, temperature=temperature, stop=("\n",), seed=chunk_seed)
            # A failed call raises (it is not a bad generation); what came before is saved.
            results = list(client.generate(req).texts)
            for (c, i), ex, raw in zip(chunk, shown, results):
                raw = raw if isinstance(raw, str) else ""
                text = parse_generation(raw, ex)
                rec = {"i": i, "label": c, "raw": raw, "text": text, "status": "ok" if text else "unparsed", "shown": list(ex)}
                records.append(rec)
                if fh is not None:
                    fh.write(json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n")
                    fh.flush()
                    os.fsync(fh.fileno())
                new += 1
            if progress:
                progress(len(records), len(plan))
    finally:
        if fh is not None:
            fh.close()
    examples = [(r["text"], r["label"]) for r in records if r.get("text")]
    return {
        "examples": examples,
        # the few-shot texts each example's prompt showed (None for lines saved without them)
        "sources": [r.get("shown") for r in records if r.get("text")],
        "generated": len(records),
        "parsed": len(examples),
        "unparsed": sum(1 for r in records if not r.get("text")),
        "complete": len(records) == len(plan),
        "queries": (client.ledger.queries - q0) if client.ledger is not None else None,
        "records": records,
    }
