import json
from pathlib import Path

import apache_beam as beam
import numpy as np
import pyarrow.parquet as pq
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from skygrade.ops.config import ExtractConfig
from skygrade.transforms.extract import (
    FEATURE_COLUMNS,
    FLAG_BLENDED,
    FLAG_SATURATED,
    CcdFeatures,
    SepBackend,
    empty_sources,
    features_from_arrow,
    features_to_arrow,
    make_backend,
    sep_features,
)
from skygrade.transforms.quarantine import QUARANTINE
from skygrade.transforms.stages import ExtractSources


def match(x, y, tx, ty, radius=1.0):
    """Index of the nearest detection within ``radius`` of each truth position (-1 if none)."""
    d2 = (x[None, :] - tx[:, None]) ** 2 + (y[None, :] - ty[:, None]) ** 2
    best = d2.argmin(1)
    return np.where(d2[np.arange(len(tx)), best] <= radius**2, best, -1)


def auc(score_pos, score_neg):
    """Probability that a random positive outranks a random negative."""
    pos, neg = np.asarray(score_pos)[:, None], np.asarray(score_neg)[None, :]
    return float((pos > neg).mean() + 0.5 * (pos == neg).mean())


def test_sep_features_finds_sources_with_sextractor_semantics(synth):
    rng = np.random.default_rng(0)
    img, truth = synth.sky_image(rng, n_galaxies=0)
    t = sep_features(img.copy(), saturate=65535)
    assert set(t) == set(FEATURE_COLUMNS)
    # 1-based positions: detections sit on the (0-based) truth + 1
    found = match(t["X_IMAGE"] - 1, t["Y_IMAGE"] - 1, truth["x"], truth["y"])
    assert np.mean(found >= 0) > 0.95
    np.testing.assert_allclose(t["ELLIPTICITY"], 1 - 1 / t["ELONGATION"], atol=1e-5)
    assert np.all(t["ELONGATION"] >= 1)
    assert np.median(t["BACKGROUND"]) == pytest.approx(800, rel=0.02)
    assert t["ISO0"].dtype == np.int32 and t["FLAGS"].dtype == np.int32
    assert np.median(t["ELONGATION"][found[found >= 0]]) < 1.15  # round stars


def test_saturated_and_blended_flags(synth):
    rng = np.random.default_rng(1)
    img = rng.normal(500, 10, (200, 200)).astype(np.float32)
    img[90:111, 40:61] += 2e6 * synth.moffat(21, 3.0)  # saturates
    img = np.minimum(img, 65535)
    img[90:111, 140:161] += 3e4 * synth.moffat(21, 3.0)
    img[90:111, 145:166] += 3e4 * synth.moffat(21, 3.0)  # a close pair: deblended
    t = sep_features(img, saturate=65535)
    sat = match(t["X_IMAGE"] - 1, t["Y_IMAGE"] - 1, np.array([50.0]), np.array([100.0]), 2)[0]
    assert t["FLAGS"][sat] & FLAG_SATURATED
    pair = match(
        t["X_IMAGE"] - 1, t["Y_IMAGE"] - 1, np.array([150.0, 155.0]), np.array([100.0] * 2), 2
    )
    assert np.all(pair >= 0)
    assert np.all(t["FLAGS"][pair] & FLAG_BLENDED)


def test_empty_image_is_a_result_with_a_warning():
    img = np.random.default_rng(0).normal(100, 5, (128, 128)).astype(np.float32)
    with pytest.warns(RuntimeWarning, match="no source"):
        t = sep_features(img)
    assert list(t) == list(FEATURE_COLUMNS)  # every column, each empty
    assert all(len(v) == 0 for v in t.values())


