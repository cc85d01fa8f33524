"""Tests for skygrade.ops.alerts (the WARN / ALARM rules) and skygrade.ops.alert_delivery
(Alertmanager JSON, background delivery)."""

import json
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace

import pytest

from skygrade.ops.alert_delivery import AlertDispatcher, alertmanager_payload, rfc3339
from skygrade.ops.alerts import RULES, Alert, AlertEngine
from skygrade.ops.config import parse_config
from skygrade.ops.config_daemon import AlertsConfig
from skygrade.ops.config_values import ConfigError
from skygrade.ops.metrics import Metrics

T0 = datetime(2024, 3, 1, 8, 0, tzinfo=UTC)


class Clock:
    """A clock that advances one minute per reading (one exposure a minute)."""

    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        self.now += timedelta(minutes=1)
        return self.now


def row(exposure_id: int, grade: str | None = "GOOD", status: str = "graded", **extra) -> dict:
    base = {
        "exposure_id": exposure_id,
        "grade": grade,
        "status": status,
        "confidence": 0.95,
        "median_elongation": 1.1,
        "median_iso0": 20.0,
        "reason": None,
    }
    return base | extra


def fired(alerts: list[Alert]) -> list[tuple[str, str, bool]]:
    return [(a.rule, a.level, a.resolved) for a in alerts]


@pytest.fixture
def metrics() -> Metrics:
    return Metrics()


def wait_for(predicate: Callable[[], bool], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.01)
    return predicate()


# ------------------------------------------------------------------------------------- engine


def test_consecutive_bad_warns_at_3_alarms_at_6_and_resolves_on_good(metrics):
    sink: list[Alert] = []
    engine = AlertEngine(AlertsConfig(), sink=sink.append, metrics=metrics, clock=Clock())
    script = [row(2817000, "GOOD")] + [row(2817001 + i, "BT") for i in range(6)]
    script.append(row(2817007, "GOOD"))
    results = [engine.observe(r) for r in script]
    assert [fired(r) for r in results] == [
        [],
        [],
        [],
        [("consecutive_bad", "WARN", False)],
        [],
        [],
        [("consecutive_bad", "ALARM", False)],
        [("consecutive_bad", "ALARM", True)],
    ]
    warn, alarm, resolved = results[3][0], results[6][0], results[7][0]
    assert warn.message == "3 consecutive exposures not GOOD (last: BT, 2817003)"
    assert alarm.message == "6 consecutive exposures not GOOD (last: BT, 2817006)"
    assert (warn.exposure_id, alarm.exposure_id, resolved.exposure_id) == (
        "2817003",
        "2817006",
        "2817007",
    )
    assert warn.started_at == T0 + timedelta(minutes=4)
    assert alarm.started_at == T0 + timedelta(minutes=7)
    assert resolved.started_at == alarm.started_at
    assert resolved.ended_at == T0 + timedelta(minutes=8)
    assert "2817007 graded GOOD after 6 consecutive" in resolved.message
    assert sink == [warn, alarm, resolved]
    assert metrics.registry.get_sample_value("skygrade_alerts_total", {"level": "WARN"}) == 1
    assert metrics.registry.get_sample_value("skygrade_alerts_total", {"level": "ALARM"}) == 1
    assert engine.active() == []


def test_active_shows_the_latest_message_without_firing_again():
    engine = AlertEngine(AlertsConfig(), clock=Clock())
    for i in range(4):
        engine.observe(row(i, "RBT"))
    (active,) = engine.active()
    assert active.level == "WARN"
    assert active.message == "4 consecutive exposures not GOOD (last: RBT, 3)"
    assert active.started_at == T0 + timedelta(minutes=3)  # when it went active
    assert active.exposure_id == "3"


def test_quarantined_exposures_neither_extend_nor_break_a_bad_run():
    engine = AlertEngine(AlertsConfig(quarantine_warn=5), clock=Clock())
    engine.observe(row(1, "BT"))
    engine.observe(row(2, None, "quarantined", reason="truncated: x", confidence=None))
    engine.observe(row(3, "BT"))
    assert engine.active() == []
    assert fired(engine.observe(row(4, "B_SEEING"))) == [("consecutive_bad", "WARN", False)]


