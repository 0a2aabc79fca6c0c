"""``hf-image`` provider: an HTTP image-classification endpoint in the Hugging Face Inference
API's format — image bytes in, a JSON list of ``{"label", "score"}`` for the top k out.

Spec: ``hf-image:URL?labels=imagenet&top_k=5&concurrency=8&timeout=30&token_env=HF_TOKEN``.

- One POST per image (the API's unit), encoded as an 8-bit PNG (so prompts are quantised to
  1/255, as with any real image API). Without ``top_k`` the body is the raw PNG bytes with
  ``Content-Type: image/png`` (the server's default k applies, 5 on the Hugging Face API);
  with it, JSON ``{"inputs": base64 PNG, "parameters": {"top_k": k}}``.
- ``concurrency`` requests in flight at once (threads, one keep-alive connection each).
- ``labels`` fixes the class vocabulary, hence the column order of the scores: ``imagenet``
  (the 1,000 ImageNet-1k names, duplicates suffixed " (2)"), a text file with one label per
  line, or a comma-separated list. A label the server returns outside it is an error.
- Result: ``probs`` of shape (n, len(labels)) with the returned scores and **NaN for every
  class the server did not return** (it only says they are below its k-th score). What to do
  with them is the caller's choice, made explicitly (BlackVIP spreads the remaining mass
  uniformly over them: ``blackbox.methods.blackvip.method.complete_top_k``).
- Failures: a request that fails (connection error, 5xx, 429 with ``Retry-After``, an
  unparseable body) leaves the others' results intact: the provider raises
  :class:`~blackbox.errors.PartialResultError`, and the :class:`~blackbox.client.Client`
  keeps (and caches) what arrived and retries only the failed images.
"""

from __future__ import annotations

import base64
import http.client
import io
import json
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence
from urllib.parse import urlsplit

import numpy as np

from blackbox.errors import InvalidResponseError, PartialResultError, ProviderError, TransportError, bad_value
from blackbox.provider import Provider, check_options
from blackbox.registry import providers as provider_registry
from blackbox.types import Capability, ClassifyRequest, ClassifyResult, Usage

NAME = "hf-image"


def unique_labels(names: Sequence[str]) -> list[str]:
    """``names`` with repeats made distinct: the second ``crane`` becomes ``crane (2)``."""
    seen: dict[str, int] = {}
    out = []
    for n in names:
        seen[n] = seen.get(n, 0) + 1
        out.append(n if seen[n] == 1 else f"{n} ({seen[n]})")
    return out


def imagenet_labels() -> list[str]:
    """The 1,000 ImageNet-1k class names in index order, made distinct."""
    from .imagenet_classes import IMAGENET_CLASSES

    return unique_labels(IMAGENET_CLASSES)


def parse_labels(value: str) -> list[str]:
    """``imagenet``, a file with one label per line, or ``a,b,c``."""
    if value == "imagenet":
        return imagenet_labels()
    if value and Path(value).is_file():
        labels = [l.strip() for l in Path(value).read_text().splitlines() if l.strip()]
    else:
        labels = [l.strip() for l in value.split(",") if l.strip()]
    if len(labels) < 2:
        raise bad_value("labels", "imagenet, a file with one label per line, or a comma-separated list of at least 2 labels", value)
    if len(set(labels)) != len(labels):
        raise bad_value("labels", "distinct labels", value)
    return labels


def encode_png(image: np.ndarray) -> bytes:
    """(H, W, 3) floats in [0, 1] -> 8-bit RGB PNG bytes (rounded to the nearest level)."""
    from PIL import Image

    arr = np.clip(np.rint(np.asarray(image, dtype=np.float64) * 255.0), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr, "RGB").save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


