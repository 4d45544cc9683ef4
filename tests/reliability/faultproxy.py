"""A fault-injecting HTTP proxy for the S3 test server: a real TCP hop between client and server.

Each request is matched against rules; the first rule with faults left decides what happens:

- ``slowdown``:   reply ``503 SlowDown`` (S3's throttling error) without forwarding;
- ``reset``:      reset the connection (TCP RST) without forwarding;
- ``lost_reply``: forward, let the server act on it, then reset instead of replying;
- ``latency``:    wait ``delay`` seconds, then forward normally (slow, not failed).

A rule with ``every=P`` faults the first ``times`` of every P matching requests (periodic bursts
across a whole run); without, its first ``times`` matching requests. Nothing here knows S3
beyond the 503 body: requests and replies pass through byte for byte otherwise.
"""

from __future__ import annotations

import dataclasses
import http.client
import http.server
import socket
import struct
import threading
import time
from collections.abc import Callable
from urllib.parse import urlsplit

FAULTS = ("slowdown", "reset", "lost_reply", "latency")
FAILURES = ("slowdown", "reset", "lost_reply")  # latency slows a request but does not fail it
_HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
    "expect",
    "content-length",
}
_SLOWDOWN = (
    b'<?xml version="1.0" encoding="UTF-8"?>\n<Error><Code>SlowDown</Code>'
    b"<Message>Please reduce your request rate.</Message></Error>"
)


@dataclasses.dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    headers: dict[str, str]

    @property
    def conditional(self) -> bool:
        return "if-none-match" in self.headers or "if-match" in self.headers


@dataclasses.dataclass
class Rule:
    kind: str
    times: int = 1
    match: Callable[[Request], bool] = lambda request: True
    every: int = 0
    delay: float = 0.0
    seen: int = 0  # matching requests so far
    fired: int = 0

    def __post_init__(self):
        assert self.kind in FAULTS, self.kind

    def take(self, request: Request) -> bool:
        if not self.match(request):
            return False
        self.seen += 1
        fire = (self.seen - 1) % self.every < self.times if self.every else self.fired < self.times
        self.fired += fire
        return fire


class FaultProxy:
    def __init__(self, upstream: str):
        self.upstream = upstream
        self.rules: list[Rule] = []
        self.log: list[tuple[Request, str]] = []  # every request and what was done ("forward" or a fault)
        self._lock = threading.Lock()
        proxy = self

        class Handler(_Handler):
            owner = proxy

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def endpoint(self) -> str:
        return f"127.0.0.1:{self._server.server_address[1]}"

    def add(self, rule: Rule) -> Rule:
        with self._lock:
            self.rules.append(rule)
        return rule

    def clear(self) -> None:
        with self._lock:
            self.rules.clear()
            self.log.clear()

    def faults(self, kinds=FAILURES) -> int:
        with self._lock:
            return sum(action in kinds for _, action in self.log)

    def decide(self, request: Request) -> Rule | None:
        with self._lock:
            rule = next((r for r in self.rules if r.take(request)), None)
            self.log.append((request, rule.kind if rule else "forward"))
            return rule

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the clients expect
    owner: FaultProxy

    def log_message(self, *args):  # quiet
        pass

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while size := int(self.rfile.readline().split(b";")[0], 16):
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            while self.rfile.readline() not in (b"\r\n", b"\n", b""):  # trailers, then the blank line
                pass
            return b"".join(chunks)
        return self.rfile.read(int(self.headers.get("Content-Length") or 0))

    def _reset(self) -> None:
        """Abort with a TCP RST (SO_LINGER 0); the socket really closes when the handler ends."""
        self.connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.close_connection = True

    def _handle(self) -> None:
        parts = urlsplit(self.path)
        request = Request(self.command, parts.path, parts.query, {k.lower(): v for k, v in self.headers.items()})
        body = self._body()
        rule = self.owner.decide(request)
        kind = rule.kind if rule else "forward"
        if kind == "latency":
            time.sleep(rule.delay)
        if kind == "slowdown":
            self._reply(503, "Slow Down", [("Content-Type", "application/xml")], _SLOWDOWN)
            return
        if kind == "reset":
            self._reset()
            return
        status, reason, headers, payload = self._forward(body)
        if kind == "lost_reply":
            self._reset()
            return
        self._reply(status, reason, headers, payload)

    def _forward(self, body: bytes):
        conn = http.client.HTTPConnection(self.owner.upstream, timeout=60)
        try:
            headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            conn.request(self.command, self.path, body=body, headers=headers)
            response = conn.getresponse()
            payload = response.read()
            kept = [(k, v) for k, v in response.getheaders() if k.lower() not in _HOP_BY_HOP]
            if self.command == "HEAD":
                kept += [(k, v) for k, v in response.getheaders() if k.lower() == "content-length"]
            return response.status, response.reason, kept, payload
        finally:
            conn.close()

    def _reply(self, status: int, reason: str, headers, payload: bytes) -> None:
        self.send_response_only(status, reason)
        for key, value in headers:
            self.send_header(key, value)
        if self.command != "HEAD":
            self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(payload)

    do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = _handle