def test_low_confidence_warns_once_and_resolves():
    engine = AlertEngine(AlertsConfig(low_confidence=0.5), clock=Clock())
    first = engine.observe(row(10, confidence=0.41))
    assert fired(first) == [("low_confidence", "WARN", False)]
    assert first[0].message == "confidence 0.41 below 0.5 (graded GOOD, 10)"
    assert engine.observe(row(11, confidence=0.3)) == []  # still active: not fired again
    assert engine.observe(row(12, confidence=float("nan"))) == []  # no information
    assert [a.rule for a in engine.active()] == ["low_confidence"]
    assert fired(engine.observe(row(13, confidence=0.5))) == [("low_confidence", "WARN", True)]


def test_elongation_warn_alarm_sticky_then_resolved():
    engine = AlertEngine(AlertsConfig(), clock=Clock())
    assert engine.observe(row(1, median_elongation=1.5)) == []
    assert fired(engine.observe(row(2, median_elongation=1.7))) == [
        ("median_elongation", "WARN", False)
    ]
    (alarm,) = engine.observe(row(3, median_elongation=2.6))
    assert (alarm.level, alarm.rule) == ("ALARM", "median_elongation")
    assert alarm.message == "median elongation 2.60 >= 2.2 (3): stars trailed, check tracking"
    assert engine.observe(row(4, median_elongation=1.8)) == []  # the ALARM stays until cleared
    assert [a.level for a in engine.active()] == ["ALARM"]
    (resolved,) = engine.observe(row(5, median_elongation=1.2))
    assert (resolved.level, resolved.resolved) == ("ALARM", True)
    assert resolved.message == "median elongation 1.20 back below 1.6 (5)"


def test_elongation_straight_to_alarm():
    engine = AlertEngine(AlertsConfig(), clock=Clock())
    alerts = engine.observe(row(1, "RBT", median_elongation=3.4))
    assert ("median_elongation", "ALARM", False) in fired(alerts)


def test_iso0_rule_is_off_by_default_and_warns_when_set():
    assert AlertEngine(AlertsConfig()).observe(row(1, median_iso0=1e6)) == []
    engine = AlertEngine(AlertsConfig(median_iso0_warn=40.0), clock=Clock())
    (alert,) = engine.observe(row(1, "B_SEEING", median_iso0=55.0, median_elongation=1.05))
    assert (alert.rule, alert.level) == ("median_iso0", "WARN")
    assert alert.message == "median ISO0 55.0 px > 40 (1): poor seeing"


def test_quarantine_rate_over_the_window():
    engine = AlertEngine(AlertsConfig(quarantine_warn=3, quarantine_window=10), clock=Clock())
    q = {"grade": None, "status": "quarantined", "confidence": None}
    assert engine.observe(row(1, **q, reason="truncated: 12 of 37 HDUs")) == []
    for i in range(2, 9):
        assert engine.observe(row(i)) == []
    assert engine.observe(row(9, **q, reason="checksum: bad")) == []
    (alert,) = engine.observe(row(10, **q, reason="truncated: 3 of 37 HDUs"))
    assert (alert.rule, alert.level) == ("quarantine_rate", "WARN")
    assert alert.message == (
        "3 of the last 10 exposures quarantined (last 10: truncated: 3 of 37 HDUs)"
    )
    (resolved,) = engine.observe(row(11))  # exposure 1 leaves the window
    assert (resolved.rule, resolved.resolved) == ("quarantine_rate", True)


def test_several_rules_fire_in_rule_order():
    cfg = AlertsConfig(consecutive_bad_warn=1, consecutive_bad_alarm=1, quarantine_warn=1)
    engine = AlertEngine(cfg, clock=Clock())
    alerts = engine.observe(row(1, "RBT", confidence=0.3, median_elongation=3.0))
    assert fired(alerts) == [
        ("consecutive_bad", "ALARM", False),
        ("low_confidence", "WARN", False),
        ("median_elongation", "ALARM", False),
    ]
    assert [a.rule for a in engine.active()] == [r for r in RULES if r in {a.rule for a in alerts}]
    assert fired(engine.observe(row(2, None, "quarantined", confidence=None))) == [
        ("quarantine_rate", "WARN", False)
    ]


def test_bad_status_is_refused():
    with pytest.raises(ValueError, match=r"row\['status'\] must be one of .* got 'done'"):
        AlertEngine(AlertsConfig()).observe(row(1, status="done"))


