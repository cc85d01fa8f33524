"""The seeing and sky-brightness histograms (issue 22 item 5)."""

import math

from skygrade.ops.metrics import SEEING_BUCKETS_ARCSEC, SKY_BRIGHTNESS_BUCKETS, Metrics


def _bucket(m, name, le):
    return m.registry.get_sample_value(f"{name}_bucket", {"le": le})


def test_graded_exposures_fill_the_seeing_and_sky_histograms():
    m = Metrics()
    args = ("GOOD", "graded", None, 5.0, 0.9, 36, 1000, {})
    m.observe_exposure(*args, seeing_arcsec=0.65, sky_mag_arcsec2=21.3)
    m.observe_exposure(*args, seeing_arcsec=1.35, sky_mag_arcsec2=18.4)
    m.observe_exposure(*args, seeing_arcsec=math.nan, sky_mag_arcsec2=None)  # not measured
    m.observe_exposure("GOOD", "quarantined", "x: y", None, None, 0, 0, {}, seeing_arcsec=0.5)
    assert m.registry.get_sample_value("skygrade_seeing_arcsec_count") == 2
    assert _bucket(m, "skygrade_seeing_arcsec", "0.7") == 1
    assert _bucket(m, "skygrade_seeing_arcsec", "1.2") == 1
    assert _bucket(m, "skygrade_seeing_arcsec", "1.5") == 2
    assert m.registry.get_sample_value("skygrade_sky_brightness_mag_arcsec2_count") == 2
    assert _bucket(m, "skygrade_sky_brightness_mag_arcsec2", "19.0") == 1
    assert _bucket(m, "skygrade_sky_brightness_mag_arcsec2", "21.5") == 2


def test_buckets_sit_at_the_site_thresholds():
    assert {0.5, 0.7, 1.0, 1.2, 1.5, 2.0} <= set(SEEING_BUCKETS_ARCSEC)
    assert list(SEEING_BUCKETS_ARCSEC) == sorted(SEEING_BUCKETS_ARCSEC)
    assert {19.0, 20.5, 21.0, 22.0} <= set(SKY_BRIGHTNESS_BUCKETS)
    assert list(SKY_BRIGHTNESS_BUCKETS) == sorted(SKY_BRIGHTNESS_BUCKETS)
