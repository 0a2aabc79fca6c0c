"""blackbox: black-box and zeroth-order adaptation of pretrained models.

Importing this package is cheap: it needs numpy only and never imports torch,
transformers or openai (providers and methods import those lazily, when used).
"""

from ._version import __version__
from .errors import BlackboxError, ConfigError

__all__ = ["__version__", "BlackboxError", "ConfigError"]