def test_a_failing_sink_is_logged_not_raised(caplog):
    def sink(alert: Alert) -> None:
        raise RuntimeError("pager down")

    cfg = AlertsConfig(consecutive_bad_warn=1, consecutive_bad_alarm=2)
    alerts = AlertEngine(cfg, sink=sink).observe(row(1, "BT"))
    assert len(alerts) == 1
    assert "alert sink failed" in caplog.text and "pager down" in caplog.text


def test_alerts_config_section_and_cross_checks():
    cfg = parse_config({"alerts": {"webhook_url": "http://localhost:9093/api/v2/alerts"}})
    assert cfg.alerts.webhook_url == "http://localhost:9093/api/v2/alerts"
    assert (cfg.metrics.host, cfg.metrics.port) == ("127.0.0.1", 9108)
    bad = {
        "alerts": {
            "consecutive_bad_warn": 4,
            "consecutive_bad_alarm": 2,
            "median_elongation_alarm": 1.5,
            "quarantine_warn": 11,
        }
    }
    with pytest.raises(ConfigError) as info:
        parse_config(bad, "skygrade.yaml")
    assert str(info.value).splitlines() == [
        "skygrade.yaml: alerts.consecutive_bad_alarm: expected >= consecutive_bad_warn (4), got 2",
        "skygrade.yaml: alerts.median_elongation_alarm: expected >= median_elongation_warn "
        "(1.6), got 1.5",
        "skygrade.yaml: alerts.quarantine_warn: expected <= quarantine_window (10), got 11",
    ]
    with pytest.raises(ConfigError, match="alerts.webhook_url: expected an http:// or https://"):
        parse_config({"alerts": {"webhook_url": "file:///etc/passwd"}})
    with pytest.raises(ConfigError, match="metrics.port: expected an integer >= 0 and <= 65535"):
        parse_config({"metrics": {"port": 70000}})


# ---------------------------------------------------------------------------------- payload


def test_rfc3339():
    assert rfc3339(datetime(2024, 3, 1, 8, 15, 2, 250000, tzinfo=UTC)) == "2024-03-01T08:15:02.250Z"
    assert rfc3339(datetime(2024, 3, 1, 8)) == "2024-03-01T08:00:00.000Z"


def test_alertmanager_payload():
    warn = Alert("WARN", "consecutive_bad", "3 consecutive ...", "2817003", T0)
    assert alertmanager_payload(warn) == [
        {
            "labels": {
                "alertname": "skygrade_consecutive_bad",
                "severity": "warning",
                "service": "skygrade",
            },
            "annotations": {"summary": "3 consecutive ...", "exposure_id": "2817003"},
            "startsAt": "2024-03-01T08:00:00.000Z",
            "generatorURL": "",
        }
    ]
    later = T0 + timedelta(minutes=5)
    alarm = Alert("ALARM", "consecutive_bad", "6 consecutive ...", "2817006", T0)
    firing, warn_end = alertmanager_payload(alarm, now=later)
    assert firing["labels"]["severity"] == "critical" and "endsAt" not in firing
    assert warn_end["labels"]["severity"] == "warning"  # the WARN it replaces ends
    assert warn_end["endsAt"] == "2024-03-01T08:05:00.000Z"
    resolved = Alert("ALARM", "consecutive_bad", "cleared", "2817007", T0, True, later)
    (ended,) = alertmanager_payload(resolved)
    assert ended["labels"]["severity"] == "critical"
    assert (ended["startsAt"], ended["endsAt"]) == (
        "2024-03-01T08:00:00.000Z",
        "2024-03-01T08:05:00.000Z",
    )


# ---------------------------------------------------------------------------------- delivery


class _QuietServer(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address) -> None:  # a client that timed out
        pass


@pytest.fixture(autouse=True)
def _no_proxy(monkeypatch):
    for name in ("http_proxy", "https_proxy", "all_proxy", "HTTP_PROXY", "HTTPS_PROXY"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("ALL_PROXY", raising=False)


@pytest.fixture
def webhook() -> Iterator[SimpleNamespace]:
    """A local Alertmanager stand-in: records JSON bodies; scripted answers and delay."""
    hook = SimpleNamespace(
        bodies=[], answers=[], attempts=0, delay_s=0.0, release=threading.Event()
    )
    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            with lock:
                hook.attempts += 1
                status = hook.answers.pop(0) if hook.answers else 200
            if hook.delay_s:
                hook.release.wait(hook.delay_s)
            if status == 200:
                with lock:
                    hook.bodies.append((self.headers["Content-Type"], json.loads(body)))
            self.send_response(status)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, format, *args) -> None:
            pass

    server = _QuietServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    hook.url = f"http://127.0.0.1:{server.server_address[1]}/api/v2/alerts"
    try:
        yield hook
    finally:
        hook.release.set()
        server.shutdown()
        server.server_close()  # joins the request threads
        thread.join()


