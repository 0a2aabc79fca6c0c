"""Results to bytes and back: JSON in the safetensors header, arrays as tensors; never pickle."""

from __future__ import annotations

import json
import math
from dataclasses import fields, is_dataclass
from typing import Any

import numpy as np

from ..errors import ConfigError, bad_value
from ..items import RESULT_TYPES
from ..types import Usage

__all__ = ["FORMAT", "encode_result", "decode_result"]


# =========================================================================================
# result (de)serialisation: JSON in the safetensors header, arrays as tensors; never pickle
# =========================================================================================
FORMAT = 1
_META_KEY = "blackbox.result"
_DATACLASSES: dict[str, type] = {**RESULT_TYPES, "Usage": Usage}


def encode_result(result: Any) -> bytes:
    """Bytes for any result dataclass of :mod:`blackbox.types` (JSON + safetensors, no pickle)."""
    if type(result).__name__ not in RESULT_TYPES or RESULT_TYPES[type(result).__name__] is not type(result):
        raise bad_value("result", f"one of {', '.join(RESULT_TYPES)}", f"a {type(result).__name__}")
    from safetensors.numpy import save

    arrays: dict[str, np.ndarray] = {}

    def enc(v: Any) -> Any:
        if isinstance(v, np.generic):  # before float: np.float64 is a float subclass
            return enc(v.item())
        if v is None or isinstance(v, (bool, str, int)):
            return v
        if isinstance(v, float):
            return v if math.isfinite(v) else {"$f": repr(v)}  # -inf log-probs are common
        if isinstance(v, np.ndarray):
            if v.dtype.kind not in "biuf":
                raise bad_value("result", "arrays of bool, int or float", f"an array of dtype {v.dtype}")
            a = np.ascontiguousarray(v)
            if a.dtype.byteorder == ">":
                a = a.astype(a.dtype.newbyteorder("="))
            name = f"a{len(arrays)}"
            arrays[name] = a
            return {"$a": name}
        if isinstance(v, tuple):
            return {"$t": [enc(x) for x in v]}
        if isinstance(v, list):
            return [enc(x) for x in v]
        if isinstance(v, dict):
            return {"$d": [[enc(k), enc(x)] for k, x in v.items()]}  # pairs keep the (ranked) order
        if is_dataclass(v) and _DATACLASSES.get(type(v).__name__) is type(v):
            return {"$c": type(v).__name__, "f": {f.name: enc(getattr(v, f.name)) for f in fields(v)}}
        raise bad_value("result", "fields of JSON types, numpy arrays, tuples, dicts or Usage", f"a {type(v).__name__}")

    header = {"format": FORMAT, "value": enc(result)}
    meta = json.dumps(header, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return save(arrays, metadata={_META_KEY: meta})


def decode_result(data: bytes) -> Any:
    """Rebuild a result from :func:`encode_result` bytes; only known dataclasses are created."""
    from safetensors.numpy import load

    def bad(why: str) -> ConfigError:
        return bad_value("data", f"bytes written by encode_result (format {FORMAT})", f"{len(data)} bytes ({why})")

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise bad_value("data", "bytes", f"a {type(data).__name__}")
    data = bytes(data)
    try:
        n = int.from_bytes(data[:8], "little")
        meta = json.loads(data[8 : 8 + n])["__metadata__"][_META_KEY]
        header = json.loads(meta)
        arrays = load(data)
    except Exception as exc:  # noqa: BLE001 - any corruption is the same failure
        raise bad(f"{type(exc).__name__}: {exc}") from exc
    if header.get("format") != FORMAT:
        raise bad(f"format {header.get('format')!r}")

    def dec(v: Any) -> Any:
        if isinstance(v, list):
            return [dec(x) for x in v]
        if not isinstance(v, dict):
            return v
        if "$a" in v:
            return arrays[v["$a"]]
        if "$f" in v:
            return float(v["$f"])
        if "$t" in v:
            return tuple(dec(x) for x in v["$t"])
        if "$d" in v:
            return {dec(k): dec(x) for k, x in v["$d"]}
        if "$c" in v:
            cls = _DATACLASSES.get(v["$c"])
            if cls is None:
                raise bad(f"unknown type {v['$c']!r}")
            return cls(**{k: dec(x) for k, x in v["f"].items()})
        raise bad(f"unknown tag in {sorted(v)}")

    try:
        value = dec(header["value"])
    except ConfigError:
        raise
    except Exception as exc:  # noqa: BLE001
        raise bad(f"{type(exc).__name__}: {exc}") from exc
    if type(value).__name__ not in RESULT_TYPES:
        raise bad(f"holds a {type(value).__name__}, not a result")
    return value
