"""The per-CCD chain (transforms/ccd_chain.py) on a small simulated exposure, and the two ways
of running it (transforms/stages.py MeasureExposures: a Beam stage per CCD, or the CCD pool)
giving what the function gives, number for number."""

from __future__ import annotations

import numpy as np
import pytest
from apache_beam import Create, Map
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from skygrade.models.som import feature_matrix, train_som
from skygrade.ops.config import ExtractConfig
from skygrade.transforms.ccd_chain import ExposureInputs, exposure_inputs, measure_ccd
from skygrade.transforms.extract import CcdFeatures, make_backend
from skygrade.transforms.quarantine import Quarantined
from skygrade.transforms.representative import CcdInputs
from skygrade.transforms.som_hits import load_som
from skygrade.transforms.stages import MeasureExposures

TILE = 8
EXTRACT = ExtractConfig()


@pytest.fixture
def exposure(tmp_path, synth):
    """Two CCDs of stars and galaxies and a dead one (every pixel 1000)."""
    rng = np.random.default_rng(11)
    shape = (320, 288)
    ccds = [synth.sky_image(rng, shape, n_stars=25, n_galaxies=10)[0] for _ in range(2)]
    ccds.append(np.full(shape, 1000.0, np.float32))
    return synth.write_mef(tmp_path / "2817001o.fits", ccds)


@pytest.fixture
def backend():
    return make_backend("sep", EXTRACT)


@pytest.fixture
def meta(backend, exposure):
    return backend.open(exposure)


@pytest.fixture
def som_path(backend, meta, tmp_path):
    """A small SOM fitted on the sources of CCD 0, saved as a bundle's SOM is."""
    features = measure_ccd(backend, meta, 0, EXTRACT)
    rows, _ = feature_matrix(features.sources, features.width, features.height)
    som = train_som(rows, grid=(3, 3), iterations=500, n_clusters=4, seed=0)
    return som.save(tmp_path / "som.npz")


def signature(x) -> tuple:
    """What a CCD's result holds, bit for bit, timings aside (floats by repr: NaN equals
    NaN)."""
    if isinstance(x, Quarantined):
        return ("quarantined", *x)
    if isinstance(x, CcdFeatures):
        columns = tuple((k, np.asarray(v).tobytes()) for k, v in sorted(x.sources.items()))
        return ("features", x.exposure_id, x.ccd, x.n_sources, columns, repr(x.physics))
    assert isinstance(x, CcdInputs)
    return (
        "inputs",
        x.exposure_id,
        x.ccd,
        x.n_ccd,
        repr(x.exptime),
        x.hits.tobytes(),
        x.image.tobytes(),
        x.n_sources,
        x.n_clean,
        *(repr(v) for v in (x.median_elongation, x.median_iso0, x.median_background)),
        repr(x.blended_fraction),
        None if x.summary is None else x.summary.tobytes(),
        x.reason,
        x.missing,
        repr(x.physics),
    )


def exposure_signature(e: ExposureInputs) -> tuple:
    return (e.meta.exposure_id, tuple(map(signature, e.ccds)), tuple(map(signature, e.bad)))


def test_the_chain_gives_features_then_hits_and_a_representative_image(backend, meta, som_path):
    som = load_som(som_path)
    features = measure_ccd(backend, meta, 1, EXTRACT)
    assert isinstance(features, CcdFeatures) and features.pixels is None  # a feature cache
    assert 15 <= features.n_sources <= 60 and features.extract_s > 0
    inputs = measure_ccd(backend, meta, 1, EXTRACT, som, TILE)
    assert isinstance(inputs, CcdInputs) and inputs.reason is None
    assert inputs.n_sources == features.n_sources
    assert inputs.hits.shape == (som.n_clusters,) and inputs.hits.sum() == inputs.n_clean > 0
    assert inputs.image.shape[0] % TILE == 0 and inputs.image.shape[1] % TILE == 0
    assert inputs.physics is not None  # measured on the pixels, which are gone now
    assert set(inputs.stage_s) >= {"extract", "som", "representative"}


def test_the_chain_is_a_function_of_its_inputs(backend, meta, som_path):
    som = load_som(som_path)
    first = [measure_ccd(backend, meta, ccd, EXTRACT, som, TILE) for ccd in range(3)]
    again = [measure_ccd(backend, meta, ccd, EXTRACT, som, TILE) for ccd in range(3)]
    assert list(map(signature, first)) == list(map(signature, again))


def test_a_refused_or_failing_ccd_comes_back_as_a_quarantine_record(backend, meta, som_path):
    dead = measure_ccd(backend, meta, 2, EXTRACT, load_som(som_path), TILE)
    assert isinstance(dead, Quarantined)
    assert (dead.exposure_id, dead.ccd, dead.stage, dead.reason) == (
        "2817001",
        2,
        "extract",
        "constant",
    )

    class Broken:
        def features(self, meta, ccd, keep_pixels=False):
            raise RuntimeError("sep fell over")

    failed = measure_ccd(Broken(), meta, 0, EXTRACT)
    assert isinstance(failed, Quarantined) and failed.reason == "extract_failed"
    assert "CCD 0: RuntimeError: sep fell over" in failed.detail


def test_exposure_inputs_sorts_results_by_ccd(backend, meta):
    results = [measure_ccd(backend, meta, ccd, EXTRACT) for ccd in (2, 1, 0)]
    gathered = exposure_inputs(meta, results)
    assert [c.ccd for c in gathered.ccds] == [0, 1] and [b.ccd for b in gathered.bad] == [2]


def _expected(backend, meta, som_path) -> tuple:
    som = load_som(som_path)
    return exposure_signature(
        exposure_inputs(meta, [measure_ccd(backend, meta, c, EXTRACT, som, TILE) for c in range(3)])
    )


def test_the_beam_stages_give_what_the_function_gives(backend, meta, som_path):
    expected = _expected(backend, meta, som_path)
    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        measured = (
            p | Create([meta]) | MeasureExposures(EXTRACT, None, som_path=som_path, tile=TILE)
        )
        assert_that(measured | Map(exposure_signature), equal_to([expected]))


def test_the_ccd_pool_gives_what_the_beam_stages_give(backend, meta, som_path):
    from skygrade.streamer.ccd_pool import CcdPool, shutdown_pool

    expected = _expected(backend, meta, som_path)
    try:
        with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
            measured = (
                p
                | Create([meta])
                | MeasureExposures(EXTRACT, CcdPool(2), som_path=som_path, tile=TILE)
            )
            assert_that(measured | Map(exposure_signature), equal_to([expected]))
    finally:
        shutdown_pool()


def test_without_a_som_both_ways_give_the_feature_records(backend, meta):
    from skygrade.streamer.ccd_pool import pooled, shutdown_pool

    expected = exposure_signature(
        exposure_inputs(meta, [measure_ccd(backend, meta, c, EXTRACT) for c in range(3)])
    )
    try:
        for workers in (0, 1):
            with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
                measured = p | Create([meta]) | MeasureExposures(EXTRACT, pooled(workers))
                assert_that(measured | Map(exposure_signature), equal_to([expected]))
    finally:
        shutdown_pool()


def test_measure_exposures_refuses_bad_settings():
    from skygrade.streamer.ccd_pool import CcdPool, pooled

    with pytest.raises(ValueError, match="ccd_workers"):
        pooled(-1)
    with pytest.raises(ValueError, match="workers"):
        CcdPool(0)
    with pytest.raises(ValueError, match="cutout size"):
        MeasureExposures(EXTRACT, tile=2)