def test_stellarity_separates_stars_from_galaxies(synth):
    rng = np.random.default_rng(2)
    img, truth = synth.sky_image(rng, shape=(1200, 1000), n_stars=150, n_galaxies=150)
    t = sep_features(img, saturate=65535)
    found = match(t["X_IMAGE"] - 1, t["Y_IMAGE"] - 1, truth["x"], truth["y"], 1.5)
    ok = (found >= 0) & (truth["flux"] > 10**4)  # bright: S/N above ~50
    cs = t["CLASS_STAR"][found[ok]]
    star = truth["star"][ok]
    value = auc(cs[star], cs[~star])
    print(
        f"stellarity AUC on bright sources: {value:.3f} "
        f"({star.sum()} stars, {(~star).sum()} galaxies)"
    )
    assert value >= 0.9
    assert cs.min() >= 0 and cs.max() <= 1


def test_unknown_backend_lists_valid_ones():
    with pytest.raises(
        ValueError, match="unknown extraction backend 'sextractorr'; valid backends: "
    ):
        make_backend("sextractorr")
    with pytest.raises(ValueError, match="valid backends"):
        ExtractSources("nope")


def test_arrow_round_trip_keeps_empty_ccds():
    rng = np.random.default_rng(0)
    full = {c: rng.normal(size=7).astype(v.dtype) for c, v in empty_sources().items()}
    ccds = [
        CcdFeatures("42", 1, 3, 60.0, 512, 1152, full),
        CcdFeatures("42", 0, 3, 60.0, 512, 1152, empty_sources()),
    ]
    back = features_from_arrow(features_to_arrow(ccds))
    assert [c.ccd for c in back] == [0, 1]
    assert back[0].n_sources == 0 and back[1].n_sources == 7
    for c in FEATURE_COLUMNS:
        np.testing.assert_array_equal(back[1].sources[c], full[c])
    assert back[1].exptime == 60.0 and back[1].width == 512


@pytest.fixture
def archive(tmp_path, synth):
    rng = np.random.default_rng(5)
    ccd = lambda: synth.sky_image(rng, shape=(300, 256), n_stars=25, n_galaxies=5)[0]  # noqa: E731
    good = synth.write_mef(tmp_path / "2817001o.fits", [ccd(), ccd()], expnum=2817001)
    dead = synth.write_mef(
        tmp_path / "2817002o.fits", [ccd(), np.zeros((300, 256))], expnum=2817002
    )
    whole = synth.write_mef(tmp_path / "2817003o.fits", [ccd()], expnum=2817003)
    truncated = tmp_path / "2817004o.fits"
    truncated.write_bytes(Path(whole).read_bytes()[:5000])
    notfits = tmp_path / "2817005o.fits"
    notfits.write_text("hello, this is not FITS\n" * 200)
    noexptime = synth.write_mef(tmp_path / "2817006o.fits", [ccd()], expnum=2817006, exptime=None)
    return {
        "good": good,
        "dead": dead,
        "truncated": str(truncated),
        "notfits": str(notfits),
        "noexptime": noexptime,
    }


def test_extract_sources_pipeline_quarantines_bad_files_and_ccds(archive):
    paths = list(archive.values())
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create(paths) | ExtractSources("sep")
        got = out["features"] | beam.Map(lambda f: (f.exposure_id, f.ccd, f.n_sources > 5))
        assert_that(
            got,
            equal_to([("2817001", 0, True), ("2817001", 1, True), ("2817002", 0, True)]),
            label="features",
        )
        bad = out[QUARANTINE] | beam.Map(lambda q: (q.exposure_id, q.ccd, q.reason))
        assert_that(
            bad,
            equal_to(
                [
                    ("2817002", 1, "all_zero"),
                    ("2817004", None, "truncated"),
                    ("2817005", None, "not_fits"),
                    ("2817006", None, "missing_exptime"),
                ]
            ),
            label="quarantine",
        )


def test_quarantine_detail_names_file_and_hdu(archive):
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        out = p | beam.Create([archive["truncated"], archive["dead"]]) | ExtractSources()
        details = out[QUARANTINE] | beam.Map(lambda q: q.detail)

        def check(items):
            assert len(items) == 2
            for d in items:
                assert "2817004o.fits" in d or "2817002o.fits: CCD 1" in d, d
            assert any("HDU" in d for d in items)

        assert_that(details, check)


