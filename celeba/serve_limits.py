"""The service's guards, apart from its routes: ASGI middleware that bounds request bodies and the number of
requests in flight, the same-origin test, and handing freed memory back to the system after a big decode."""

from __future__ import annotations

import ctypes
import json
import math
import threading
import time
from collections.abc import Callable, Sequence
from functools import cache
from typing import Any


class BodyLimit:
    """ASGI middleware: count the request body as it streams and answer 413 once it passes `limit` bytes.

    A Content-Length over the limit is refused before reading; a chunked upload (no Content-Length) is
    cut off at the limit: the app sees a disconnect, the client gets the 413, the rest is never read.
    """

    def __init__(self, app: Any, limit: int, max_bytes: int) -> None:
        self.app, self.limit, self.max_bytes = app, limit, max_bytes

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.limit:
            return await self._refuse(
                send, f"upload of {int(length) / 1e6:.1f} MB is over the {self.max_bytes / 1e6:.1f} MB limit"
            )
        state = {"received": 0, "over": False, "started": False}

        async def counted_receive() -> Any:
            if state["over"]:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                state["received"] += len(message.get("body", b""))
                if state["received"] > self.limit:
                    state["over"] = True
                    return {"type": "http.disconnect"}
            return message

        async def guarded_send(message: Any) -> Any:
            if state["over"]:  # the app's own answer to the cut-off body is replaced by the 413
                return
            state["started"] = True
            await send(message)

        try:
            await self.app(scope, counted_receive, guarded_send)
        except Exception:
            if not state["over"]:
                raise
        if state["over"] and not state["started"]:
            await self._refuse(
                send,
                f"upload is over the {self.max_bytes / 1e6:.1f} MB limit "
                f"(stopped reading after {state['received'] / 1e6:.1f} MB)",
            )

    @staticmethod
    async def _refuse(send: Any, detail: str) -> None:
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


async def send_json(send: Any, status: int, detail: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """A complete JSON error answer `{"detail": ...}` through a raw ASGI `send`; the connection closes after it."""
    body = json.dumps({"detail": detail}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (b"connection", b"close"),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class Load:
    """What the service is doing: requests admitted to POST /predict (running or waiting for a slot) and the
    recent time one takes to score (an exponential average), for Retry-After."""

    def __init__(self, max_concurrent: int, max_queue: int):
        self.max_concurrent, self.max_queue = max_concurrent, max_queue
        self.admitted = 0  # changed on the event loop only
        self.seconds = 1.0  # per request, until measured
        self._lock = threading.Lock()

    def scored(self, seconds: float) -> None:
        with self._lock:
            self.seconds = 0.8 * self.seconds + 0.2 * seconds

    def retry_after(self) -> int:
        """Seconds until a retry would likely find room: the admitted requests' work over the slots."""
        return max(1, math.ceil(self.seconds * max(self.admitted, 1) / self.max_concurrent))


class Admission:
    """ASGI middleware: at most max_concurrent + max_queue POST /predict requests in the service at once.

    One more is answered 503 with Retry-After at once, before its body is read: waiting requests, each holding
    its upload, are bounded, and a client learns that the service is busy instead of waiting without end.
    """

    def __init__(self, app: Any, load: Load) -> None:
        self.app, self.load = app, load

    async def __call__(self, scope: Any, receive: Any, send: Any) -> Any:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != "/predict":
            return await self.app(scope, receive, send)
        load = self.load
        if load.admitted >= load.max_concurrent + load.max_queue:
            return await send_json(
                send,
                503,
                f"busy: all {load.max_concurrent} slot(s) are scoring photos and the queue of {load.max_queue} is "
                "full (--max-queue); retry later",
                [(b"retry-after", str(load.retry_after()).encode())],
            )
        load.admitted += 1
        scope.setdefault("state", {})["admitted_at"] = time.monotonic()
        try:
            await self.app(scope, receive, send)
        finally:
            load.admitted -= 1


def same_origin(origin: str, host: str) -> bool:
    """A browser's Origin header names the page's site; it is the service itself when host:port match."""
    from urllib.parse import urlsplit

    return bool(host) and urlsplit(origin).netloc == host


@cache
def _malloc_trim() -> Callable[[int], int] | None:
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None


def release_memory() -> None:
    """Hand freed heap back to the system: glibc keeps the arenas of big decodes otherwise (the RSS stays high)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)