def dead_url() -> str:
    with socket.socket() as sock:  # a port that nothing listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}/api/v2/alerts"


WARN = Alert("WARN", "low_confidence", "confidence 0.41 below 0.5", "2817011", T0)
ALARM = Alert("ALARM", "consecutive_bad", "6 consecutive exposures not GOOD", "2817006", T0)


def test_webhook_receives_alertmanager_json(webhook, metrics):
    with AlertDispatcher(webhook.url, timeout_s=2, metrics=metrics) as dispatcher:
        dispatcher.send(WARN)
        assert wait_for(lambda: len(webhook.bodies) == 1)
    content_type, body = webhook.bodies[0]
    assert content_type == "application/json"
    assert body == [
        {
            "labels": {
                "alertname": "skygrade_low_confidence",
                "severity": "warning",
                "service": "skygrade",
            },
            "annotations": {"summary": "confidence 0.41 below 0.5", "exposure_id": "2817011"},
            "startsAt": "2024-03-01T08:00:00.000Z",
            "generatorURL": "",
        }
    ]
    assert metrics.registry.get_sample_value("skygrade_alert_webhook_failures_total") == 0


def test_engine_to_dispatcher_end_to_end(webhook):
    with AlertDispatcher(webhook.url) as dispatcher:
        engine = AlertEngine(AlertsConfig(), sink=dispatcher.send, clock=Clock())
        for i in range(6):
            engine.observe(row(i, "BT"))
        engine.observe(row(6, "GOOD"))
        assert wait_for(lambda: len(webhook.bodies) == 3)
    warn, alarm, resolved = (body for _, body in webhook.bodies)
    assert [e["labels"]["severity"] for e in warn] == ["warning"]
    assert [(e["labels"]["severity"], "endsAt" in e) for e in alarm] == [
        ("critical", False),
        ("warning", True),
    ]
    assert [(e["labels"]["severity"], "endsAt" in e) for e in resolved] == [("critical", True)]
    assert alarm[0]["annotations"]["summary"] == ("6 consecutive exposures not GOOD (last: BT, 5)")


def test_every_alert_is_logged_even_without_a_url(caplog):
    caplog.set_level(logging.INFO, logger="skygrade.ops.alerts")
    dispatcher = AlertDispatcher(None)
    dispatcher.start()  # nothing to start
    dispatcher.send(WARN)
    dispatcher.send(ALARM)
    dispatcher.send(Alert("ALARM", "consecutive_bad", "GOOD again", "2817007", T0, True, T0))
    dispatcher.stop()
    assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
        ("WARNING", "WARN low_confidence: confidence 0.41 below 0.5"),
        ("ERROR", "ALARM consecutive_bad: 6 consecutive exposures not GOOD"),
        ("INFO", "RESOLVED consecutive_bad (was ALARM): GOOD again"),
    ]


def test_dead_webhook_never_slows_send_and_counts_failures(metrics, caplog):
    dispatcher = AlertDispatcher(dead_url(), 0.5, retries=2, metrics=metrics, backoff_s=0.01)
    dispatcher.start()
    try:
        durations = []
        for alert in (WARN, ALARM, WARN):
            started = time.perf_counter()
            dispatcher.send(alert)
            durations.append(time.perf_counter() - started)
        # a blocking send would take >= 0.5 s (timeout_s); 10 ms, with room for a loaded CI
        assert sorted(durations)[1] < 0.010 and max(durations) < 0.1
        failures = "skygrade_alert_webhook_failures_total"
        assert wait_for(lambda: metrics.registry.get_sample_value(failures) == 3)
    finally:
        started = time.monotonic()
        dispatcher.stop(timeout=2)
        assert time.monotonic() - started < 1.0
    assert "alert webhook http://127.0.0.1:" in caplog.text and "failed for WARN" in caplog.text