def test_run_extract_writes_one_parquet_per_exposure(archive, tmp_path):
    from skygrade.streamer.pipelines import run_extract

    out = tmp_path / "features"
    summary = run_extract(list(archive.values()), out)
    assert [p.name for p in summary["written"]] == ["2817001.parquet", "2817002.parquet"]
    table = pq.read_table(out / "2817001.parquet")
    assert set(FEATURE_COLUMNS) <= set(table.column_names)
    ccds = features_from_arrow(table)
    assert [c.ccd for c in ccds] == [0, 1] and ccds[0].exptime == 120.0
    reasons = sorted(q.reason for q in summary["quarantined"])
    assert reasons == ["all_zero", "missing_exptime", "not_fits", "truncated"]
    record = json.loads((out / "_quarantine" / "2817002.ccd01.json").read_text())
    assert record["stage"] == "extract" and record["ccd"] == 1


def test_ccd_pool_mode_gives_the_same_features_and_quarantine(archive, tmp_path):
    """run_extract with a CCD process pool writes what the Beam-spread mode writes."""
    from skygrade.streamer.pipelines import run_extract

    spread = run_extract(list(archive.values()), tmp_path / "spread")
    pooled = run_extract(list(archive.values()), tmp_path / "pooled", ccd_workers=2)
    assert [p.name for p in pooled["written"]] == [p.name for p in spread["written"]]
    for a, b in zip(spread["written"], pooled["written"], strict=True):
        ta, tb = pq.read_table(a), pq.read_table(b)
        assert ta.column_names == tb.column_names
        for name in FEATURE_COLUMNS:
            np.testing.assert_array_equal(ta[name].to_numpy(), tb[name].to_numpy(), err_msg=name)
    key = lambda q: (q.exposure_id, q.ccd, q.reason)  # noqa: E731
    assert sorted(map(key, pooled["quarantined"]), key=str) == sorted(
        map(key, spread["quarantined"]), key=str
    )


def test_pooled_extraction_keeps_the_exposures_it_finished_when_a_run_dies(
    archive, tmp_path, monkeypatch
):
    """With the CCD pool each exposure's parquet file is written as soon as the exposure is
    measured (no GroupByKey barrier): a run that dies on its second exposure keeps the first."""
    from skygrade.streamer import pipelines
    from skygrade.streamer.ccd_pool import shutdown_pool

    real = pipelines._WriteMeasuredExposure.process

    def dies_on_the_second(self, measured):
        if measured.meta.exposure_id == "2817002":
            raise RuntimeError("power cut")
        yield from real(self, measured)

    monkeypatch.setattr(pipelines._WriteMeasuredExposure, "process", dies_on_the_second)
    try:
        with pytest.raises(RuntimeError, match="power cut"):
            pipelines.run_extract([archive["good"], archive["dead"]], tmp_path, ccd_workers=2)
    finally:
        shutdown_pool()
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == ["2817001.parquet"]


def test_cache_features_with_local_workers_uses_the_pool_and_shows_progress(
    archive, tmp_path, capsys
):
    from types import SimpleNamespace

    from skygrade.ops.config import Config
    from skygrade.streamer.pipelines import cache_features, pipeline_options

    items = [
        SimpleNamespace(exposure_id=e, path=archive[k])
        for e, k in (("2817001", "good"), ("2817002", "dead"), ("2817004", "truncated"))
    ]
    lines = []
    options = pipeline_options("FnApiRunner", 2)
    todo = cache_features(items, tmp_path, Config(), options, say=lines.append)
    assert len(todo) == 3 and lines == ["features: 0 cached, extracting 3"]
    assert sorted(p.name for p in tmp_path.glob("*.parquet")) == [
        "2817001.parquet",
        "2817002.parquet",
    ]
    assert (tmp_path / "_quarantine" / "2817004.json").exists()
    assert (tmp_path / "_quarantine" / "2817002.ccd01.json").exists()
    assert "features: 3/3 (100.0%)" in capsys.readouterr().err
    # everything is cached or quarantined now: a second call extracts nothing
    assert cache_features(items, tmp_path, Config(), options, say=lines.append) == []


