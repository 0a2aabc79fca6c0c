"""A loopback image-classification endpoint in the Hugging Face Inference API's format,
serving any local classifier (the tests and ``bench/blackvip.py`` serve EfficientNet-Lite0).

``POST /`` with raw image bytes (``Content-Type: image/*``) or JSON ``{"inputs": base64,
"parameters": {"top_k": k}}`` answers ``[{"label": ..., "score": ...}, ...]`` for the top k
classes (default k: ``top_k``). A plain ASGI app (no framework); ``delay`` adds a simulated
service time per request (``asyncio.sleep``, so concurrent requests overlap as they would on a
real service); ``fail_every=N`` answers 503 with ``Retry-After: 0`` to every N-th request.

    with serve(make_app(classify, labels, top_k=5, delay=0.02)) as url:
        provider = HFImageProvider(url, labels)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import socket
import threading
import time
from typing import Any, Callable, Iterator, Sequence

import numpy as np


def decode_image(data: bytes) -> np.ndarray:
    """PNG/JPEG bytes -> (H, W, 3) floats in [0, 1]."""
    from PIL import Image

    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def make_app(classify: Callable[[np.ndarray], np.ndarray], labels: Sequence[str], *, top_k: int = 5, delay: float = 0.0,
             fail_every: int = 0) -> Any:
    """ASGI app: ``classify((1, H, W, 3)) -> (1, n_labels)`` probabilities, served top-k."""
    state = {"requests": 0, "failed": 0}
    lock = threading.Lock()

    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                msg = await receive()
                if msg["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif msg["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break

        async def reply(status: int, payload: Any, extra: list[tuple[bytes, bytes]] = []) -> None:
            data = json.dumps(payload).encode()
            await send({"type": "http.response.start", "status": status,
                        "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(data)).encode()), *extra]})
            await send({"type": "http.response.body", "body": data})

        if scope["method"] != "POST":
            await reply(405, {"error": "POST an image"})
            return
        with lock:
            state["requests"] += 1
            n = state["requests"]
        if fail_every and n % fail_every == 0:
            with lock:
                state["failed"] += 1
            await reply(503, {"error": "overloaded (simulated)"}, [(b"retry-after", b"0")])
            return
        headers = dict(scope["headers"])
        k = top_k
        try:
            if headers.get(b"content-type", b"").startswith(b"application/json"):
                req = json.loads(body)
                k = int(req.get("parameters", {}).get("top_k", top_k))
                image = decode_image(base64.b64decode(req["inputs"]))
            else:
                image = decode_image(body)
        except Exception as exc:  # noqa: BLE001 - any bad body is the client's error
            await reply(400, {"error": f"bad request: {exc}"})
            return
        t0 = time.perf_counter()
        probs = await asyncio.get_running_loop().run_in_executor(None, classify, image[None])
        if delay:
            await asyncio.sleep(max(0.0, delay - (time.perf_counter() - t0)))
        p = np.asarray(probs)[0]
        top = np.argsort(-p, kind="stable")[:k]
        await reply(200, [{"label": labels[j], "score": float(p[j])} for j in top])

    app.state = state  # type: ignore[attr-defined]
    return app


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(app: Any, workers_threads: int = 16) -> Iterator[str]:
    """Run ``app`` with uvicorn on a free loopback port in a thread; yields its URL."""
    import uvicorn

    port = _free_port()
    config = uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", lifespan="on", access_log=False)
    server = uvicorn.Server(config)
    th = threading.Thread(target=server.run, daemon=True)
    th.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if time.monotonic() > deadline or not th.is_alive():
            raise RuntimeError("the test image server did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}/"
    finally:
        server.should_exit = True
        th.join(timeout=10)


def efficientnet_classify(size: int = 96) -> tuple[Callable[[np.ndarray], np.ndarray], list[str]]:
    """The shipped EfficientNet-Lite0 as ``classify`` plus its distinct label names."""
    from blackbox.providers.efficientnet import EfficientNetLite0Provider
    from blackbox.providers.hf_image_api import imagenet_labels
    from blackbox.types import ClassifyRequest

    model = EfficientNetLite0Provider(size=size)
    return (lambda x: model.classify(ClassifyRequest(inputs=x)).scores), imagenet_labels()
