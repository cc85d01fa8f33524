"""The Prometheus alert rules and scrape example in ops/prometheus/: promtool's checks and unit
tests pass, every alert the operations issue asks for is there with a firing and a quiet unit
test, and the series the unit tests feed the rules are the ones the daemon exports (names,
suffixes, label names and bucket label values taken from a generated exposition)."""

import re
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from skygrade.ops.metrics import Metrics

PROMETHEUS_DIR = Path(__file__).resolve().parents[2] / "ops" / "prometheus"
RULES = PROMETHEUS_DIR / "skygrade.rules.yml"
RULE_TESTS = PROMETHEUS_DIR / "skygrade.rules.test.yml"
SCRAPE_EXAMPLE = PROMETHEUS_DIR / "prometheus.yml"
PROMTOOL = "/usr/bin/promtool"
JOB = "skygrade"
#: The alerts of the operations issue: latency high, backlog growing, no grades during the
#: night, quarantine rate high, daemon down.
REQUIRED_ALERTS = {
    "SkygradeGradingLatencyHigh",
    "SkygradeBacklogGrowing",
    "SkygradeNoGradesTonight",
    "SkygradeQuarantineRateHigh",
    "SkygradeDaemonDown",
}
#: Labels Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}

_SERIES = re.compile(r"^\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*(?:\{(.*)\})?\s*$")
_LABEL = re.compile(r'\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*=\s*"((?:[^"\\]|\\.)*)"\s*,?')


def promtool(*args: str, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PROMTOOL, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )


def parse_series(text: str) -> tuple[str, dict[str, str]]:
    """``name{a="b", ...}`` (a promtool input series) -> (name, labels)."""
    found = _SERIES.match(text)
    assert found, f"not a series selector: {text!r}"
    name, body = found[1], found[2] or ""
    labels = dict(_LABEL.findall(body))
    assert _LABEL.sub("", body).strip() == "", f"cannot parse the labels of {text!r}"
    return name, labels


def exported_samples() -> dict[str, set[frozenset[str]]]:
    """Sample name -> the label-name sets it is exported with, from a real exposition.

    Every labelled metric gets one observation so that its children appear; histogram buckets
    keep their ``le`` values (as the exposition writes them) under the key ``"<name>|le"``.
    """
    m = Metrics()
    m.observe_exposure("GOOD", "graded", None, 12.0, 0.9, 36, 5000, {"extract": 3.1})
    m.observe_exposure(None, "quarantined", "truncated: x", 1.0, None, 0, 0, {})
    m.observe_ccd_quarantined("bad_shape: x")
    m.alerts.labels("WARN").inc()
    m.set_model("v1")
    samples: dict[str, set[frozenset[str]]] = {}
    for family in text_string_to_metric_families(generate_latest(m.registry).decode()):
        for sample in family.samples:
            samples.setdefault(sample.name, set()).add(frozenset(sample.labels))
            if "le" in sample.labels:
                samples.setdefault(f"{sample.name}|le", set()).add(frozenset([sample.labels["le"]]))
    return samples


def alert_rules() -> dict[str, dict]:
    groups = yaml.safe_load(RULES.read_text())["groups"]
    return {r["alert"]: r for g in groups for r in g["rules"] if "alert" in r}


def rule_tests() -> list[dict]:
    return yaml.safe_load(RULE_TESTS.read_text())["tests"]


# ------------------------------------------------------------------------------------ promtool


def test_promtool_check_rules_passes():
    result = promtool("check", "rules", str(RULES))
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(alert_rules())} rules found" in result.stdout


def test_promtool_unit_tests_pass():
    result = promtool("test", "rules", RULE_TESTS.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_promtool_unit_tests_catch_a_broken_rule(tmp_path):
    """The unit tests can fail: the same tests against rules with one metric name mistyped."""
    broken = RULES.read_text().replace(
        "skygrade_backlog_exposures >= 3", "skygrade_backlog_exposure >= 3"
    )
    assert broken != RULES.read_text()
    (tmp_path / RULES.name).write_text(broken)
    (tmp_path / RULE_TESTS.name).write_text(RULE_TESTS.read_text())
    result = promtool("test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert result.returncode != 0
    assert "SkygradeBacklogGrowing" in result.stdout + result.stderr


def test_scrape_example_passes_promtool_check_config_and_loads_the_rules():
    result = promtool("check", "config", SCRAPE_EXAMPLE.name)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 1 rule files found" in result.stdout
    config = yaml.safe_load(SCRAPE_EXAMPLE.read_text())
    assert config["rule_files"] == [RULES.name]
    (job,) = config["scrape_configs"]
    assert job["job_name"] == JOB
    assert job["static_configs"][0]["targets"] == ["127.0.0.1:9108"]  # the daemon's default


# ------------------------------------------------------------------------------------ contents


def test_the_issue_alerts_exist_with_severity_and_text():
    rules = alert_rules()
    assert set(rules) >= REQUIRED_ALERTS
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in ("warning", "critical"), name
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], name
    assert f'up{{job="{JOB}"}}' in rules["SkygradeDaemonDown"]["expr"]


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    cases: dict[str, set[bool]] = {}
    for test in rule_tests():
        for case in test["alert_rule_test"]:
            cases.setdefault(case["alertname"], set()).add(bool(case.get("exp_alerts")))
    missing = {name: cases.get(name, set()) for name in alert_rules()}
    missing = {name: seen for name, seen in missing.items() if seen != {True, False}}
    assert not missing, f"alerts without both a firing and a quiet case: {missing}"


def test_unit_test_series_are_exported_by_the_daemon():
    """Each input series has a name, label names and (for buckets) an ``le`` value that the
    daemon's exposition has; Prometheus adds job and instance."""
    exported = exported_samples()
    assert "skygrade_grading_latency_seconds_bucket" in exported  # the exposition was read
    checked = 0
    for test in rule_tests():
        for item in test["input_series"]:
            name, labels = parse_series(item["series"])
            if name == "up":
                assert set(labels) <= TARGET_LABELS
                continue
            assert name in exported, f"{name} is not exported (ops/metrics.py)"
            assert labels.keys() >= TARGET_LABELS, item["series"]
            own = frozenset(labels.keys() - TARGET_LABELS)
            assert own in exported[name], f"{item['series']}: labels {set(own)} not exported"
            if "le" in labels:
                assert frozenset([labels["le"]]) in exported[f"{name}|le"], item["series"]
            checked += 1
    assert checked >= 20


def test_metric_names_match_metrics_metric_names():
    """The exposition helper agrees with Metrics.metric_names() on what exists."""
    exported = {name for name in exported_samples() if "|" not in name}
    names = Metrics().metric_names()
    assert names <= exported
    assert {n for n in exported - names if not n.endswith("_created")} == set()


@pytest.mark.parametrize(
    ("text", "parsed"),
    [
        ('up{job="skygrade", instance="a:1"}', ("up", {"job": "skygrade", "instance": "a:1"})),
        ('x_bucket{le="+Inf"}', ("x_bucket", {"le": "+Inf"})),
        ("x_total", ("x_total", {})),
    ],
)
def test_parse_series(text, parsed):
    assert parse_series(text) == parsed
