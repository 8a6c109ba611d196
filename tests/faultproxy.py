"""A fault-injecting HTTP proxy on 127.0.0.1 in front of the local S3 server (tests only).

For a seeded fraction of requests it answers 500 InternalError, 503 ServiceUnavailable or 503
SlowDown itself, or forwards the request and cuts the connection halfway through the response
body. Keys containing ``persist`` always fail (503), past any retry; with ``deny``, every request
whose path contains that text is refused with 403 AccessDenied (a bucket or objects the
credentials may not read). Every fault is counted, and every request logged (``requests``), so
with no faults it is a request-counting proxy.
"""

from __future__ import annotations

import http.client
import random
import threading
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlparse

_ERRORS = [
    (500, "InternalError", "We encountered an internal error. Please try again."),
    (503, "ServiceUnavailable", "Please reduce your request rate."),
    (503, "SlowDown", "Please reduce your request rate."),
]


class FaultProxy:
    def __init__(self, upstream: str, *, error_rate: float, drop_rate: float, seed: int = 0, deny: str | None = None) -> None:
        parsed = urlparse(upstream)
        self.upstream = (parsed.hostname or "127.0.0.1", parsed.port or 80)
        self.error_rate, self.drop_rate, self.deny = error_rate, drop_rate, deny
        self.rng = random.Random(seed)
        self.lock = threading.Lock()
        self.counts: Counter[str] = Counter()
        self.requests: list[tuple[str, str]] = []  # (method, path with query) of every request, in order
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:  # quiet
                pass

            def _handle(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else None
                with proxy.lock:
                    proxy.counts["requests"] += 1
                    proxy.requests.append((self.command, self.path))
                    roll = proxy.rng.random()
                persistent = "persist" in self.path and self.command == "GET" and "list-type" not in self.path
                denied = proxy.deny is not None and proxy.deny in self.path
                if denied or persistent or roll < proxy.error_rate:
                    if denied:
                        status, code, message = 403, "AccessDenied", "Access Denied"
                    else:
                        status, code, message = _ERRORS[2] if persistent else _ERRORS[int(roll * 1e6) % len(_ERRORS)]
                    with proxy.lock:
                        proxy.counts["persistent" if persistent and not denied else code] += 1
                    payload = f'<?xml version="1.0" encoding="UTF-8"?><Error><Code>{code}</Code><Message>{message}</Message></Error>'.encode()
                    self.send_response(status)
                    self.send_header("Content-Type", "application/xml")
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                    return
                conn = http.client.HTTPConnection(*proxy.upstream, timeout=30)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in ("connection", "keep-alive")}
                    conn.request(self.command, self.path, body=body, headers=headers)
                    resp = conn.getresponse()
                    data = resp.read()
                finally:
                    conn.close()
                drop = self.command == "GET" and len(data) > 256 and roll < proxy.error_rate + proxy.drop_rate
                self.send_response(resp.status)
                for k, v in resp.getheaders():
                    if k.lower() not in ("transfer-encoding", "connection", "content-length"):
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command == "HEAD":
                    return
                if drop:  # half the body, then the connection goes away
                    with proxy.lock:
                        proxy.counts["dropped_mid_body"] += 1
                    self.wfile.write(data[: len(data) // 2])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.wfile.write(data)

            do_GET = do_PUT = do_POST = do_HEAD = do_DELETE = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FaultProxy:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def list_requests(self) -> list[dict[str, str]]:
        """The ListObjectsV2 requests seen: their query parameters (``prefix``, ``delimiter``, ...), decoded."""
        from urllib.parse import parse_qs

        out = []
        for method, path in self.requests:
            query = parse_qs(urlparse(path).query, keep_blank_values=True)
            if method == "GET" and query.get("list-type") == ["2"]:
                out.append({k: v[0] for k, v in query.items()})
        return out

    @property
    def faults(self) -> int:
        return sum(v for k, v in self.counts.items() if k != "requests")
