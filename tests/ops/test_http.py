"""Tests for skygrade.ops.http: /metrics, /healthz, routes, binding, clean stop (no thread left)."""

import contextlib
import gzip
import http.client
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from skygrade.ops.http import HttpServer, Request, Response
from skygrade.ops.metrics import Metrics


def get(
    server: HttpServer, path: str, method: str = "GET", headers: dict | None = None
) -> tuple[int, dict, bytes]:
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    try:
        conn.request(method, path, headers=headers or {})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


@pytest.fixture
def metrics():
    return Metrics()


def test_metrics_endpoint_serves_the_registry(metrics):
    metrics.observe_exposure("GOOD", "graded", None, 5.0, 0.9, 4, 100, {"extract": 0.5})
    with HttpServer(metrics.registry, port=0) as server:
        status, headers, body = get(server, "/metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=")
    text = body.decode()
    assert 'skygrade_exposures_graded_total{grade="GOOD"} 1.0' in text
    assert "skygrade_grading_latency_seconds_bucket" in text


def test_metrics_negotiate_openmetrics_gzip_and_a_name_filter(metrics):
    metrics.observe_exposure("GOOD", "graded", None, 5.0, 0.9, 4, 100, {"extract": 0.5})
    om = "application/openmetrics-text; version=1.0.0; charset=utf-8"
    with HttpServer(metrics.registry, port=0) as server:
        _, plain_headers, plain = get(server, "/metrics")
        _, headers, body = get(server, "/metrics", headers={"Accept": om})
        _, zipped_headers, zipped = get(
            server, "/metrics", headers={"Accept-Encoding": "gzip, deflate"}
        )
        _, _, one = get(server, "/metrics?name[]=skygrade_exposures_graded_total")
    assert "Content-Encoding" not in plain_headers
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")
    assert 'skygrade_exposures_graded_total{grade="GOOD"} 1.0' in body.decode()
    assert zipped_headers["Content-Encoding"] == "gzip"
    assert gzip.decompress(zipped) == plain
    assert "Accept-Encoding" in zipped_headers["Vary"]
    names = {
        line.split("{")[0].split(" ")[0]
        for line in one.decode().splitlines()
        if line and not line.startswith("#")
    }
    assert names == {"skygrade_exposures_graded_total"}


def test_binds_loopback_by_default_and_reports_the_real_port(metrics):
    server = HttpServer(metrics.registry, port=0)
    assert server.host == "127.0.0.1"
    assert server.port == 0 and server.server_address is None
    server.start()
    try:
        host, port = server.server_address
        assert host == "127.0.0.1"
        assert port == server.port > 0
        assert server.url == f"http://127.0.0.1:{port}"
    finally:
        server.stop()
    assert not server.running


def test_default_port_is_9108(metrics):
    assert HttpServer(metrics.registry).port == 9108


@pytest.mark.parametrize(
    ("doc", "status"),
    [({"ok": True, "backlog": 0}, 200), ({"ok": False, "reason": "watcher died"}, 503)],
)
def test_healthz_status_follows_ok(metrics, doc, status):
    with HttpServer(metrics.registry, port=0, health=lambda: doc) as server:
        got, headers, body = get(server, "/healthz")
    assert got == status
    assert headers["Content-Type"] == "application/json"
    assert json.loads(body) == doc


def test_healthz_without_callable_is_ok(metrics):
    with HttpServer(metrics.registry, port=0) as server:
        status, _, body = get(server, "/healthz")
    assert (status, json.loads(body)) == (200, {"ok": True})


def test_healthz_that_raises_is_503(metrics):
    def broken() -> dict:
        raise RuntimeError("ledger locked")

    with HttpServer(metrics.registry, port=0, health=broken) as server:
        status, _, body = get(server, "/healthz")
    assert status == 503
    assert json.loads(body) == {"ok": False, "error": "RuntimeError: ledger locked"}


def test_unknown_path_is_404_and_files_are_never_served(metrics):
    with HttpServer(metrics.registry, port=0) as server:
        for path in ("/", "/nope", "/../pyproject.toml", "/ops/config.py", "/metrics/x"):
            assert get(server, path)[0] == 404, path


