"""HTTP on `http.listen`: /healthz, /readyz, /metrics and the status page at /.

The standard library's threading server in a daemon thread: no web framework, and a slow
scrape or a stuck client never blocks the event loop. Handlers never touch runtime state
directly; they ask the loop for a snapshot (`edge_agent.ops.snapshot.call_in_loop`), which is
also what makes /healthz honest: it answers 200 only if the loop itself answered.
"""

from __future__ import annotations

import selectors
import socket
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client.exposition import CONTENT_TYPE_LATEST

from edge_agent import logs
from edge_agent.ops import status_page
from edge_agent.ops.readiness import problems as readiness_problems

Snapshot = Callable[[], dict[str, Any] | None]


class HttpServer:
    """Serves the agent's endpoints until `stop()`.

    `loop_alive()` pings the event loop (True if it ran a callback within the health
    timeout); `snapshot()` returns the agent's state taken on the loop, or None.
    """

    def __init__(self, listen: str, loop_alive: Callable[[], bool], snapshot: Snapshot,
                 metrics: Callable[[], bytes]) -> None:
        host, _, port = listen.rpartition(":")
        self.host, self.requested_port = host.strip("[]") or "0.0.0.0", int(port)
        self.loop_alive, self.snapshot, self.metrics = loop_alive, snapshot, metrics
        self.log = logs.get("edge_agent.http")
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None  # stop() -> the thread

    @property
    def port(self) -> int:
        assert self._server is not None
        return self._server.server_address[1]

    @property
    def address(self) -> str:
        """host:port as listening (the port the system chose, for port 0)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port if self._server is not None else self.requested_port}"

    def bind(self) -> None:
        """Takes the port; raises OSError when it cannot (taken, no such address).

        Separate from `serve` so that the agent learns this before it starts anything else:
        an agent that cannot answer its probes must not run while another process answers
        them in its place.
        """
        server_cls = _Server6 if ":" in self.host else _Server
        self._server = server_cls((self.host, self.requested_port), _handler(self))

    def start(self) -> None:
        """Binds (unless `bind` did) and serves in a thread of its own."""
        if self._server is None:
            self.bind()
        assert self._server is not None
        self._server.socket.setblocking(False)  # a client gone before accept: no hang
        self._wake = socket.socketpair()
        self._thread = threading.Thread(target=_serve, args=(self._server, self._wake[0]),
                                        name="http", daemon=True)
        self._thread.start()
        self.log.info("http_listening", address=f"{self.host}:{self.port}")

    def stop(self) -> None:
        """Blocks until the serving thread has stopped: call it from an executor."""
        if self._server is None:
            return
        if self._thread is not None and self._wake is not None:
            self._wake[1].send(b"x")
            self._thread.join()
            for end in self._wake:
                end.close()
            self._thread, self._wake = None, None
        self._server.server_close()
        self._server = None

    # -- endpoints -----------------------------------------------------------------------
    def respond(self, path: str) -> tuple[int, str, bytes]:
        if path == "/healthz":
            if self.loop_alive():
                return 200, "text/plain; charset=utf-8", b"ok\n"
            return 503, "text/plain; charset=utf-8", b"event loop not responding\n"
        if path == "/readyz":
            return self._ready()
        if path == "/metrics":
            return 200, CONTENT_TYPE_LATEST, self.metrics()
        if path in ("/", "/index.html"):
            snap = self.snapshot()
            if snap is None:
                return 503, "text/plain; charset=utf-8", b"event loop not responding\n"
            return 200, "text/html; charset=utf-8", status_page.render(snap)
        return 404, "text/plain; charset=utf-8", b"not found: try /, /healthz, /readyz, /metrics\n"

    def _ready(self) -> tuple[int, str, bytes]:
        problems = readiness_problems(self.snapshot())
        if problems:
            return 503, "text/plain; charset=utf-8", ("\n".join(problems) + "\n").encode()
        return 200, "text/plain; charset=utf-8", b"ready\n"


def _serve(server: ThreadingHTTPServer, wake: socket.socket) -> None:
    """Sleeps until a client connects or `stop` writes to `wake`, then serves the client in
    a thread of its own. `serve_forever` would wake twice a second to look for a shutdown:
    on an idle agent that was a third as much CPU as its polling."""
    with selectors.DefaultSelector() as selector:
        selector.register(server, selectors.EVENT_READ)
        selector.register(wake, selectors.EVENT_READ)
        while True:
            ready = selector.select()
            if any(key.fileobj is wake for key, _ in ready):
                return
            server.handle_request()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True


class _Server6(_Server):
    address_family = socket.AF_INET6


def _handler(server: HttpServer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "edge-agent"
        timeout = 10  # a client that never finishes its request does not hold a thread

        def do_GET(self) -> None:
            try:
                status, content_type, body = server.respond(self.path.split("?", 1)[0])
            except Exception as exc:  # a bug in a page must not kill the server thread
                server.log.exception("http_handler_failed", path=self.path, error=repr(exc))
                status, content_type, body = 500, "text/plain", b"internal error\n"
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            pass  # probes every few seconds would flood the log; errors are logged above

    return Handler
