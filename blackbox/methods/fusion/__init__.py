"""Logit fusion: proxy-tuning and dynamic weak-to-strong fusion (see docs/fusion.md)."""
