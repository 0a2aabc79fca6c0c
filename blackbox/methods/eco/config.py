"""ECO's configuration: every setting of a fit besides the model and the data (stored in the artifact)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from blackbox.config import Config
from blackbox.errors import bad_value

from .corruption import CORRUPTIONS, SELECTIONS
from .gate import SCOPES
from .search import SEARCHES


@dataclass(frozen=True)
class EcoConfig(Config):
    """Everything a fit depends on besides the model and the data (stored in the artifact)."""

    corruption: str = field(default="gaussian_first_n", metadata={"help": 'Corruption family (see blackbox.methods.eco.corruption).'})
    tokens: str = field(default="entity", metadata={"help": "Which tokens to corrupt: 'entity' (the target's tokens) or 'all_but_last'."})
    dims: int | None = field(default=None, metadata={"help": 'Embedding dimensions touched by the gaussian families (None: all).'})
    search: str = field(default="bracket", metadata={"help": "Strength search: 'bracket' (bracket then bisect), 'central' (central differences with a floor), 'vector'."})
    start: float = field(default=0.05, metadata={"help": 'Initial strength.'})
    grow: float = field(default=2.0, metadata={"help": 'Bracket growth factor.'})
    max_strength: float | None = field(default=None, metadata={"help": 'Largest strength tried (None: unbounded; fraction families stop at 1).'})
    bisect_steps: int = field(default=6, metadata={"help": 'Bisection steps on the cliff (the bracket search).'})
    rtol: float = field(default=0.05, metadata={"help": 'Relative width at which bisection stops.'})
    eps: float = field(default=0.1, metadata={"help": 'Central-difference probe offset.'})
    lr: float = field(default=100.0, metadata={"help": 'Central-difference step size (the reference uses 100 on a 0–1 accuracy objective).'})
    floor: float = field(default=1e-3, metadata={"help": 'Smallest strength the central-difference rule may step to.'})
    max_step: float | None = field(default=0.1, metadata={"help": 'Clip on one central-difference step (None: the unclipped reference rule).'})
    max_steps: int = field(default=10, metadata={"help": 'Central-difference steps.'})
    objective: str = field(default="accuracy", metadata={"help": "'accuracy': forget-set accuracy down to target_accuracy; 'divergence': mean per-token NLL of target_text at most max_divergence."})
    target_accuracy: float = field(default=0.0, metadata={"help": 'Forget accuracy to reach (chance; 0 for open answers).'})
    tol: float = field(default=0.0, metadata={"help": 'Slack on the target: met when accuracy <= target_accuracy + tol.'})
    target_text: str = field(default=" I don't know.", metadata={"help": 'Target output for the divergence objective (e.g. a refusal).'})
    max_divergence: float = field(default=2.0, metadata={"help": "Divergence objective: met when the target text's mean per-token NLL is at most this."})
    max_new_tokens: int = field(default=8, metadata={"help": 'Greedy tokens generated to check an answer.'})
    stop: tuple[str, ...] = field(default=("\n",), metadata={"help": 'Stop strings for generation.'})
    fpr: float = field(default=0.01, metadata={"help": 'Gate false-positive level (calibrated, split-conformal).'})
    calibration_fraction: float = field(default=0.5, metadata={"help": 'Share of retain/general prompts held out to calibrate the gate threshold.'})
    exact_match: bool = field(default=True, metadata={"help": 'Gate flags every prompt naming a forget target or alias.'})
    encoder: str | None = field(default=None, metadata={"help": "Encoder provider spec for gate features (e.g. 'sentence-encoder:minilm'); None: lexical only."})
    seed: int = field(default=0, metadata={"help": 'Seed of the data split, the gate and the corruption noise.'})
    scope: str = field(default="entity", metadata={"help": "What is forgotten: 'entity' (everything about each forget target), 'fact' (only the facts the forget prompts ask: the prompt must name the target and ask that fact), 'topic' (a subject area naming no entity: a classifier on sentence embeddings decides; encoder defaults to sentence-encoder:minilm)."})
    builtin_general: bool = field(default=True, metadata={"help": "Join the project's built-in general prompts (248 everyday questions and tasks, blackbox/methods/eco/general_prompts.txt; those naming a forget target are dropped) to the gate's negatives and calibration pool, so a small retain file still calibrates a low --fpr. They are never sent to the model."})
    chat: bool | None = field(default=None, metadata={"help": "Put every prompt in the model's chat template, for knowledge scoring, search and use alike (None: auto, when the tokenizer has a chat template)."})
    chat_template: str | None = field(default=None, metadata={"help": "Chat template for a tokenizer without one: 'gemma' (Gemma's <start_of_turn> turns) or a Jinja template. None: the tokenizer's own; when it has none, a well-known format recognised by its turn tokens (Gemma) is used and stored here."})
    allow_nothing_known: bool = field(default=False, metadata={"help": "Finish (strength left at start) when the model knows none of the forget answers; default: refuse, since nothing would be forgotten."})
    verify_unflagged: bool = field(default=True, metadata={"help": "Regenerate every prompt through the guarded model after fitting. False: only flagged prompts are regenerated (an unflagged prompt goes to the base model's plain call, so its output is the base output) and general prompts are not generated at all; cheaper."})

    def __post_init__(self) -> None:
        if self.corruption not in CORRUPTIONS:
            raise bad_value("corruption", f"one of {', '.join(CORRUPTIONS)}", self.corruption)
        if self.tokens not in SELECTIONS:
            raise bad_value("tokens", f"one of {', '.join(SELECTIONS)}", self.tokens)
        if self.search not in SEARCHES:
            raise bad_value("search", f"one of {', '.join(SEARCHES)}", self.search)
        if self.objective not in ("accuracy", "divergence"):
            raise bad_value("objective", "'accuracy' or 'divergence'", self.objective)
        if not 0 <= self.target_accuracy <= 1:
            raise bad_value("target_accuracy", "a number in [0, 1]", self.target_accuracy)
        if not 0 < self.calibration_fraction < 1:
            raise bad_value("calibration_fraction", "a number in (0, 1)", self.calibration_fraction)
        if not 0 < self.fpr < 1:
            raise bad_value("fpr", "a false-positive level in (0, 1)", self.fpr)
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise bad_value("max_new_tokens", "a positive int", self.max_new_tokens)
        if self.start <= 0:
            raise bad_value("start", "a strength > 0", self.start)
        object.__setattr__(self, "stop", tuple(self.stop))
        if self.scope not in SCOPES:
            raise bad_value("scope", f"one of {', '.join(SCOPES)}", self.scope)
        if self.scope == "topic" and self.encoder is None:
            object.__setattr__(self, "encoder", "sentence-encoder:minilm")  # a topic gate needs meaning, not names
        if self.chat_template is not None:
            from .chat import template_text

            template_text(self.chat_template)  # a known name or a Jinja template, else one line saying which
        if self.chat and self.objective == "divergence":
            raise bad_value("objective", "'accuracy' with chat=true (the divergence objective scores raw text only)", self.objective)

    def to_json(self) -> dict[str, Any]:
        """Plain JSON types (stored in the artifact)."""
        return self.to_dict()
