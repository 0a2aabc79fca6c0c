"""The methods: one sub-package per paper, each with a config, the method and a CLI group.

Importing this package registers every built-in method in ``blackbox.registry.methods`` as a
:class:`~blackbox.methods.base.MethodInfo` (import paths of its CLI group and of its
:class:`~blackbox.methods.base.Method` class, and a one-line summary) without importing torch;
the method itself is imported when used. Third-party methods register through the
``blackbox.methods`` entry-point group with a ``MethodInfo`` of their own.
"""

from __future__ import annotations

from blackbox.registry import methods as _registry

from .base import Method, MethodInfo  # noqa: F401 - the protocol's public home is here too

BUILTIN = (
    MethodInfo("blackvip", "blackbox.methods.blackvip", "blackvip",
               "BlackVIP: input-dependent visual prompts trained with SPSA-GC against a black-box image classifier",
               cli="blackbox.methods.blackvip.cli:app", method="blackbox.methods.blackvip.method:BlackVIPMethod",
               capabilities=("probs|logits",)),
    MethodInfo("eco", "blackbox.methods.eco", "unlearn",
               "ECO: unlearning by embedding-corrupted prompts behind a calibrated gate",
               cli="blackbox.methods.eco.cli:app", method="blackbox.methods.eco.method:EcoMethod",
               capabilities=("inputs_embeds", "text")),
    MethodInfo("crosstune", "blackbox.methods.crosstune", "crosstune",
               "CrossTune: label-enhanced cross-attention heads over black-box LM features",
               cli="blackbox.methods.crosstune.cli:app", method="blackbox.methods.crosstune.method:CrossTuneMethod",
               capabilities=("hidden_states|embed",)),
    MethodInfo("fusion", "blackbox.methods.fusion", "fuse",
               "Logit fusion: proxy-tuning and dynamic KL-constrained weak-to-strong fusion at decode time",
               cli="blackbox.methods.fusion.cli:app", method="blackbox.methods.fusion.method:FusionMethod",
               capabilities=("logits|top_logprobs",)),
)

for _info in BUILTIN:
    _registry.register(_info.name, _info, summary=_info.summary)