class HFImageProvider(Provider):
    """Top-k scores from an HTTP image-classification endpoint (Hugging Face Inference API format)."""

    name = NAME
    declared_capabilities = frozenset({Capability.PROBS})
    summary = "HTTP image classifier in the Hugging Face Inference API format (top-k {label, score})"

    def __init__(self, url: str, labels: Sequence[str] | str = "imagenet", *, top_k: int | None = None, concurrency: int = 8,
                 timeout: float = 30.0, token: str | None = None) -> None:
        super().__init__()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise bad_value("url", "an http(s) URL of the model endpoint", url)
        self.url, self._parts = url, parts
        self.labels = parse_labels(labels) if isinstance(labels, str) else list(labels)
        if len(set(self.labels)) != len(self.labels):
            raise bad_value("labels", "distinct labels", "a list with repeats")
        self.class_names = self.labels
        self._index = {l: i for i, l in enumerate(self.labels)}
        for name, v in (("concurrency", concurrency), ("top_k", top_k if top_k is not None else 1)):
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise bad_value(name, "an integer >= 1", v)
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise bad_value("timeout", "seconds > 0", timeout)
        self.top_k, self.concurrency, self.timeout = top_k, concurrency, float(timeout)
        self._token = token
        self._local = threading.local()
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="hf-image")
        self.capabilities = self.declared_capabilities

    @classmethod
    def from_spec(cls, target: str, options: dict[str, str]) -> "HFImageProvider":
        """Build from ``hf-image:URL?labels=imagenet&top_k=5&concurrency=8&timeout=30&token_env=VAR``."""
        check_options(NAME, options, ("labels", "top_k", "concurrency", "timeout", "token_env"))
        if not target:
            raise bad_value("target", "the endpoint URL after 'hf-image:'", target)

        def num(key: str, kind: Any, default: Any) -> Any:
            raw = options.get(key)
            if raw is None:
                return default
            try:
                return kind(raw)
            except ValueError:
                raise bad_value(key, f"a number ({kind.__name__})", raw) from None

        env = options.get("token_env")
        return cls(target, options.get("labels", "imagenet"), top_k=num("top_k", int, None), concurrency=num("concurrency", int, 8),
                   timeout=num("timeout", float, 30.0), token=os.environ.get(env) if env else None)

    def describe(self) -> dict[str, Any]:
        """Endpoint, vocabulary size, k and concurrency (never the token)."""
        return {"provider": self.name, "model": self.url, "labels": len(self.labels), "top_k": self.top_k, "concurrency": self.concurrency}

    def cache_identity(self) -> dict[str, Any]:
        """What changes the answers: endpoint, vocabulary and k (concurrency does not)."""
        return {"provider": self.name, "url": self.url, "labels": self.labels, "top_k": self.top_k}

    def example_inputs(self) -> np.ndarray:
        return np.random.default_rng(0).random((2, 32, 32, 3))

    # --- HTTP ------------------------------------------------------------------------------
    def _conn(self) -> http.client.HTTPConnection:
        c = getattr(self._local, "conn", None)
        if c is None:
            cls = http.client.HTTPSConnection if self._parts.scheme == "https" else http.client.HTTPConnection
            c = cls(self._parts.hostname, self._parts.port, timeout=self.timeout)
            self._local.conn = c
        return c

    def _drop_conn(self) -> None:
        c = getattr(self._local, "conn", None)
        if c is not None:
            c.close()
        self._local.conn = None

    def _post(self, image: np.ndarray) -> np.ndarray:
        """One image -> one row of scores (NaN where the server returned nothing)."""
        png = encode_png(image)
        headers = {"Accept": "application/json"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        if self.top_k is None:
            body, headers["Content-Type"] = png, "image/png"
        else:
            body = json.dumps({"inputs": base64.b64encode(png).decode(), "parameters": {"top_k": self.top_k}}).encode()
            headers["Content-Type"] = "application/json"
        path = self._parts.path or "/"
        if self._parts.query:
            path += "?" + self._parts.query
        endpoint = f"POST {path} at {self._parts.scheme}://{self._parts.netloc}"
        for attempt in (1, 2):
            reused = getattr(self._local, "conn", None) is not None
            try:
                conn = self._conn()
                conn.request("POST", path, body=body, headers=headers)
                resp = conn.getresponse()
                data = resp.read()
                break
            except (OSError, http.client.HTTPException) as exc:
                self._drop_conn()
                # A kept-alive connection the server has closed in the meantime fails on first
                # use: reconnect once at once; anything else goes to the Client's retries.
                if reused and attempt == 1:
                    continue
                raise TransportError(f"provider {NAME}: {type(exc).__name__}: {exc}", retryable=True, endpoint=endpoint) from exc
        if resp.status != 200:
            ra = resp.getheader("Retry-After")
            try:
                retry_after = float(ra) if ra is not None else None
            except ValueError:
                retry_after = None
            text = data[:200].decode("utf-8", "replace")
            raise TransportError(f"provider {NAME}: HTTP {resp.status}: {text}", status=resp.status, retry_after=retry_after,
                                 endpoint=endpoint)
        try:
            items = json.loads(data)
            if isinstance(items, list) and items and isinstance(items[0], list):
                items = items[0]  # some servers wrap one image's answer in a list
            pairs = [(str(it["label"]), float(it["score"])) for it in items]
        except (ValueError, TypeError, KeyError) as exc:
            raise InvalidResponseError(f"provider {NAME}: expected a JSON list of {{label, score}}, received {data[:120]!r}",
                                       endpoint=endpoint) from exc
        row = np.full(len(self.labels), np.nan)
        for label, score in pairs:
            j = self._index.get(label)
            if j is None:
                raise ProviderError(f"labels: expected the server's labels among the {len(self.labels)} configured "
                                    f"(labels=...), received {label!r} from {self.url}")
            row[j] = score
        return row

    def classify(self, request: ClassifyRequest) -> ClassifyResult:
        """Top-k scores for each image, ``concurrency`` requests at a time."""
        if request.output != "probs":
            raise bad_value("output", "probs (an HTTP image API returns scores only)", request.output)
        images = np.asarray(request.inputs)
        if images.ndim != 4 or images.shape[-1] != 3:
            raise bad_value("inputs", "float RGB images of shape (n, H, W, 3) in [0, 1]", f"shape {images.shape}")
        futures = [self._pool.submit(self._post, im) for im in images]
        rows: dict[int, np.ndarray] = {}
        errors: dict[int, BaseException] = {}
        for i, f in enumerate(futures):
            try:
                rows[i] = f.result()
            except TransportError as exc:
                errors[i] = exc
        if errors:
            done = {i: ClassifyResult(r[None], "probs", Usage(queries=1)) for i, r in rows.items()}
            raise PartialResultError(done, errors, n_items=len(images))
        return ClassifyResult(np.stack([rows[i] for i in range(len(images))]) if len(images) else np.zeros((0, len(self.labels))),
                              "probs", Usage(queries=len(images)))

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)


provider_registry.register(NAME, HFImageProvider, summary=HFImageProvider.summary)
