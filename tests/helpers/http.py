"""A plain GET against a test HTTP server (observer page, metrics)."""

from __future__ import annotations

import http.client


def get(server, path: str, timeout: float = 30.0) -> tuple[int, str | None, bytes]:
    """Status, Content-Type and body of ``GET path`` on ``server`` (anything with a ``port``)."""
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.getheader("Content-Type"), response.read()
    finally:
        conn.close()
