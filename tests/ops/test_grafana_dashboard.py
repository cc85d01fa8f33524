"""The Grafana dashboard ops/grafana/skygrade.json: well formed, every metric its queries name is
one the daemon exports (Metrics().metric_names()), every query is valid PromQL (promtool), and it
shows what the operations issue asks for. tests/integration/test_prometheus_scrape.py runs the
same queries against a real Prometheus scraping a real daemon."""

import json
import re
import subprocess
from pathlib import Path

import pytest
import yaml

from skygrade.ops.metrics import Metrics

DASHBOARD = Path(__file__).resolve().parents[2] / "ops" / "grafana" / "skygrade.json"
PROMTOOL = "/usr/bin/promtool"
#: Series that Prometheus itself makes: the scrape's health and the alert states.
PROMETHEUS_SERIES = {"up", "ALERTS"}
#: Metrics the issue asks to see: grades through the night, latency percentiles, backlog,
#: quarantines, model version.
REQUIRED = {
    "skygrade_exposures_graded_total",
    "skygrade_grading_latency_seconds_bucket",
    "skygrade_backlog_exposures",
    "skygrade_exposures_quarantined_total",
    "skygrade_model_info",
}
#: What Grafana puts in place of its variables when it runs a query (examples).
VARIABLES = {"$__interval": "10m", "$__rate_interval": "1m", "$__range": "12h", "$instance": ".*"}
GRID_COLUMNS = 24

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
_GROUPING = re.compile(
    r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", re.IGNORECASE
)
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "by", "without", "on"}
_IDENT = re.compile(r"(?<![\w:.$])([a-zA-Z_:][a-zA-Z0-9_:]*)(?!\s*\(|[\w:])")


def metric_names_in(expr: str) -> set[str]:
    """The metric names a PromQL expression selects.

    Strings, label matchers, ranges, grouping label lists and Grafana variables are removed
    first; what remains that is neither a function call nor a keyword is a metric name.
    """
    text = _STRING.sub('""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = _GROUPING.sub(" ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    return {n for n in _IDENT.findall(text) if n.lower() not in _KEYWORDS}


def load() -> dict:
    return json.loads(DASHBOARD.read_text())


def panels(dashboard: dict) -> list[dict]:
    """Every panel, those inside collapsed rows included."""
    found = []
    for panel in dashboard["panels"]:
        found.append(panel)
        found.extend(panel.get("panels", []))
    return found


def queries(dashboard: dict) -> list[tuple[dict, str]]:
    """(panel, PromQL) of every target, and the template variables' label_values() selectors."""
    found = [(p, t["expr"]) for p in panels(dashboard) for t in p.get("targets", [])]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            query = query["query"] if isinstance(query, dict) else query
            selector = re.fullmatch(r"label_values\((.*),\s*\w+\)", query)
            assert selector, f"variable {variable['name']}: {query!r}"
            found.append((variable, selector[1]))
    return found


def substituted(expr: str) -> str:
    return re.sub(r"\$\w+", lambda m: VARIABLES.get(m[0], m[0]), expr)


# ------------------------------------------------------------------------------------ tests


@pytest.mark.parametrize(
    ("expr", "names"),
    [
        ('sum by (grade) (increase(a_total{job="x", i=~"$i"}[$__interval]))', {"a_total"}),
        ("histogram_quantile(0.9, sum by (le) (rate(b_bucket[30m])))", {"b_bucket"}),
        ("time() - max(c_seconds > 0)", {"c_seconds"}),
        ('ALERTS{alertname=~"S.*"} or vector(0)', {"ALERTS"}),
        ("sum(rate(d_total[5m])) * 60 + e", {"d_total", "e"}),
        ("f and on () (hour() >= 6)", {"f"}),
        ("rate(g_total[5m] offset 1h) / ignoring(x) h", {"g_total", "h"}),
    ],
)
def test_metric_names_in(expr, names):
    assert metric_names_in(expr) == names


def test_dashboard_is_well_formed():
    dashboard = load()
    assert dashboard["uid"] and dashboard["title"] and dashboard["schemaVersion"] >= 30
    ids = [p["id"] for p in panels(dashboard)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    cells = set()
    for p in panels(dashboard):
        g = p["gridPos"]
        assert g["x"] >= 0 and g["w"] > 0 and g["x"] + g["w"] <= GRID_COLUMNS, p["title"]
        columns, lines = range(g["x"], g["x"] + g["w"]), range(g["y"], g["y"] + g["h"])
        mine = {(x, y) for x in columns for y in lines}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        assert p["title"] and p.get("description"), p["id"]
        assert p["targets"], f"panel {p['title']!r} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]


def test_every_query_uses_the_datasource_variable():
    dashboard = load()
    (ds,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert ds["query"] == "prometheus"
    uid = "${" + ds["name"] + "}"
    for p in panels(dashboard):
        assert p["datasource"] == {"type": "prometheus", "uid": uid}, p["title"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"], p["title"]


def test_every_metric_in_the_dashboard_is_exported_by_the_daemon():
    exported = Metrics().metric_names()
    used = set()
    for where, expr in queries(load()):
        name = where.get("title", where.get("name"))
        names = metric_names_in(expr)
        assert names, f"{name!r}: no metric in {expr!r}"
        unknown = names - exported - PROMETHEUS_SERIES
        assert not unknown, f"{name!r} queries {unknown}: not exported by ops/metrics.py"
        used |= names
    assert used >= REQUIRED


def test_every_skygrade_selector_filters_on_the_job_and_the_instance_variable():
    """The scrape example's job name and the dashboard's instance picker apply to every query."""
    job = yaml.safe_load((DASHBOARD.parents[1] / "prometheus" / "prometheus.yml").read_text())
    (scrape,) = job["scrape_configs"]
    for where, expr in queries(load()):
        if where.get("type") == "query":  # the instance variable lists every instance
            continue
        selectors = re.findall(r"\b(skygrade_\w+|up)(\{[^}]*\})?", expr)
        for name, matchers in selectors:
            assert f'job="{scrape["job_name"]}"' in matchers, f"{name} in {expr!r}"
            assert 'instance=~"$instance"' in matchers, f"{name} in {expr!r}"


def test_every_metric_family_is_charted():
    used = set().union(*(metric_names_in(e) for _, e in queries(load())))
    families = {family.name for family in Metrics().registry.collect()}
    uncharted = {f for f in families if not any(n.startswith(f) for n in used)}
    assert not uncharted, f"metrics with no panel: {uncharted}"


def test_every_query_is_valid_promql(tmp_path):
    """promtool parses each query (Grafana variables replaced) as a recording rule."""
    rules = [
        {"record": f"dashboard:query_{i}", "expr": substituted(expr)}
        for i, (_, expr) in enumerate(queries(load()))
    ]
    path = tmp_path / "dashboard.rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = subprocess.run(
        [PROMTOOL, "check", "rules", str(path)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(rules)} rules found" in result.stdout
    assert not re.search(r"\$\w", path.read_text()), "a Grafana variable was left in a query"
