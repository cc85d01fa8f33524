"""Delivering alerts: a log line for each, and Alertmanager JSON POSTed from a thread.

:class:`AlertDispatcher` delivers the :class:`~skygrade.ops.alerts.Alert` objects that
:class:`skygrade.ops.alerts.AlertEngine` reports: a log line for each (WARNING for WARN, ERROR for
ALARM, INFO when resolved) and, when a webhook URL is configured, an HTTP POST of
Alertmanager-compatible JSON (:func:`alertmanager_payload`, timestamps by :func:`rfc3339`) from
a background thread, so that :meth:`AlertDispatcher.send` never blocks the pipeline. Failed
requests are retried with exponential backoff; a full queue drops its oldest alert.

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import collections
import json
import logging
import math
import threading
import time
import urllib.error
import urllib.request
from datetime import UTC, datetime
from typing import Any

from skygrade.ops.alerts import SEVERITY, Alert
from skygrade.ops.config_daemon import AlertsConfig, check_http_url
from skygrade.ops.metrics import Metrics

__all__ = ["AlertDispatcher", "alertmanager_payload", "rfc3339"]

# The alert log lines keep the name they had when delivery lived in skygrade.ops.alerts: operators'
# log filters and the README's examples name that logger.
logger = logging.getLogger("skygrade.ops.alerts")


def rfc3339(when: datetime) -> str:
    """Format a datetime as RFC 3339 in UTC with milliseconds, e.g. ``2024-03-01T08:15:02.250Z``.

    Parameters
    ----------
    when : datetime
        An aware datetime (a naive one is taken as UTC).

    Returns
    -------
    str
        The timestamp, ending in ``Z``.

    Examples
    --------
    >>> rfc3339(datetime(2024, 3, 1, 8, 15, 2, 250000, tzinfo=UTC))
    '2024-03-01T08:15:02.250Z'
    """
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return when.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def alertmanager_payload(alert: Alert, now: datetime | None = None) -> list[dict[str, Any]]:
    """The Alertmanager API v2 JSON (a list of alerts) for one :class:`Alert`.

    Parameters
    ----------
    alert : Alert
        The alert.
    now : datetime, optional
        Used as ``endsAt`` when a resolved alert has no ``ended_at``, and to end the WARN
        that an ALARM replaces (default: the current time).

    Returns
    -------
    list of dict
        ``[{"labels": {"alertname", "severity", "service"}, "annotations": {"summary",
        "exposure_id"}, "startsAt", "generatorURL"}]``, with ``"endsAt"`` on a resolved alert.
        An ALARM also ends the rule's WARN (labels differ only by severity), so that the two
        are not both firing in Alertmanager.

    Examples
    --------
    >>> t = datetime(2024, 3, 1, tzinfo=UTC)
    >>> alertmanager_payload(Alert("WARN", "low_confidence", "low", "2817011", t))[0]["labels"]
    {'alertname': 'skygrade_low_confidence', 'severity': 'warning', 'service': 'skygrade'}
    """
    now = now or datetime.now(UTC)

    def entry(severity: str, ends_at: datetime | None) -> dict[str, Any]:
        item: dict[str, Any] = {
            "labels": {
                "alertname": alert.alertname,
                "severity": severity,
                "service": "skygrade",
            },
            "annotations": {"summary": alert.message, "exposure_id": alert.exposure_id or ""},
            "startsAt": rfc3339(alert.started_at),
        }
        if ends_at is not None:
            item["endsAt"] = rfc3339(ends_at)
        item["generatorURL"] = ""
        return item

    if alert.resolved:
        return [entry(alert.severity, alert.ended_at or now)]
    items = [entry(alert.severity, None)]
    if alert.level == "ALARM":
        items.append(entry(SEVERITY["WARN"], now))
    return items


class AlertDispatcher:
    """Log every alert and POST it to an Alertmanager-compatible webhook in the background.

    Parameters
    ----------
    url : str or None
        Webhook endpoint (http or https), e.g. ``http://localhost:9093/api/v2/alerts``. None
        only logs.
    timeout_s : float, optional
        Seconds one request may take (default 2).
    retries : int, optional
        Further attempts after a failed request (default 3), waiting ``backoff_s``, then
        twice that, and so on. A 4xx answer other than 408 and 429 is not retried.
    queue_size : int, optional
        Alerts waiting for delivery at most (default 100); when full, the oldest is dropped
        and counted in ``skygrade_alerts_dropped_total``.
    metrics : skygrade.ops.metrics.Metrics, optional
        Counts undelivered alerts (``skygrade_alert_webhook_failures_total``) and dropped ones.
    backoff_s : float, optional
        First wait between attempts (default 0.25 s).

    Raises
    ------
    ValueError
        If ``url`` is not http(s) or a number is out of range.

    Examples
    --------
    >>> dispatcher = AlertDispatcher("http://localhost:9093/api/v2/alerts")  # doctest: +SKIP
    >>> engine = AlertEngine(AlertsConfig(), sink=dispatcher.send)  # doctest: +SKIP
    >>> with dispatcher:  # doctest: +SKIP
    ...     engine.observe(row)
    """

    def __init__(
        self,
        url: str | None,
        timeout_s: float = 2.0,
        retries: int = 3,
        queue_size: int = 100,
        metrics: Metrics | None = None,
        backoff_s: float = 0.25,
    ) -> None:
        problem = None if url is None else check_http_url(url)
        if problem:
            raise ValueError(f"url: {problem}")
        if not timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s!r}")
        if retries < 0:
            raise ValueError(f"retries must be >= 0, got {retries!r}")
        if queue_size < 1:
            raise ValueError(f"queue_size must be >= 1, got {queue_size!r}")
        if backoff_s < 0:
            raise ValueError(f"backoff_s must be >= 0, got {backoff_s!r}")
        self.url = url
        self.timeout_s = float(timeout_s)
        self.retries = int(retries)
        self.backoff_s = float(backoff_s)
        self._metrics = metrics
        self._queue: collections.deque[Alert] = collections.deque()
        self._queue_size = int(queue_size)
        self._cond = threading.Condition()
        self._stopping = threading.Event()
        self._deadline = math.inf
        self._closed = False
        self._thread: threading.Thread | None = None
        self._opener = urllib.request.build_opener()

    @classmethod
    def from_config(cls, config: AlertsConfig, metrics: Metrics | None = None) -> "AlertDispatcher":
        """Build a dispatcher from the ``alerts`` config section.

        Parameters
        ----------
        config : skygrade.ops.config_daemon.AlertsConfig
            Uses ``webhook_url``, ``webhook_timeout_s``, ``webhook_retries``, ``webhook_queue``.
        metrics : skygrade.ops.metrics.Metrics, optional
            Where failures and drops are counted.

        Returns
        -------
        AlertDispatcher
            Not started.
        """
        return cls(
            config.webhook_url,
            timeout_s=config.webhook_timeout_s,
            retries=config.webhook_retries,
            queue_size=config.webhook_queue,
            metrics=metrics,
        )

    # -- lifecycle

    def start(self) -> None:
        """Start the delivery thread (nothing to start without a URL).

        Raises
        ------
        RuntimeError
            If already started, or started again after :meth:`stop`.
        """
        if self._closed:
            raise RuntimeError("AlertDispatcher was stopped; build a new one")
        if self._thread is not None:
            raise RuntimeError("AlertDispatcher is already running")
        if self.url is None:
            return
        self._thread = threading.Thread(target=self._run, name="skygrade-alerts", daemon=True)
        self._thread.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Deliver what is queued (one attempt each) within ``timeout``, then join the thread.

        Alerts still queued at the deadline are dropped and counted. Idempotent.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the thread (default 5). A request in flight may take up to
            ``timeout_s`` to give up.
        """
        with self._cond:
            self._closed = True
            self._deadline = time.monotonic() + timeout
            self._stopping.set()
            self._cond.notify_all()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout + self.timeout_s)
            if thread.is_alive():
                logger.warning("alert delivery thread still running after %.1f s", timeout)
        with self._cond:  # never started, or the thread gave up: what is left is dropped
            left = len(self._queue)
            self._queue.clear()
        if left:
            self._count_dropped(left)
            logger.warning("%d alert(s) left undelivered at shutdown", left)

    def __enter__(self) -> "AlertDispatcher":
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- sending

    def send(self, alert: Alert) -> None:
        """Log ``alert`` now and queue it for the webhook; never blocks on the network.

        Parameters
        ----------
        alert : Alert
            The alert (usually from :meth:`AlertEngine.observe`, as its sink).
        """
        if alert.resolved:
            logger.info("RESOLVED %s (was %s): %s", alert.rule, alert.level, alert.message)
        else:
            level = logging.ERROR if alert.level == "ALARM" else logging.WARNING
            logger.log(level, "%s %s: %s", alert.level, alert.rule, alert.message)
        if self.url is None:
            return
        dropped = 0
        with self._cond:
            if self._closed:
                dropped = 1
            else:
                if len(self._queue) >= self._queue_size:
                    self._queue.popleft()
                    dropped = 1
                self._queue.append(alert)
                self._cond.notify()
        if dropped:
            self._count_dropped(dropped)
            logger.warning("alert queue full or closed: dropped an alert")

    def pending(self) -> int:
        """Number of alerts waiting for delivery."""
        with self._cond:
            return len(self._queue)

    # -- the delivery thread

    def _count_dropped(self, n: int) -> None:
        if self._metrics is not None:
            self._metrics.alerts_dropped.inc(n)

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue and not self._stopping.is_set():
                    self._cond.wait()
                if not self._queue:
                    return
                if self._stopping.is_set() and time.monotonic() >= self._deadline:
                    return  # stop() drops and counts what is left
                alert = self._queue.popleft()
            try:
                self._deliver(alert)
            except Exception:  # never let the thread die with alerts queued
                logger.exception("alert delivery failed unexpectedly")

    def _deliver(self, alert: Alert) -> None:
        body = json.dumps(alertmanager_payload(alert)).encode("utf-8")
        attempts = 1 if self._stopping.is_set() else 1 + self.retries
        error = "not attempted"
        for attempt in range(attempts):
            if attempt and self._stopping.wait(self.backoff_s * 2 ** (attempt - 1)):
                break  # stopping: no more retries
            try:
                self._post(body)
                return
            except urllib.error.HTTPError as exc:
                exc.close()  # it holds the response and its socket
                error = f"HTTP {exc.code} {exc.reason}"
                if 400 <= exc.code < 500 and exc.code not in (408, 429):
                    break
            except (OSError, ValueError) as exc:  # URLError, timeouts, refused, bad answers
                error = f"{type(exc).__name__}: {getattr(exc, 'reason', exc)}"
        if self._metrics is not None:
            self._metrics.webhook_failures.inc()
        logger.error(
            "alert webhook %s failed for %s %s: %s", self.url, alert.level, alert.rule, error
        )

    def _post(self, body: bytes) -> None:
        request = urllib.request.Request(
            self.url,
            data=body,
            method="POST",
            headers={"Content-Type": "application/json", "User-Agent": "skygrade"},
        )
        with self._opener.open(request, timeout=self.timeout_s) as response:
            response.read()
