"""The methods: one sub-package per paper, each with a config, the method and a CLI group.

Importing this package registers every built-in method in ``blackbox.registry.methods`` as a
:class:`MethodInfo` (its module, CLI group and one-line summary) without importing torch;
the method itself is imported when used. Third-party methods register through the
``blackbox.methods`` entry-point group.
"""

from __future__ import annotations

from dataclasses import dataclass

from blackbox.registry import methods as _registry


@dataclass(frozen=True)
class MethodInfo:
    """Where a method lives and how the CLI reaches it."""

    name: str
    module: str
    cli_group: str
    summary: str


BUILTIN = (
    MethodInfo("blackvip", "blackbox.methods.blackvip", "blackvip",
               "BlackVIP: input-dependent visual prompts trained with SPSA-GC against a black-box image classifier"),
    MethodInfo("eco", "blackbox.methods.eco", "unlearn",
               "ECO: unlearning by embedding-corrupted prompts behind a calibrated gate"),
    MethodInfo("crosstune", "blackbox.methods.crosstune", "crosstune",
               "CrossTune: label-enhanced cross-attention heads over black-box LM features"),
    MethodInfo("fusion", "blackbox.methods.fusion", "fuse",
               "Logit fusion: proxy-tuning and dynamic KL-constrained weak-to-strong fusion at decode time"),
)

for _info in BUILTIN:
    _registry.register(_info.name, _info, summary=_info.summary)
