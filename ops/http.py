"""The daemon's small HTTP server: Prometheus metrics, health, and a few registered pages.

:class:`HttpServer` serves ``GET /metrics`` (the exposition of a registry, negotiated by
prometheus_client's own ``choose_encoder``: OpenMetrics or text, gzip when asked), ``GET /healthz``
(a JSON health document) and any exact paths registered as routes (the observer page of a later
issue). It answers GET and HEAD only, never serves files from disk, binds 127.0.0.1 unless told
otherwise, logs requests at DEBUG and can be stopped: :meth:`HttpServer.stop` shuts the server
down and joins its threads.

Slow and many clients: each connection has one thread and a whole-request deadline
(``request_timeout_s``, from accept to the last byte of the answer), not just a timeout per
read: before, a client sending one header line every 5 s held its thread for as long as it
liked, and 200 such clients kept 61 threads alive. The server closes a connection past its
deadline, and serves at most ``max_connections`` at once: a connection beyond that is answered
``503`` at once, from the accepting thread, and closed (no thread is started for it).

A connection gets its thread only once it has sent something: until then it is held, threadless,
by the serving thread (at most :data:`MAX_SILENT` of them, the oldest closed beyond that) and
closed at its deadline too. Before, ``max_connections`` clients that connected and sent nothing
took every thread, and /metrics answered every other client 503 for as long as they kept
reconnecting (the fault suite's flood of 32 silent clients against 8 connections).

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import contextlib
import gzip
import json
import logging
import select
import socket
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, NamedTuple
from urllib.parse import parse_qs, urlsplit

from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder, gzip_accepted

__all__ = ["HttpServer", "Request", "Response"]

logger = logging.getLogger(__name__)

_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_BUILTIN = ("/metrics", "/healthz")
#: Defaults of :class:`HttpServer` (and of the ``metrics`` section of the configuration).
REQUEST_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 32
#: Connections held at once that have sent nothing yet (no thread each: a file descriptor);
#: beyond it, the oldest is closed.
MAX_SILENT = 256
_BUSY = (
    b"HTTP/1.0 503 Service Unavailable\r\nContent-Type: text/plain; charset=utf-8\r\n"
    b"Content-Length: 34\r\nRetry-After: 1\r\nConnection: close\r\n\r\n"
    b"too many connections; retry later\n"
)


@dataclass(frozen=True)
class Request:
    """A GET or HEAD request, as a route handler sees it.

    Attributes
    ----------
    method : str
        ``"GET"`` or ``"HEAD"`` (a handler answers both the same way; HEAD drops the body).
    path : str
        The path without the query string, e.g. ``"/status"``.
    query : mapping of str to list of str
        The parsed query string (``parse_qs``), e.g. ``{"night": ["2024-03-01"]}``.
    headers : mapping of str to str
        The request headers.
    """

    method: str
    path: str
    query: Mapping[str, list[str]] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)


class Response(NamedTuple):
    """What a route handler returns; a plain ``(status, content_type, body)`` tuple works too.

    Attributes
    ----------
    status : int
        HTTP status code.
    content_type : str
        The Content-Type header, e.g. ``"text/html; charset=utf-8"``.
    body : bytes
        The response body.
    """

    status: int
    content_type: str
    body: bytes


Handler = Callable[[Request], "Response | tuple[int, str, bytes]"]


class _Server(ThreadingHTTPServer):
    """A ThreadingHTTPServer that tracks its request threads so that stop() can join them."""

    daemon_threads = True
    block_on_close = False  # HttpServer.stop joins the request threads, with a deadline
    # socketserver's 5 left connections beyond it waiting on SYN-ACK retries for seconds;
    # accepted, they get a thread or a prompt 503.
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], owner: "HttpServer") -> None:
        self.owner = owner
        self.request_threads: dict[threading.Thread, socket.socket] = {}
        self.deadlines: dict[threading.Thread, float] = {}  # monotonic time each one must end
        self.threads_lock = threading.Lock()
        self.refused = 0  # connections answered 503 because max_connections were open
        self.expired = 0  # connections closed at their request deadline
        # Connections that have sent nothing yet -> (client address, deadline), oldest first;
        # only the serving thread touches it (process_request, service_actions).
        self.silent: dict[Any, tuple[Any, float]] = {}
        super().__init__(address, _RequestHandler)

    def process_request(self, request: Any, client_address: Any) -> None:
        deadline = time.monotonic() + self.owner.request_timeout_s
        if not _readable([request]):  # nothing sent yet: held without a thread
            self.silent[request] = (client_address, deadline)
            if len(self.silent) > MAX_SILENT:
                oldest = next(iter(self.silent))
                del self.silent[oldest]
                self.expired += 1
                self.shutdown_request(oldest)
            return
        self._start(request, client_address, deadline)

    def _start(self, request: Any, client_address: Any, deadline: float) -> None:
        """A thread for a connection that has sent something, or 503 if all are taken."""
        with self.threads_lock:
            busy = len(self.request_threads) >= self.owner.max_connections
        if busy:
            self._refuse(request, client_address)
            return
        thread = threading.Thread(
            target=self._serve_one,
            args=(request, client_address),
            name=f"skygrade-http-request-{client_address[1]}",
            daemon=True,
        )
        with self.threads_lock:
            self.request_threads[thread] = request
            self.deadlines[thread] = deadline
        thread.start()

    def _refuse(self, request: Any, client_address: Any) -> None:
        """Answer 503 without a thread: a send that would block is given up, never waited for."""
        self.refused += 1
        logger.debug("refusing %s: %d connections open", client_address, len(self.request_threads))
        with contextlib.suppress(OSError):
            request.setblocking(False)
            request.send(_BUSY)
        self.shutdown_request(request)

    def service_actions(self) -> None:
        """Every poll of the serving loop: close the connections past their deadline.

        Shutting a socket down wakes the thread blocked reading it (or writing to it), which
        then ends; the thread itself closes the socket.
        """
        now = time.monotonic()
        if self.silent:
            for connection in _readable(list(self.silent)):  # sent something (or closed)
                client_address, deadline = self.silent.pop(connection)
                self._start(connection, client_address, deadline)
            for connection, (_, deadline) in list(self.silent.items()):
                if deadline <= now:
                    del self.silent[connection]
                    self.expired += 1
                    self.shutdown_request(connection)
        with self.threads_lock:
            late = [
                (t, self.request_threads[t])
                for t, deadline in self.deadlines.items()
                if deadline <= now and t in self.request_threads
            ]
            for t, _ in late:
                del self.deadlines[t]  # once: the thread may take a moment to notice
        for _, connection in late:
            self.expired += 1
            logger.debug(
                "closing a connection past its %.1f s deadline", self.owner.request_timeout_s
            )
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)

    def _serve_one(self, request: Any, client_address: Any) -> None:
        try:
            self.finish_request(request, client_address)
        except Exception:
            self.handle_error(request, client_address)
        finally:
            self.shutdown_request(request)
            with self.threads_lock:
                self.request_threads.pop(threading.current_thread(), None)
                self.deadlines.pop(threading.current_thread(), None)

    def handle_error(self, request: Any, client_address: Any) -> None:
        logger.debug("error while serving %s", client_address, exc_info=True)

    def server_close(self) -> None:
        super().server_close()
        silent, self.silent = self.silent, {}
        for connection in silent:
            self.shutdown_request(connection)


def _readable(connections: list) -> list:
    """The connections with something to read (data, or the client's close), without waiting."""
    poller = select.poll()
    by_fd = {}
    for connection in connections:
        by_fd[connection.fileno()] = connection
        poller.register(connection, select.POLLIN | select.POLLPRI)
    return [by_fd[fd] for fd, _ in poller.poll(0)]


class _Server6(_Server):
    address_family = socket.AF_INET6


class _RequestHandler(BaseHTTPRequestHandler):
    server: _Server
    server_version = "skygrade"
    sys_version = ""
    timeout = REQUEST_TIMEOUT_S  # per read; the whole request has the server's deadline

    def setup(self) -> None:
        self.timeout = self.server.owner.request_timeout_s
        super().setup()

    def do_GET(self) -> None:
        self._answer(head=False)

    def do_HEAD(self) -> None:
        self._answer(head=True)

    def _not_allowed(self) -> None:
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, _TEXT, b"only GET and HEAD\n", head=False)

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = _not_allowed

    def _answer(self, head: bool) -> None:
        parts = urlsplit(self.path)
        request = Request(
            method="HEAD" if head else "GET",
            path=parts.path,
            query=parse_qs(parts.query),
            headers=dict(self.headers.items()),
        )
        extra: tuple[tuple[str, str], ...] = ()
        try:
            if request.path == "/metrics":
                status, content_type, body, extra = self.server.owner._metrics(request)
            else:
                status, content_type, body = self.server.owner._dispatch(request)
        except Exception:
            logger.exception("HTTP handler for %s failed", request.path)
            status, content_type, body = 500, _TEXT, b"internal error\n"
        self._send(status, content_type, body, head, extra)

    def _send(
        self,
        status: int,
        content_type: str,
        body: bytes,
        head: bool,
        extra: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.send_response(int(status))
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in extra:
            self.send_header(name, value)
        if status == HTTPStatus.METHOD_NOT_ALLOWED:
            self.send_header("Allow", "GET, HEAD")
        self.end_headers()
        if not head:
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        logger.debug("%s - " + format, self.address_string(), *args)


class HttpServer:
    """Serve /metrics, /healthz and registered routes from a background thread.

    Parameters
    ----------
    registry : prometheus_client.CollectorRegistry
        The registry exposed at ``/metrics`` (e.g. ``Metrics().registry``).
    host : str, optional
        Address to bind (default ``"127.0.0.1"``: this machine only). An address with a
        ``':'`` is bound as IPv6.
    port : int, optional
        TCP port (default 9108); 0 picks a free one, readable from :attr:`port` after
        :meth:`start`.
    health : callable, optional
        Returns the ``/healthz`` document, a JSON-serialisable dict; the status is 200 when its
        ``"ok"`` is true, else 503. None serves ``{"ok": true}``. A health callable that raises
        gives 503 with ``{"ok": false, "error": ...}``.
    routes : mapping of str to callable, optional
        Exact path -> handler taking a :class:`Request` and returning a :class:`Response` (or
        a ``(status, content_type, body)`` tuple). Paths must start with ``'/'`` and may not
        be ``/metrics`` or ``/healthz``.
    request_timeout_s : float, optional
        Seconds a connection may last, from accept to the end of the answer (default 10):
        a client that trickles its request, or reads the answer slowly, is cut off then.
    max_connections : int, optional
        Connections served at once (default 32), one thread each; more are answered 503
        at once and closed.

    Raises
    ------
    ValueError
        If ``port`` is out of range, a route path is invalid or taken, ``request_timeout_s``
        is not > 0 or ``max_connections`` not >= 1.

    Examples
    --------
    >>> from skygrade.ops.metrics import Metrics
    >>> with HttpServer(Metrics().registry, port=0) as server:  # doctest: +SKIP
    ...     print(server.url)
    http://127.0.0.1:41235
    """

    def __init__(
        self,
        registry: CollectorRegistry,
        host: str = "127.0.0.1",
        port: int = 9108,
        health: Callable[[], dict] | None = None,
        routes: Mapping[str, Handler] | None = None,
        request_timeout_s: float = REQUEST_TIMEOUT_S,
        max_connections: int = MAX_CONNECTIONS,
    ) -> None:
        if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
            raise ValueError(f"port must be an integer in 0..65535, got {port!r}")
        if not request_timeout_s > 0:
            raise ValueError(f"request_timeout_s must be > 0, got {request_timeout_s!r}")
        if (
            isinstance(max_connections, bool)
            or not isinstance(max_connections, int)
            or max_connections < 1
        ):
            raise ValueError(f"max_connections must be an integer >= 1, got {max_connections!r}")
        routes = dict(routes or {})
        for path in routes:
            if not isinstance(path, str) or not path.startswith("/"):
                raise ValueError(f"route paths must start with '/', got {path!r}")
            if path in _BUILTIN:
                raise ValueError(f"route {path!r} is served by HttpServer itself")
        self.registry = registry
        self.host = host
        self._port = port
        self.health = health
        self.routes: dict[str, Handler] = routes
        self.request_timeout_s = float(request_timeout_s)
        self.max_connections = max_connections
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    # -- properties

    @property
    def port(self) -> int:
        """The bound port once started (the real one when 0 was asked for), else the asked one."""
        return self._server.server_address[1] if self._server is not None else self._port

    @property
    def server_address(self) -> tuple[str, int] | None:
        """``(host, port)`` the socket is bound to, or None when not started."""
        return tuple(self._server.server_address[:2]) if self._server is not None else None

    @property
    def url(self) -> str:
        """Base URL of the server, e.g. ``http://127.0.0.1:9108``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def running(self) -> bool:
        """Whether the server is started and not yet stopped."""
        return self._server is not None

    # -- lifecycle

    def start(self) -> None:
        """Bind the socket and serve from a background thread.

        Raises
        ------
        RuntimeError
            If the server is already running.
        OSError
            If the address cannot be bound (port in use, unknown host).
        """
        if self._server is not None:
            raise RuntimeError("HttpServer is already running")
        server_cls = _Server6 if ":" in self.host else _Server
        server = server_cls((self.host, self._port), self)
        thread = threading.Thread(
            target=server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name=f"skygrade-http-{server.server_address[1]}",
            daemon=True,
        )
        self._server, self._thread = server, thread
        thread.start()
        logger.info("serving /metrics and /healthz on %s", self.url)

    def stop(self, timeout: float = 5.0) -> None:
        """Stop serving, close the socket and join the server's threads.

        Idempotent; does nothing when the server is not running.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait in all for the threads to end (default 5). Requests in flight get
            half of it to finish; then the connections still open (stalled clients) are shut
            down so that their threads end too.
        """
        server, thread = self._server, self._thread
        if server is None:
            return
        deadline = time.monotonic() + timeout
        try:
            server.shutdown()
        finally:
            server.server_close()
            self._server = self._thread = None
        if thread is not None:
            thread.join(max(0.0, deadline - time.monotonic()))
        grace_end = time.monotonic() + max(0.0, deadline - time.monotonic()) / 2
        with server.threads_lock:
            pending = dict(server.request_threads)
        for t in pending:
            t.join(max(0.0, grace_end - time.monotonic()))
        for t, connection in pending.items():
            if t.is_alive():
                with contextlib.suppress(OSError):
                    connection.shutdown(socket.SHUT_RDWR)
        for t in pending:
            t.join(max(0.0, deadline - time.monotonic()))
        alive = [t.name for t in ([thread] if thread else []) + list(pending) if t.is_alive()]
        if alive:
            logger.warning("HTTP server threads still running after %.1f s: %s", timeout, alive)

    def __enter__(self) -> "HttpServer":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- answering

    def _metrics(self, request: Request) -> tuple[int, str, bytes, tuple[tuple[str, str], ...]]:
        """The registry in the format the scraper asks for, through prometheus_client's own
        exposition: OpenMetrics when ``Accept`` names it, else the text format;
        ``?name[]=`` restricts it to those metrics; gzip when ``Accept-Encoding`` allows it."""
        headers = {k.lower(): v for k, v in request.headers.items()}
        encoder, content_type = choose_encoder(headers.get("accept"))
        registry = self.registry
        if "name[]" in request.query:
            registry = registry.restricted_registry(request.query["name[]"])
        body = encoder(registry)
        extra: tuple[tuple[str, str], ...] = (("Vary", "Accept, Accept-Encoding"),)
        if gzip_accepted(headers.get("accept-encoding", "")):
            body = gzip.compress(body)
            extra += (("Content-Encoding", "gzip"),)
        return 200, content_type, body, extra

    def _dispatch(self, request: Request) -> tuple[int, str, bytes]:
        if request.path == "/healthz":
            return self._health()
        handler = self.routes.get(request.path)
        if handler is None:
            return 404, _TEXT, b"not found\n"
        status, content_type, body = handler(request)
        return int(status), str(content_type), bytes(body)

    def _health(self) -> tuple[int, str, bytes]:
        if self.health is None:
            doc: dict = {"ok": True}
        else:
            try:
                doc = dict(self.health())
            except Exception as exc:
                logger.exception("health check failed")
                doc = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
        status = 200 if doc.get("ok") else 503
        return status, _JSON, json.dumps(doc, default=str, sort_keys=True).encode("utf-8")