def test_routes_get_the_request_and_head_has_no_body(metrics):
    seen: list[Request] = []

    def page(request: Request) -> Response:
        seen.append(request)
        return Response(200, "text/html; charset=utf-8", b"<h1>tonight</h1>")

    routes = {"/status": page, "/raw": lambda request: (201, "text/plain", b"raw")}
    with HttpServer(metrics.registry, port=0, routes=routes) as server:
        status, headers, body = get(server, "/status?night=2024-03-01")
        assert (status, body) == (200, b"<h1>tonight</h1>")
        assert headers["Content-Type"] == "text/html; charset=utf-8"
        assert get(server, "/raw")[::2] == (201, b"raw")
        status, headers, body = get(server, "/status", method="HEAD")
        assert (status, body, headers["Content-Length"]) == (200, b"", "16")
    assert seen[0].path == "/status" and seen[0].query == {"night": ["2024-03-01"]}
    assert seen[0].method == "GET" and seen[1].method == "HEAD"


def test_only_get_and_head(metrics):
    with HttpServer(metrics.registry, port=0) as server:
        for method in ("POST", "PUT", "DELETE"):
            status, headers, _ = get(server, "/metrics", method=method)
            assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_failing_route_is_500_and_the_server_keeps_serving(metrics, caplog):
    def broken(request: Request) -> Response:
        raise ValueError("boom")

    with HttpServer(metrics.registry, port=0, routes={"/broken": broken}) as server:
        assert get(server, "/broken")[0] == 500
        assert get(server, "/metrics")[0] == 200
    assert "HTTP handler for /broken failed" in caplog.text


def test_requests_are_logged_at_debug_only(metrics, caplog, capsys):
    caplog.set_level("DEBUG", logger="skygrade.ops.http")
    with HttpServer(metrics.registry, port=0) as server:
        get(server, "/metrics")
    assert any(r.levelname == "DEBUG" and "GET /metrics" in r.getMessage() for r in caplog.records)
    assert not [r for r in caplog.records if "GET /metrics" in r.getMessage() and r.levelno > 10]
    assert capsys.readouterr().err == ""  # nothing written to stderr by BaseHTTPRequestHandler


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"port": 70000}, "port must be an integer in 0..65535, got 70000"),
        ({"routes": {"status": lambda r: (200, "", b"")}}, "must start with '/'"),
        ({"routes": {"/metrics": lambda r: (200, "", b"")}}, "served by HttpServer itself"),
    ],
)
def test_invalid_arguments(metrics, kwargs, match):
    with pytest.raises(ValueError, match=match):
        HttpServer(metrics.registry, **kwargs)


def test_stop_joins_every_thread_and_is_idempotent(metrics):
    before = set(threading.enumerate())
    server = HttpServer(metrics.registry, port=0)
    server.start()
    with pytest.raises(RuntimeError, match="already running"):
        server.start()
    for _ in range(3):
        get(server, "/metrics")
    # a client that connects and sends nothing must not hold stop() for its socket timeout
    idle = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
    idle.connect()
    try:
        started = time.monotonic()
        server.stop(timeout=1.0)
        took = time.monotonic() - started
    finally:
        idle.close()
    server.stop()
    assert took < 1.5
    assert [t.name for t in threading.enumerate() if t not in before] == []


def test_port_in_use_is_an_oserror(metrics):
    with HttpServer(metrics.registry, port=0) as first, pytest.raises(OSError):
        HttpServer(metrics.registry, port=first.port).start()


