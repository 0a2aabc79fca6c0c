"""Built-in providers (installed as ``blackbox.providers``).

Each adapter module registers its class at import; heavy libraries (torch, transformers,
openai) are imported only when a provider is instantiated, so listing providers is cheap.
"""

from __future__ import annotations

import importlib

from blackbox.registry import providers as _registry

# module name -> provider kind(s); modules import no heavy library at import time.
_BUILTIN_MODULES = ("torch_provider", "efficientnet", "clip_zero_shot", "hf_causal", "sentence_encoder", "openai_provider", "hf_image_api")

for _mod in _BUILTIN_MODULES:
    try:
        importlib.import_module(f"{__name__}.{_mod}")
    except ModuleNotFoundError as _exc:  # an adapter not written yet must not break the rest
        if _exc.name != f"{__name__}.{_mod}":
            raise

__all__ = ["_registry"]
