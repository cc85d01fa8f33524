"""The daemon scraped by a real Prometheus server (Debian's ``prometheus``) on loopback.

``skygrade watch`` runs as a process with the shipped model on a temporary drop directory,
Prometheus runs with the example scrape configuration (ops/prometheus/prometheus.yml) turned to a
1 s interval and the shipped alert rules, and ``skygrade simulate`` delivers a few tiny exposures
plus one file that is not FITS. The test then asks Prometheus's HTTP API for what an operator
would look at: the graded and quarantined counters, the latency histogram, the model version,
the alert rules evaluating without error and every query of the Grafana dashboard. Every wait is
bounded; both servers are killed with their process groups at the end.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from skygrade.ops.metrics import LATENCY_BUCKETS_S

REPO = Path(__file__).resolve().parents[2]
PROMETHEUS_DIR = REPO / "ops" / "prometheus"
DASHBOARD = REPO / "ops" / "grafana" / "skygrade.json"
SKYGRADE = Path(sys.executable).parent / "skygrade"
PROMETHEUS = "/usr/bin/prometheus"
NIGHT = "2026-11-24"
N_EXPOSURES = 3
MODEL_VERSION = "prometheus-test"

#: Seconds the daemon may take to import Beam and torch and serve its metrics port.
DAEMON_START_S = 90.0
#: Seconds Prometheus may take to answer /-/ready.
PROMETHEUS_START_S = 30.0
#: Seconds from the first exposure written to every count seen by Prometheus.
SCRAPED_S = 120.0
#: Grafana variables in the dashboard's queries, and what they stand for here.
GRAFANA_VARIABLES = {"$__interval": "1m", "$__rate_interval": "1m", "$__range": "1h"}
#: Metrics with no series until something happens that this test does not cause (a CCD
#: quarantined inside a readable exposure, an image-quality alert, a Prometheus alert).
MAY_BE_EMPTY = {"skygrade_ccds_quarantined_total", "skygrade_alerts_total", "ALERTS"}

#: What Prometheus must end up with: the exposures graded, the junk file quarantined, and a
#: latency observed for each graded exposure (not for the quarantined one).
COUNTERS = {
    "skygrade_exposures_graded_total": N_EXPOSURES,
    "skygrade_exposures_quarantined_total": 1,
    "skygrade_grading_latency_seconds_count": N_EXPOSURES,
}

_LISTENING = re.compile(r"metrics on http://([^:/\s]+):(\d+)/metrics")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory, tiny_bundle) -> Path:
    """A small untrained bundle: grades are arbitrary, the metrics are what is tested."""
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", MODEL_VERSION)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def started(cmd: list[str], log: Path) -> Iterator[subprocess.Popen]:
    """Run ``cmd`` in its own session with its output in ``log``; kill the session at the end."""
    with log.open("wb") as fh:
        proc = subprocess.Popen(
            cmd, cwd=REPO, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def wait_until(predicate, timeout: float, what: str, procs=(), logs=()):
    """Poll ``predicate()`` until it returns something truthy; fail on timeout or a dead process."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        dead = [p for p in procs if p.poll() is not None]
        if dead or time.monotonic() > end:
            tails = "".join(
                f"\n--- {log.name}:\n{log.read_text(errors='replace')[-4000:]}" for log in logs
            )
            why = f"{dead[0].args[0]} exited ({dead[0].returncode})" if dead else "timed out"
            what = what() if callable(what) else what
            pytest.fail(f"{why} after waiting for {what}\n{tails}")
        time.sleep(0.25)


def http_get(url: str) -> tuple[int, bytes] | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except OSError:
        return None


class PrometheusApi:
    def __init__(self, base: str) -> None:
        self.base = base

    def query(self, expr: str) -> dict:
        url = f"{self.base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
        answer = http_get(url)
        assert answer is not None, f"Prometheus did not answer {expr!r}"
        return json.loads(answer[1])

    def vector(self, expr: str) -> list[dict]:
        doc = self.query(expr)
        assert doc["status"] == "success", f"{expr!r}: {doc}"
        return doc["data"]["result"]

    def scalar(self, expr: str) -> float | None:
        result = self.vector(expr)
        return float(result[0]["value"][1]) if len(result) == 1 else None

    def rules(self) -> list[dict]:
        answer = http_get(f"{self.base}/api/v1/rules")
        assert answer is not None and answer[0] == 200, answer
        return [r for g in json.loads(answer[1])["data"]["groups"] for r in g["rules"]]


def prometheus_config(path: Path, target: str) -> Path:
    """The shipped example, scraping ``target`` every second, with the rules by absolute path."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval="1s", evaluation_interval="1s")
    config["rule_files"] = [str(PROMETHEUS_DIR / name) for name in config["rule_files"]]
    config.pop("alerting")  # no Alertmanager here
    (job,) = config["scrape_configs"]
    job.update(scrape_interval="1s", scrape_timeout="1s")
    job["static_configs"][0]["targets"] = [target]
    path.write_text(yaml.safe_dump(config))
    return path


def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, query with Grafana's variables replaced) for every dashboard target."""
    panels = json.loads(DASHBOARD.read_text())["panels"]
    queries = []
    for panel in panels:
        for target in panel["targets"]:
            expr = target["expr"].replace('=~"$instance"', '=~".*"')
            for variable, value in GRAFANA_VARIABLES.items():
                expr = expr.replace(variable, value)
            queries.append((panel["title"], expr))
    return queries


