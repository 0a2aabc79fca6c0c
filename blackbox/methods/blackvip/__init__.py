"""BlackVIP: input-dependent visual prompts trained with SPSA-GC (see docs/blackvip.md)."""