def test_ccd_pool_workers_import_neither_beam_nor_torch(archive):
    """Pool workers run the per-CCD chain only. A spawned worker's imports are its start-up
    time, paid inside the first exposure: Beam costs ~1.3 s and torch ~3 s and ~200 MB."""
    from skygrade.streamer.ccd_pool import ccd_pool, measure_ccd, shutdown_pool
    from skygrade.transforms.exposure import read_meta

    pool = ccd_pool(1)
    try:
        meta = read_meta(archive["good"])
        features = pool.submit(measure_ccd, meta, 0, ExtractConfig(), None, 32).result(timeout=120)
        assert features.n_sources > 5
        loaded = pool.submit(eval, "sorted(__import__('sys').modules)").result()
        assert "skygrade.transforms.representative" in loaded and "sep" in loaded
        assert "apache_beam" not in loaded
        assert "torch" not in loaded
    finally:
        shutdown_pool()


def test_backend_keeps_pixels_only_when_asked(archive):
    from skygrade.transforms.exposure import read_meta

    backend = SepBackend(ExtractConfig())
    meta = read_meta(archive["good"])
    assert backend.features(meta, 0).pixels is None
    kept = backend.features(meta, 0, keep_pixels=True)
    assert kept.pixels.shape == (300, 256)
    assert abs(float(np.median(kept.pixels))) < 5  # background subtracted


@pytest.mark.parametrize("name", ["sep", "sextractor", "catalog"])
def test_every_configured_backend_is_registered(name):
    assert make_backend(name, ExtractConfig()).name == name


def test_detections_without_defined_moments_are_dropped():
    # A simulated BGP CCD on which sep returns zero-flux objects with NaN moments.
    from skygrade.streamer.sky_fits import render_exposure
    from skygrade.streamer.sky_plan import Geometry, plan_night

    plan = plan_night("2024-03-01", 1, seed=2, class_mix={"BGP": 1})[0]
    with render_exposure(plan, Geometry(2, 512, 1152)) as hdul:
        data = np.asarray(hdul[2].data, dtype=np.float32)
    t = sep_features(data, 65535.0)  # no "invalid value" warning (warnings are errors here)
    assert np.isfinite(t["X_IMAGE"]).all() and np.isfinite(t["ELONGATION"]).all()


@pytest.fixture
def restore_sep_buffer():
    import sep

    import skygrade.transforms.extract as extract

    original = extract.PIXSTACK
    yield
    sep.set_extract_pixstack(original)  # the process-wide setting, as configured


def test_a_ccd_that_overflows_seps_pixel_buffer_is_retried_larger(monkeypatch, restore_sep_buffer):
    import skygrade.transforms.extract as extract

    monkeypatch.setattr(extract, "PIXSTACK", 2000)  # a tiny buffer: the blob below overflows it
    monkeypatch.setattr(extract, "_SEP_READY", False)
    img = np.random.default_rng(0).normal(100, 5, (256, 256)).astype(np.float32)
    img[60:200, 60:200] += 400  # ~20k pixels above threshold
    t = sep_features(img)
    assert len(t["X_IMAGE"]) >= 1
    monkeypatch.setattr(extract, "PIXSTACK_MAX", 4000)
    with pytest.raises(Exception, match="pixel buffer full"):
        sep_features(img.copy() + 0)


def test_release_fragments_trims_the_heap_every_few_ccds(monkeypatch):
    """With memory reuse on, the heap is trimmed once every TRIM_EVERY CCDs: often enough
    to bound a long-running worker's RSS, rarely enough to keep the reuse's gain."""
    import skygrade.transforms.ccd_memory as ccd_memory

    trims = []
    monkeypatch.setattr(ccd_memory, "_MALLOC_TRIM", trims.append)
    monkeypatch.setattr(ccd_memory, "_since_trim", 0)
    for _ in range(3 * ccd_memory.TRIM_EVERY + 1):
        ccd_memory.release_fragments()
    assert trims == [0, 0, 0]
    monkeypatch.setattr(ccd_memory, "_MALLOC_TRIM", None)  # not glibc: nothing to trim
    ccd_memory.release_fragments()
    assert trims == [0, 0, 0]