def test_slow_webhook_times_out_in_the_background(webhook, metrics):
    webhook.delay_s = 5.0  # far beyond the client's timeout
    dispatcher = AlertDispatcher(webhook.url, 0.2, retries=1, metrics=metrics, backoff_s=0.01)
    dispatcher.start()
    try:
        started = time.perf_counter()
        dispatcher.send(ALARM)
        assert time.perf_counter() - started < 0.050  # the request takes >= 0.2 s (timeout_s)
        failures = "skygrade_alert_webhook_failures_total"
        assert wait_for(lambda: metrics.registry.get_sample_value(failures) == 1)
        assert webhook.attempts == 2  # first try + 1 retry
        dispatcher.send(WARN)  # in flight when stop() comes: at most one timeout more
        assert wait_for(lambda: webhook.attempts == 3)
    finally:
        started = time.monotonic()
        dispatcher.stop(timeout=1)
        assert time.monotonic() - started < 1.0  # the request in flight (0.2 s), no more retries
    assert metrics.registry.get_sample_value(failures) == 2
    assert webhook.bodies == []


def test_retries_with_backoff_then_delivers(webhook, metrics):
    webhook.answers = [503, 500]
    with AlertDispatcher(webhook.url, 1, retries=3, metrics=metrics, backoff_s=0.01) as d:
        d.send(WARN)
        assert wait_for(lambda: len(webhook.bodies) == 1)
    assert webhook.attempts == 3
    assert metrics.registry.get_sample_value("skygrade_alert_webhook_failures_total") == 0


def test_client_error_is_not_retried(webhook, metrics, caplog):
    webhook.answers = [400]
    failures = "skygrade_alert_webhook_failures_total"
    with AlertDispatcher(webhook.url, 1, retries=3, metrics=metrics, backoff_s=0.01) as d:
        d.send(WARN)
        assert wait_for(lambda: metrics.registry.get_sample_value(failures) == 1)
    assert webhook.attempts == 1
    assert "HTTP 400" in caplog.text


def test_full_queue_drops_the_oldest_and_counts_it(webhook, metrics):
    dispatcher = AlertDispatcher(webhook.url, 1, queue_size=2, metrics=metrics)
    first = Alert("WARN", "low_confidence", "first", "1", T0)
    second = Alert("WARN", "low_confidence", "second", "2", T0)
    third = Alert("WARN", "low_confidence", "third", "3", T0)
    for alert in (first, second, third):  # not started yet: they queue up
        dispatcher.send(alert)
    assert dispatcher.pending() == 2
    assert metrics.registry.get_sample_value("skygrade_alerts_dropped_total") == 1
    with dispatcher:
        assert wait_for(lambda: len(webhook.bodies) == 2)
    summaries = [body[0]["annotations"]["summary"] for _, body in webhook.bodies]
    assert summaries == ["second", "third"]


def test_stop_drops_and_counts_what_was_never_sent(metrics):
    dispatcher = AlertDispatcher(dead_url(), 1, metrics=metrics)
    dispatcher.send(WARN)
    dispatcher.send(WARN)
    dispatcher.stop()  # never started
    assert metrics.registry.get_sample_value("skygrade_alerts_dropped_total") == 2
    dispatcher.send(WARN)  # after stop: logged and dropped
    assert metrics.registry.get_sample_value("skygrade_alerts_dropped_total") == 3
    with pytest.raises(RuntimeError, match="was stopped"):
        dispatcher.start()


def test_from_config_and_invalid_arguments():
    cfg = AlertsConfig(webhook_url="https://am.example/api/v2/alerts", webhook_retries=0)
    dispatcher = AlertDispatcher.from_config(cfg)
    assert (dispatcher.url, dispatcher.timeout_s, dispatcher.retries) == (
        "https://am.example/api/v2/alerts",
        2.0,
        0,
    )
    with pytest.raises(ValueError, match="url: expected an http:// or https:// URL"):
        AlertDispatcher("file:///etc/passwd")
    with pytest.raises(ValueError, match="timeout_s must be > 0, got 0"):
        AlertDispatcher("http://localhost:9093", timeout_s=0)
    with pytest.raises(ValueError, match="queue_size must be >= 1, got 0"):
        AlertDispatcher("http://localhost:9093", queue_size=0)
