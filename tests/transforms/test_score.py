from dataclasses import replace

import apache_beam as beam
import numpy as np
import pytest
import torch
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that

from skygrade.models.bundle import ModelBundle
from skygrade.models.cnn import CnnShape, DualInputNet
from skygrade.models.som import SOM_FEATURES, train_som
from skygrade.models.summary import SUMMARY_FEATURES
from skygrade.transforms.ccd_chain import ExposureInputs
from skygrade.transforms.representative import CcdInputs
from skygrade.transforms.score import ScoreExposures, load_bundle_cached, score_batch, to_score


@pytest.fixture(scope="module")
def bundle_dir(tmp_path_factory):
    rows = np.random.default_rng(0).normal(size=(2000, len(SOM_FEATURES))).astype(np.float32)
    som = train_som(rows, grid=(5, 5), iterations=500, n_clusters=20, seed=0)
    torch.manual_seed(0)
    bundle = ModelBundle(som, DualInputNet(CnnShape(tile=8)), {"version": "t1"})
    return bundle.save(tmp_path_factory.mktemp("b") / "bundle")


def inputs(ccd, reason=None, has_image=True):
    rng = np.random.default_rng(ccd)
    return CcdInputs(
        "7",
        ccd,
        3,
        60.0,
        rng.integers(0, 9, 20).astype(np.int32),
        rng.random((32, 40), dtype=np.float32),
        n_sources=50,
        n_clean=40,
        blended_fraction=0.3,
        area_mpx=0.0128,
        has_image=has_image,
        reason=reason,
    )


def test_bundle_loads_once_per_process(bundle_dir):
    assert load_bundle_cached(bundle_dir) is load_bundle_cached(bundle_dir)


def test_score_an_exposure_through_run_inference(bundle_dir):
    """One exposure's CCDs scored as one batch, in the order given; the CCD without a clean
    source is not sent to the network."""
    items = [inputs(0), inputs(1, has_image=False), inputs(2, reason="no_clean_sources: x")]
    expected, ood = score_batch(load_bundle_cached(bundle_dir), items[:2])

    def check(scored):
        ((exposure, scores),) = scored
        assert [s.ccd for s in scores] == [0, 1, 2] == [c.ccd for c in exposure.ccds]
        np.testing.assert_allclose(scores[0].probs, expected[0], rtol=1e-5)
        np.testing.assert_allclose(scores[1].probs, expected[1], rtol=1e-5)
        assert scores[2].probs is None and scores[2].reason.startswith("no_clean_sources")
        np.testing.assert_allclose([scores[0].ood, scores[1].ood], ood, rtol=1e-5)

    with test_pipeline.TestPipeline(runner="FnApiRunner") as p:
        exposure = ExposureInputs("meta of exposure 7", items, [])
        scored = p | beam.Create([exposure]) | ScoreExposures(bundle_dir)
        assert_that(scored, check)


def test_a_scored_ccd_carries_its_twin_fraction_for_the_reason():
    summary = np.zeros(len(SUMMARY_FEATURES))
    summary[SUMMARY_FEATURES.index("twin_fraction")] = 0.3
    assert to_score(replace(inputs(0), summary=summary), None).twin_fraction == 0.3
    assert np.isnan(to_score(inputs(1), None).twin_fraction)
