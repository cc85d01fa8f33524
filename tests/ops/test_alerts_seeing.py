"""The seeing alert: a threshold in arcsec on the measured seeing (issue 22 item 5)."""

import math

import pytest

from skygrade.ops.alerts import RULES, AlertEngine
from skygrade.ops.config import parse_config
from skygrade.ops.config_daemon import AlertsConfig
from skygrade.ops.config_values import ConfigError


def row(eid, seeing=None, status="graded", **extra):
    base = {
        "exposure_id": eid,
        "grade": "GOOD",
        "status": status,
        "confidence": 0.95,
        "median_elongation": 1.1,
        "median_iso0": 20.0,
        "reason": None,
        "seeing_arcsec": seeing,
        "seeing_zenith_arcsec": None if seeing is None else seeing * 1.3**-0.6,
        "n_psf_stars": 40,
    }
    return base | extra


def test_seeing_warns_at_the_threshold_and_clears_below():
    assert "seeing" in RULES
    engine = AlertEngine(AlertsConfig())  # default threshold 1.2"
    assert AlertsConfig().seeing_warn_arcsec == 1.2
    assert engine.observe(row(1, 0.8)) == []
    (alert,) = engine.observe(row(2, 1.25))
    assert (alert.rule, alert.level, alert.resolved) == ("seeing", "WARN", False)
    assert alert.message.startswith('seeing 1.25" (1.07" at zenith, 40 stars) >= 1.2" (2)')
    assert engine.observe(row(3, 1.6)) == []  # still active: no new alert
    assert "1.60" in engine.active()[0].message
    (cleared,) = engine.observe(row(4, 0.9))
    assert cleared.resolved and cleared.rule == "seeing"


def test_unmeasured_seeing_and_quarantined_rows_leave_the_rule_alone():
    engine = AlertEngine(AlertsConfig(seeing_warn_arcsec=1.0))
    engine.observe(row(1, 1.5))
    assert [a.rule for a in engine.active()] == ["seeing"]
    assert engine.observe(row(2, None)) == []
    assert engine.observe(row(3, math.nan)) == []
    assert engine.observe(row(4, 0.5, status="quarantined")) == []
    assert [a.rule for a in engine.active()] == ["seeing"]


def test_the_rule_can_be_turned_off_and_is_validated():
    engine = AlertEngine(AlertsConfig(seeing_warn_arcsec=None))
    assert engine.observe(row(1, 3.0)) == []
    cfg = parse_config({"alerts": {"seeing_warn_arcsec": 0.9}})
    assert cfg.alerts.seeing_warn_arcsec == 0.9
    with pytest.raises(ConfigError, match="seeing_warn_arcsec"):
        parse_config({"alerts": {"seeing_warn_arcsec": 0}})
