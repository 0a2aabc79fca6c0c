"""ECO with a tokenizer shipped without a chat template (Gemma GGUF), and the library path
through a Client (issue 19, items 2 and 4)."""

from __future__ import annotations

import pytest

from needs import need

torch = need("torch", hint="pip install torch==2.13.0")
need("transformers", "sklearn", hint="the llm extra: pip install -e '.[llm]'")
torch.set_num_threads(1)

from tiny_lm import tiny_llama, tiny_tokenizer  # noqa: E402

from blackbox.errors import ConfigError  # noqa: E402
from blackbox.methods.eco.chat import CHAT_TEMPLATES, install, known_format  # noqa: E402
from blackbox.methods.eco.config import EcoConfig  # noqa: E402

COUNTRIES = ["France", "Germany", "Spain", "Italy", "Norway", "Sweden", "Poland", "Greece", "Egypt", "Kenya",
             "Peru", "Chile", "Brazil", "Canada", "Mexico", "Japan"]
FORGET = ["France", "Peru"]
TEMPLATES = ["What is the capital of {c}?", "Which city is the capital of {c}?"]
GENERAL = ["how do I bake bread", "what is two plus two", "write a haiku about rain", "tell me a joke"]


def _gemma_like():
    """A tiny LM whose tokenizer has Gemma's turn tokens but no chat template (as the Gemma GGUF)."""
    from blackbox.providers.hf_causal import HFCausalProvider

    tok = tiny_tokenizer([t.format(c=c) for t in TEMPLATES for c in COUNTRIES] * 2 + GENERAL * 3 + ["user model"] * 5)
    tok.add_special_tokens({"additional_special_tokens": ["<start_of_turn>", "<end_of_turn>"]})
    return HFCausalProvider.from_model(tiny_llama(tok, ctx=128), tok, max_batch=4)


@pytest.fixture(scope="module")
def lm():
    out = _gemma_like()
    install(out, None)  # the fallback: Gemma's template (the rows below are asked through it)
    return out


def _rows(lm, countries):
    from blackbox.types import GenerateRequest

    prompts = [(t.format(c=c), c) for c in countries for t in TEMPLATES]
    outs = lm.generate(GenerateRequest(tuple(p for p, _ in prompts), max_tokens=3, stop=("\n",), chat=True)).texts
    return [{"prompt": p, "target": c, **({"answer": o.split()[0]} if o.split() else {})} for (p, c), o in zip(prompts, outs)]


def test_gemma_turn_tokens_select_gemma_format_and_render_its_template():
    lm = _gemma_like()
    assert lm.tokenizer.chat_template is None and known_format(lm.tokenizer) == "gemma"
    assert install(lm, None) == "gemma"
    text = lm.prompt_text("What is the capital of Peru?", chat=True)
    assert text == "<s><start_of_turn>user\nWhat is the capital of Peru?<end_of_turn>\n<start_of_turn>model\n"
    sys_text = lm.tokenizer.apply_chat_template([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}],
                                                tokenize=False, add_generation_prompt=True)
    assert sys_text == "<s><start_of_turn>user\nBe brief.\n\nHi<end_of_turn>\n<start_of_turn>model\n"
    # a tokenizer with a template of its own keeps it; one without known turn tokens gets none
    own = tiny_tokenizer(["a b c"] * 5, chat=True)
    plain = tiny_tokenizer(["a b c"] * 5)

    class P:
        def __init__(self, tok):
            self.tokenizer = tok

    assert install(P(own), None) is None and own.chat_template != CHAT_TEMPLATES["gemma"]
    assert install(P(plain), None) is None and not plain.chat_template


def test_chat_template_option_is_validated_in_one_line():
    with pytest.raises(ConfigError, match=r"^chat_template: expected one of gemma or a Jinja chat template, received 'llama9'$"):
        EcoConfig(chat_template="llama9")
    assert EcoConfig(chat_template="{{ messages[0]['content'] }}").chat_template.startswith("{{")


def test_fit_on_a_gemma_like_tokenizer_uses_the_gemma_template_and_stores_it(lm, tmp_path):
    from blackbox.methods.eco.job import fit, load_guarded

    fresh = _gemma_like()  # no template installed yet
    others = [c for c in COUNTRIES if c not in FORGET]
    forget, retain = _rows(lm, FORGET), _rows(lm, others)
    cfg = EcoConfig(fpr=0.2, max_new_tokens=3, tokens="all_but_last", allow_nothing_known=True, bisect_steps=1,
                    max_strength=0.4, verify_unflagged=False)
    art = fit(fresh, forget, retain, tmp_path / "run", general=[{"prompt": g} for g in GENERAL], config=cfg).artifact
    assert art["config"]["chat"] is True and art["config"]["chat_template"] == "gemma"
    # a later process: the run installs the template on a tokenizer that lacks it
    again = _gemma_like()
    guarded = load_guarded(tmp_path / "run", provider=again)
    assert again.tokenizer.chat_template == CHAT_TEMPLATES["gemma"]
    assert guarded.base.prompt_text("Hi", chat=True).endswith("<start_of_turn>model\n")


def test_library_fit_and_load_guarded_query_through_a_client_with_identical_results(lm, tmp_path):
    from blackbox.client import Client, Ledger
    from blackbox.methods.eco.job import evaluate, fit, load_guarded

    others = [c for c in COUNTRIES if c not in FORGET]
    forget, retain = _rows(lm, FORGET), _rows(lm, others)
    cfg = EcoConfig(fpr=0.2, max_new_tokens=3, tokens="all_but_last", allow_nothing_known=True, bisect_steps=2)
    gen = [{"prompt": g} for g in GENERAL]
    bare = fit(lm, forget, retain, tmp_path / "bare", general=gen, config=cfg)
    ledger = Ledger()
    wrapped = fit(Client(lm, ledger=ledger), forget, retain, tmp_path / "client", general=gen, config=cfg)
    strip = lambda a: {k: v for k, v in a.items() if k != "timing"}  # noqa: E731
    assert strip(bare.artifact) == strip(wrapped.artifact)
    assert (tmp_path / "bare" / "evals.jsonl").read_text() == (tmp_path / "client" / "evals.jsonl").read_text()
    # the bare provider was queried through a Client of the fit's own: same queries counted
    assert isinstance(bare.ledger, Ledger) and bare.ledger.queries == ledger.queries > 0
    guarded = load_guarded(tmp_path / "bare", provider=lm)
    assert isinstance(guarded.client, Client) and guarded.client.ledger.queries == 0 and guarded.base is lm
    report = evaluate(guarded, forget, retain)
    assert guarded.client.ledger.queries > 0
    other = evaluate(load_guarded(tmp_path / "client", provider=Client(lm, ledger=Ledger())), forget, retain)
    timing = ("gate_ms_per_prompt",)
    assert {k: v for k, v in report.items() if k not in timing} == {k: v for k, v in other.items() if k not in timing}
