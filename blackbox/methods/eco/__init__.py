"""ECO: unlearning by embedding-corrupted prompts (see docs/eco.md)."""