def test_prometheus_scrapes_grades_latency_and_model_and_runs_rules_and_dashboard(bundle, tmp_path):
    drop, out = tmp_path / "drop", tmp_path / "grades"
    (drop / NIGHT).mkdir(parents=True)
    config = tmp_path / "skygrade.yaml"
    config.write_text(
        "watch: {settle_s: 0.2, poll_s: 0.05, rescan_s: null, ccd_workers: 1, retry_s: 0.3,"
        " shutdown_timeout_s: 20}\nmetrics: {host: 127.0.0.1, port: 0}\n"
    )
    daemon_log, prom_log = tmp_path / "daemon.log", tmp_path / "prometheus.log"
    watch = [str(SKYGRADE), "--config", str(config), "watch", "--drop", str(drop)]
    with started([*watch, "--out", str(out), "--bundle", str(bundle)], daemon_log) as daemon:
        found = wait_until(
            lambda: _LISTENING.search(daemon_log.read_text(errors="replace")),
            DAEMON_START_S,
            "the daemon's metrics port",
            [daemon],
            [daemon_log],
        )
        target = f"{found[1]}:{found[2]}"
        prom_port = free_port()
        prom_cmd = [
            PROMETHEUS,
            f"--config.file={prometheus_config(tmp_path / 'prometheus.yml', target)}",
            f"--storage.tsdb.path={tmp_path / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{prom_port}",
        ]
        with started(prom_cmd, prom_log) as prometheus:
            procs, logs = [daemon, prometheus], [daemon_log, prom_log]
            base = f"http://127.0.0.1:{prom_port}"
            wait_until(
                lambda: (http_get(f"{base}/-/ready") or (0,))[0] == 200,
                PROMETHEUS_START_S,
                "Prometheus ready",
                procs,
                logs,
            )
            api = PrometheusApi(base)
            wait_until(lambda: api.scalar('up{job="skygrade"}') == 1, 30, "a scrape", procs, logs)

            start = time.monotonic()
            simulate = [str(SKYGRADE), "simulate", "--drop", str(drop), "--nights", NIGHT]
            simulate += ["--exposures", str(N_EXPOSURES), "--cadence", "0.3", "--transfer", "0.2"]
            simulate += ["--n-ccd", "1", "--ccd-shape", "256x320", "--seed", "7"]
            subprocess.run(simulate, cwd=REPO, check=True, timeout=60, capture_output=True)
            (drop / NIGHT / "2899999o.fits").write_bytes(b"not a FITS file " * 400)

            seen = {}

            def all_counted() -> bool:
                for name in COUNTERS:
                    seen[name] = api.scalar(f'sum({name}{{job="skygrade"}})')
                return seen == COUNTERS

            wait_until(all_counted, SCRAPED_S, lambda: f"{COUNTERS}, last seen {seen}", procs, logs)
            scraped_s = time.monotonic() - start

            # The latency histogram: one series per bucket, +Inf holding every exposure.
            buckets = api.vector('skygrade_grading_latency_seconds_bucket{job="skygrade"}')
            assert len(buckets) == len(LATENCY_BUCKETS_S) + 1
            by_le = {b["metric"]["le"]: float(b["value"][1]) for b in buckets}
            # Graded exposures only: a refused file's ~0 s would hide slow grading.
            assert by_le["+Inf"] == N_EXPOSURES
            assert sorted(by_le.values()) == [by_le[le] for le in sorted(by_le, key=float)]
            p90 = api.scalar(
                "histogram_quantile(0.9, sum by (le) "
                '(rate(skygrade_grading_latency_seconds_bucket{job="skygrade"}[5m])))'
            )
            assert p90 is not None and 0 < p90 <= LATENCY_BUCKETS_S[-1]
            # Quarantine by reason slug, the model version as an _info metric.
            (q,) = api.vector('skygrade_exposures_quarantined_total{job="skygrade"}')
            assert q["metric"]["reason"] == "not_fits"
            (info,) = api.vector('skygrade_model_info{job="skygrade"}')
            assert info["metric"]["version"] == MODEL_VERSION

            # The shipped alert rules load and evaluate on this data without an error.
            def evaluated() -> list[dict] | None:
                rules = api.rules()
                return rules if all(r["health"] != "unknown" for r in rules) else None

            rules = wait_until(evaluated, 30, "the rules evaluated", procs, logs)
            shipped = yaml.safe_load((REPO / "ops/prometheus/skygrade.rules.yml").read_text())
            names = {r["alert"] for g in shipped["groups"] for r in g["rules"]}
            assert len(names) >= 7 and {r["name"] for r in rules} == names
            assert {r["name"]: r["health"] for r in rules} == {r["name"]: "ok" for r in rules}
            firing = {r["name"] for r in rules if r["state"] == "firing"}
            assert not firing & {"SkygradeDaemonDown", "SkygradeDaemonAbsent"}

            # Every query of the Grafana dashboard runs; only the listed metrics may be empty.
            # increase() needs two samples of a counter in its window: a slow machine may need
            # a few more scrapes after the counters appeared.
            deadline = time.monotonic() + 30.0
            while True:
                empty = []
                for title, expr in dashboard_queries():
                    doc = api.query(expr)
                    assert doc["status"] == "success", f"panel {title!r}: {expr}: {doc}"
                    if not doc["data"]["result"]:
                        empty.append((title, expr))
                unexplained = [
                    (title, expr)
                    for title, expr in empty
                    if not any(m in expr for m in MAY_BE_EMPTY)
                ]
                if not unexplained or time.monotonic() > deadline:
                    break
                time.sleep(1.0)
            assert not unexplained, f"dashboard queries with no data: {unexplained}"
    print(f"exposures graded and scraped {scraped_s:.1f} s after the first was written")