def test_thread_fixture_fails_a_test_that_leaves_a_thread(tmp_path):
    conftest = Path(__file__).with_name("conftest.py").read_text(encoding="utf-8")
    (tmp_path / "conftest.py").write_text(
        conftest.replace("JOIN_GRACE_S = 2.0", "JOIN_GRACE_S = 0.1"), encoding="utf-8"
    )
    (tmp_path / "test_leak.py").write_text(
        "import threading\n\n"
        "def test_leaks():\n"
        "    threading.Thread(target=threading.Event().wait, name='leaky', daemon=True).start()\n\n"
        "def test_joins():\n"
        "    t = threading.Thread(target=lambda: None)\n"
        "    t.start()\n"
        "    t.join()\n",
        encoding="utf-8",
    )
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert "2 passed, 1 error" in result.stdout, result.stdout
    assert "test left 1 thread(s) running: leaky (daemon=True)" in result.stdout


def _request_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("skygrade-http-request")]


def test_a_slow_client_flood_is_bounded_in_threads_and_in_time(metrics):
    """50 clients each sending a header line every 0.2 s (never idle long enough for a per-read
    timeout): at most ``max_connections`` threads, the others answered 503 at once, and every
    connection closed at its whole-request deadline (issue 21, item 12: 200 such clients kept
    61 threads alive, for as long as they kept trickling)."""
    import socket

    server = HttpServer(metrics.registry, port=0, request_timeout_s=1.0, max_connections=8)
    server.start()
    clients: list[socket.socket] = []
    try:
        for _ in range(50):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
            sock.sendall(b"GET /metrics HTTP/1.1\r\n")
            clients.append(sock)
        most = 0
        open_ = set(range(len(clients)))
        refused = 0
        give_up = time.monotonic() + 8.0  # far past the 1 s deadline, never reached when bounded
        while open_ and time.monotonic() < give_up:
            most = max(most, len(_request_threads()))
            for i in sorted(open_):
                sock = clients[i]
                try:  # read first: a send to a closed socket resets it, losing the answer
                    sock.settimeout(0.001)
                    got = sock.recv(4096)
                except TimeoutError:
                    sock.settimeout(5)
                    with contextlib.suppress(OSError):  # closed meanwhile: read next time
                        sock.sendall(b"X-Trickle: 1\r\n")
                    continue
                except OSError:  # reset by the server: closed
                    got = b""
                sock.settimeout(5)
                if not got or got.startswith(b"HTTP/1.0 503"):
                    refused += got.startswith(b"HTTP/1.0 503")
                    open_.discard(i)
            time.sleep(0.2)
        assert most <= 8, most
        assert not open_, f"{len(open_)} trickling connections still open after 8 s"
        assert refused >= 1
        # and the server still answers once the flood is gone
        assert get(server, "/metrics")[0] == 200
    finally:
        for sock in clients:
            sock.close()
        server.stop()
    assert _request_threads() == []


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"request_timeout_s": 0}, "request_timeout_s must be > 0"),
        ({"max_connections": 0}, "max_connections must be an integer >= 1"),
    ],
)
def test_invalid_bounds(metrics, kwargs, match):
    with pytest.raises(ValueError, match=match):
        HttpServer(metrics.registry, **kwargs)


def test_the_config_defaults_are_the_servers():
    from skygrade.ops import http
    from skygrade.ops.config_daemon import MetricsConfig

    cfg = MetricsConfig()
    assert (cfg.request_timeout_s, cfg.max_connections) == (
        http.REQUEST_TIMEOUT_S,
        http.MAX_CONNECTIONS,
    )


def test_silent_clients_hold_no_thread_and_metrics_still_answers(metrics):
    """Clients that connect and send nothing, three times ``max_connections`` of them, get no
    thread: /metrics answers at once (before, they took every thread and it answered 503),
    and they are closed at their deadline."""
    import socket

    server = HttpServer(metrics.registry, port=0, request_timeout_s=1.0, max_connections=4)
    server.start()
    silent = [socket.create_connection(("127.0.0.1", server.port), timeout=5) for _ in range(12)]
    try:
        time.sleep(0.3)
        assert _request_threads() == []
        assert get(server, "/metrics")[0] == 200
        for sock in silent:  # closed by the server at the 1 s deadline: EOF
            assert sock.recv(1) == b""
    finally:
        for sock in silent:
            sock.close()
        server.stop()
    assert _request_threads() == []
