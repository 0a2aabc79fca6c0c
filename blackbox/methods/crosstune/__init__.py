"""CrossTune: label-enhanced cross-attention heads over black-box features (see docs/crosstune.md)."""
