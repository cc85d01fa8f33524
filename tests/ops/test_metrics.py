"""Tests for skygrade.ops.metrics: metrics on a private registry, bounded labels, exported names."""

import math

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from skygrade.ops.metrics import LATENCY_BUCKETS_S, Metrics, label_slug, reason_slug


def value(metrics: Metrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_default_registry_is_private_and_never_the_global_one():
    a, b = Metrics(), Metrics()  # two sets of the same names: no "Duplicated timeseries"
    assert a.registry is not b.registry
    assert a.registry is not prometheus_client.REGISTRY
    assert prometheus_client.REGISTRY.get_sample_value("skygrade_ccds_graded_total") is None


def test_injected_registry_is_used():
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    assert metrics.registry is registry
    metrics.backlog.set(4)
    assert registry.get_sample_value("skygrade_backlog_exposures") == 4


def test_observe_graded_exposure():
    m = Metrics()
    m.observe_exposure(
        "BT",
        "graded",
        None,
        latency_s=11.0,
        confidence=0.83,
        n_ccd_graded=36,
        n_sources=5400,
        stage_seconds={"extract": 3.2, "score": 0.4},
    )
    m.observe_exposure("GOOD", "graded", None, 4.0, 0.97, 36, 6000, {"extract": 2.0})
    assert value(m, "skygrade_exposures_graded_total", grade="BT") == 1
    assert value(m, "skygrade_exposures_graded_total", grade="GOOD") == 1
    assert value(m, "skygrade_ccds_graded_total") == 72
    assert value(m, "skygrade_sources_extracted_total") == 11400
    assert value(m, "skygrade_grading_latency_seconds_count") == 2
    assert value(m, "skygrade_grading_latency_seconds_sum") == 15.0
    assert value(m, "skygrade_grading_latency_seconds_bucket", le="5.0") == 1
    assert value(m, "skygrade_grading_latency_seconds_bucket", le="12.5") == 2
    assert value(m, "skygrade_exposure_confidence_bucket", le="0.9") == 1
    assert value(m, "skygrade_exposure_confidence_count") == 2
    assert value(m, "skygrade_stage_duration_seconds_count", stage="extract") == 2
    assert value(m, "skygrade_stage_duration_seconds_sum", stage="extract") == pytest.approx(5.2)
    assert value(m, "skygrade_stage_duration_seconds_count", stage="score") == 1
    assert value(m, "skygrade_last_graded_timestamp_seconds") > 1.6e9
    assert value(m, "skygrade_exposures_quarantined_total", reason="other") is None


def test_latency_histogram_has_a_bucket_at_each_target():
    m = Metrics()
    m.observe_exposure("GOOD", "graded", None, 1.0, 0.9, 1, 1, {})
    for bound in LATENCY_BUCKETS_S:
        assert value(m, "skygrade_grading_latency_seconds_bucket", le=str(float(bound))) == 1
    assert {1, 2.5, 5, 10, 12.5, 15, 20, 30, 60, 120, 300, 600} == set(LATENCY_BUCKETS_S)


def test_observe_quarantined_exposure_counts_reason_slug_only():
    m = Metrics()
    m.observe_exposure(
        None, "quarantined", "truncated: expected 37 HDUs, found 12", 2.0, None, 0, 0, {}
    )
    m.observe_exposure(None, "quarantined", "truncated: 3 of 37 HDUs", None, None, 0, 0, {})
    m.observe_exposure(None, "quarantined", "/data/2817011o.fits: bad", None, 0.7, 0, 0, {})
    assert value(m, "skygrade_exposures_quarantined_total", reason="truncated") == 2
    assert value(m, "skygrade_exposures_quarantined_total", reason="other") == 1
    assert value(m, "skygrade_exposure_confidence_count") == 0  # never for quarantined rows
    assert value(m, "skygrade_grading_latency_seconds_count") == 0  # nor latency
    assert value(m, "skygrade_last_graded_timestamp_seconds") == 0
    assert value(m, "skygrade_ccds_graded_total") == 0


def test_unknown_grade_and_stage_are_bounded_and_nan_is_skipped():
    m = Metrics()
    m.observe_exposure(
        "2817011", "graded", None, math.nan, math.nan, 1, 1, {"Stage 1!": 1.0, "grade": math.inf}
    )
    assert value(m, "skygrade_exposures_graded_total", grade="other") == 1
    assert value(m, "skygrade_stage_duration_seconds_count", stage="other") == 1
    assert value(m, "skygrade_stage_duration_seconds_count", stage="grade") is None
    assert value(m, "skygrade_grading_latency_seconds_count") == 0
    assert value(m, "skygrade_exposure_confidence_count") == 0


def test_unknown_status_is_refused():
    with pytest.raises(ValueError, match="status must be one of .* got 'done'"):
        Metrics().observe_exposure("GOOD", "done", None, None, None, 0, 0, {})


@pytest.mark.parametrize(
    ("reason", "slug"),
    [
        ("truncated: expected 37 HDUs", "truncated"),
        ("bad_shape:NAXIS2=10", "bad_shape"),
        ("  unreadable : permission denied", "unreadable"),
        ("checksum", "checksum"),
        ("Truncated: x", "other"),  # uppercase
        ("bad-shape: x", "other"),  # hyphen
        ("a" * 41 + ": x", "other"),  # too long
        ("", "other"),
        (None, "other"),
        ("file 2817011o.fits is broken", "other"),  # exposure ids never become labels
    ],
)
def test_reason_slug(reason, slug):
    assert reason_slug(reason) == slug


def test_label_slug():
    assert label_slug("som_hits") == "som_hits"
    assert label_slug("x" * 40) == "x" * 40
    assert label_slug("x" * 41) == "other"
    assert label_slug(3) == "other"


def test_ccd_quarantine_and_model_info():
    m = Metrics()
    m.observe_ccd_quarantined("bad_shape: NAXIS2 is 10", n=2)
    m.observe_ccd_quarantined(None)
    m.set_model("2024.03.1", created="2024-03-01")
    assert value(m, "skygrade_ccds_quarantined_total", reason="bad_shape") == 2
    assert value(m, "skygrade_ccds_quarantined_total", reason="other") == 1
    assert value(m, "skygrade_model_info", version="2024.03.1", created="2024-03-01") == 1


def _every_metric_observed() -> Metrics:
    m = Metrics()
    m.observe_exposure("GOOD", "graded", None, 3.0, 0.9, 1, 1, {"extract": 1.0})
    m.observe_exposure(None, "quarantined", "truncated: x", 3.0, None, 0, 0, {})
    m.observe_ccd_quarantined("truncated: x")
    m.alerts.labels("WARN").inc()
    m.alerts_dropped.inc()
    m.webhook_failures.inc()
    m.set_model("v1")
    return m


def _exported(m: Metrics) -> set[str]:
    """The sample names ``m``'s registry exports now (``_created`` left out)."""
    text = generate_latest(m.registry).decode()
    return {
        sample.name
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def test_metric_names_are_what_is_exported():
    m = _every_metric_observed()
    names = m.metric_names()
    assert names == _exported(m)
    assert all(name.startswith("skygrade_") for name in names)
    assert {
        "skygrade_exposures_graded_total",
        "skygrade_exposures_quarantined_total",
        "skygrade_ccds_graded_total",
        "skygrade_ccds_quarantined_total",
        "skygrade_sources_extracted_total",
        "skygrade_stage_duration_seconds_bucket",
        "skygrade_grading_latency_seconds_bucket",
        "skygrade_grading_latency_seconds_sum",
        "skygrade_grading_latency_seconds_count",
        "skygrade_exposure_confidence_bucket",
        "skygrade_backlog_exposures",
        "skygrade_last_graded_timestamp_seconds",
        "skygrade_alerts_total",
        "skygrade_alert_webhook_failures_total",
        "skygrade_model_info",
    } <= names


def test_metric_names_do_not_need_observations():
    fresh = Metrics()
    # labelled metrics export no sample before their first observation; their names are known
    assert _exported(fresh) < _exported(_every_metric_observed())
    assert fresh.metric_names() == _exported(_every_metric_observed())
    assert "skygrade_exposures_quarantined_total" in Metrics().metric_names()
