"""The ECO benchmark's prompt sets (bench/eco.py): plain questions from countryinfo, no few-shot wrapping.

Everything here is model-free and seeded. Templates were written before any result was seen;
held-out templates are never used in a fit. Countries are split once: a *fit pool* (probed
for knowledge; forget and retain entities come from it) and *unseen* countries (never in a
fit), the latter halved into a dev half (the only prompts any gate choice looked at) and a
test half (reported).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

# entity scope: the capital of a country
TRAIN_TEMPLATES = ("What is the capital of {c}?", "Which city is the capital of {c}?")
HELDOUT_TEMPLATES = (
    "Name the capital city of {c}.",
    "{c}'s capital is which city?",
    "Tell me the capital of {c}.",
    "I'm curious: what city is {c}'s capital?",
)
# other facts about a country: same-entity collateral (fact scope keeps them)
SAME_TEMPLATES = (("On which continent is {c}?", "continent"), ("What do you call a person from {c}?", "demonym"))
# topic scope: where a country lies (continent questions), against capitals and everything else
TOPIC_TRAIN = ("Which continent is {c} in?", "On what continent is {c} located?", "{c} is part of which continent?")
TOPIC_HELDOUT = (
    "In which part of the world, by continent, would I find {c}?",
    "Tell me the continent where {c} lies.",
    "If I fly to {c}, which continent do I land on?",
)
CONTINENTS = ("Africa", "Asia", "Europe")  # countryinfo regions answered by one word (Americas/Oceania are not)
EVERYDAY_COMPLETION = (
    "What colour is the sky?", "How many legs does a spider have?", "What do bees make?", "What is the boiling point of water?",
    "Who wrote Romeo and Juliet?", "What is the largest ocean?", "How many days are in a week?", "What gas do plants breathe in?",
    "What is the opposite of hot?", "What animal says moo?", "How many hours are in a day?", "What is frozen water called?",
    "Which planet is closest to the sun?", "What is the tallest animal?", "What do you call a baby dog?", "How many months are in a year?",
    "What is the main ingredient of bread?", "Which season comes after winter?", "What shape has three sides?", "What do cows drink?",
    "Who painted the Mona Lisa?", "What is the chemical symbol for gold?", "How many continents are there?", "What is the fastest land animal?",
    "What language is this sentence written in?", "What instrument has 88 keys?", "What is the currency of the internet age?",
    "How many players are on a football team?", "What is the square root of 81?", "What metal is liquid at room temperature?",
)
"""Everyday questions of the completion-style benchmark (bench/eco_completion.py), unchanged."""
# chat benchmark: without the two odd ones (a currency question reads as a country fact), plus tasks
EVERYDAY = tuple(q for q in EVERYDAY_COMPLETION if "currency" not in q and "this sentence" not in q) + (
    "Translate 'thank you' into French.", "Write a haiku about rain.", "Give me a synonym for happy.", "Explain what a noun is.",
    "Summarise the plot of Cinderella in one sentence.", "What is the largest planet in our solar system?",
    "How do I boil an egg?", "Name three primary colours.",
)


@dataclass(frozen=True)
class Country:
    name: str
    capital: str
    region: str
    demonym: str


def countries() -> list[Country]:
    """Countries from countryinfo with a simple name, a one-string capital, a region and a demonym."""
    import countryinfo

    out = {}
    for c in countryinfo.all_countries():
        try:
            info = c.info()
        except Exception:  # noqa: BLE001 - a few entries lack fields
            continue
        name, cap = info.get("name"), info.get("capital")
        if isinstance(cap, list):
            cap = cap[0] if cap else None
        if not name or not isinstance(cap, str) or not cap.strip() or "(" in name or "," in name:
            continue
        name = name.strip().title() if name.islower() else name.strip()
        out[name] = Country(name, cap.strip(), str(info.get("region") or ""), str(info.get("demonym") or ""))
    return [out[k] for k in sorted(out)]


def fact_answer(c: Country, kind: str) -> str | None:
    if kind == "continent":
        return c.region if c.region in CONTINENTS else None
    return c.demonym or None


def fortunes(limit: int, rng: np.random.Generator) -> list[str]:
    """Short fortunes (Debian ``fortunes``) as general prompts; empty when not installed."""
    texts = []
    for f in ("science", "food", "sports", "wisdom", "computers"):
        path = f"/usr/share/games/fortunes/{f}"
        if os.path.exists(path):
            for entry in Path(path).read_text(errors="replace").split("\n%\n"):
                e = " ".join(entry.split())
                if 20 <= len(e) <= 120:
                    texts.append(e)
    if not texts:
        return []
    idx = rng.choice(len(texts), size=min(limit, len(texts)), replace=False)
    return [texts[i] for i in sorted(idx)]


def split_countries(all_c: list[Country], fit_pool: int, seed: int) -> tuple[list[Country], list[Country], list[Country]]:
    """``(fit pool, unseen dev, unseen test)``; the unseen ones never enter a fit."""
    rng = np.random.default_rng([seed, 101])
    order = [all_c[i] for i in rng.permutation(len(all_c))]
    pool, rest = order[:fit_pool], order[fit_pool:]
    return sorted(pool, key=lambda c: c.name), sorted(rest[::2], key=lambda c: c.name), sorted(rest[1::2], key=lambda c: c.name)


def general_prompts(seed: int, n_fortunes: int = 120) -> list[str]:
    """Everyday questions, arithmetic and fortunes (not the built-in set, which joins calibration)."""
    rng = np.random.default_rng([seed, 5])
    out = list(EVERYDAY)
    out += [f"What is {a} plus {b}?" for a, b in rng.integers(2, 60, size=(30, 2))]
    out += fortunes(n_fortunes, rng)
    return out


def topic_sets(pool: list[Country], known: list[Country], heldout_countries: list[Country], general_fit: list[str], topic_n: int) -> dict[str, list]:
    """The topic benchmark's fit and held-out sets (``Item``s; ``heldout_countries``: dev or test half).

    Forget: continent questions (3 training templates) about ``topic_n`` fit-pool countries.
    Retain: capital questions about the known fit-pool countries; general: ``general_fit``, the
    other fit-pool countries' capital questions and every fit-pool country's demonym question.
    Held-out: continent questions under 3 unseen templates, and the other-topic negatives (every
    capital template and the demonym question) about ``heldout_countries``.
    """
    from blackbox.methods.eco.job import Item

    cont_pool = [c for c in pool if fact_answer(c, "continent")][:topic_n]
    general = [Item(g) for g in general_fit] + [Item(TRAIN_TEMPLATES[0].format(c=c.name)) for c in pool if c not in known]
    general += [Item(t.format(c=c.name)) for c in pool for t, k in SAME_TEMPLATES if k == "demonym"]
    return {
        "forget": [Item(t.format(c=c.name), c.region) for c in cont_pool for t in TOPIC_TRAIN],
        "retain": [Item(TRAIN_TEMPLATES[0].format(c=c.name), c.capital) for c in known],
        "general": general,
        "heldout_topic": [Item(t.format(c=c.name), c.region) for c in heldout_countries if fact_answer(c, "continent") for t in TOPIC_HELDOUT],
        "other_topics": [t.format(c=c.name) for c in heldout_countries for t in TRAIN_TEMPLATES + HELDOUT_TEMPLATES]
        + [t.format(c=c.name) for c in heldout_countries for t, k in SAME_TEMPLATES if k == "demonym"],
    }
