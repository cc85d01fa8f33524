"""CNN scoring of CCDs through Beam's RunInference, one exposure's CCDs as one batch.

:class:`BundleModelHandler` loads the model bundle through a process-level cache
(:func:`load_bundle_cached`): RunInference calls ``load_model`` once per DoFn instance, and
every pipeline run sets up DoFn instances of its own, so without the cache a long-lived daemon
(one pipeline run per exposure) would load the bundle per exposure. With it a worker process
loads the bundle once, and again only if the bundle's manifest changes on disk.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import apache_beam as beam
import numpy as np
import torch
from apache_beam.ml.inference.base import ModelHandler, PredictionResult, RunInference

from skygrade.models.bundle import MANIFEST, ModelBundle, load_bundle
from skygrade.models.cnn import hit_vector, predict_proba
from skygrade.models.ood import ood_scores, temper
from skygrade.models.summary import SUMMARY_FEATURES, stack_summaries
from skygrade.transforms.grade import CcdScore
from skygrade.transforms.representative import CcdInputs

log = logging.getLogger(__name__)

_BUNDLES: dict[tuple[str, int], ModelBundle] = {}
_LOCK = threading.Lock()


def load_bundle_cached(path: str | os.PathLike) -> ModelBundle:
    """The bundle at ``path``, loaded once per process (reloaded if its manifest changes)."""
    path = Path(path).resolve()
    key = (str(path), (path / MANIFEST).stat().st_mtime_ns)
    with _LOCK:
        bundle = _BUNDLES.get(key)
        if bundle is None:
            bundle = load_bundle(path)
            _BUNDLES.clear()
            _BUNDLES[key] = bundle
            log.info("loaded model bundle %s (version %s)", path, bundle.version)
    return bundle


def score_batch(bundle: ModelBundle, batch: Sequence[CcdInputs]) -> tuple[np.ndarray, np.ndarray]:
    """Class probabilities (len(batch), n_classes) of CCD inputs, tempered by their
    out-of-distribution scores (:mod:`skygrade.models.ood`), and those scores (NaN without a
    reference in the bundle). The network reads the inputs its bundle names
    (:meth:`~skygrade.models.bundle.ModelBundle.select_inputs`)."""
    image = np.stack([x.image for x in batch])
    vector = hit_vector(
        np.stack([x.hits for x in batch]),
        np.array([x.n_sources for x in batch]),
        np.array([x.exptime for x in batch]),
        np.array([x.area_mpx for x in batch]),
        stack_summaries([x.summary for x in batch]),
    )
    vector = bundle.select_inputs(vector)
    present = np.array([1.0 if x.has_image else 0.0 for x in batch], dtype=np.float32)
    ood = ood_scores(vector, bundle.ood)
    return temper(predict_proba(bundle.cnn, image, vector, present), ood), ood


def to_score(
    inputs: CcdInputs, probs: np.ndarray | None, score_s: float = 0.0, ood: float = float("nan")
) -> CcdScore:
    """A :class:`CcdScore` row from a CCD's inputs and its probabilities."""
    return CcdScore(
        exposure_id=inputs.exposure_id,
        ccd=inputs.ccd,
        probs=probs,
        n_sources=inputs.n_sources,
        median_elongation=inputs.median_elongation,
        median_iso0=inputs.median_iso0,
        median_background=inputs.median_background,
        reason=inputs.reason,
        n_ccd=inputs.n_ccd,
        stage_s={**inputs.stage_s, "score": score_s},
        hits=inputs.hits,
        image=inputs.image if inputs.has_image and inputs.reason is None else None,
        missing=inputs.missing,
        ood=float(ood),
        physics=inputs.physics,
        twin_fraction=_twin(inputs.summary),
    )


def _twin(summary: np.ndarray | None) -> float:
    """The ``twin_fraction`` of a CCD's summary statistics (NaN without them)."""
    if summary is None:
        return float("nan")
    return float(np.asarray(summary, dtype=np.float64)[SUMMARY_FEATURES.index("twin_fraction")])


def score_ccds(bundle: ModelBundle, inputs: Sequence[CcdInputs]) -> list[CcdScore]:
    """Scores of one exposure's CCDs: the scorable ones in one batch, the others (no clean
    source) with ``probs=None`` and their reason, in the order given."""
    scorable = [x for x in inputs if x.reason is None]
    start = time.perf_counter()
    probs, ood = score_batch(bundle, scorable) if scorable else ((), ())
    share = (time.perf_counter() - start) / max(len(scorable), 1)
    scored = iter(zip(probs, ood, strict=True))
    out = []
    for x in inputs:
        if x.reason is None:
            p, o = next(scored)
            out.append(to_score(x, p, share, o))
        else:
            out.append(to_score(x, None))
    return out


class BundleModelHandler(ModelHandler[Any, PredictionResult, ModelBundle]):
    """RunInference handler for skygrade bundles whose elements are whole exposures
    (:class:`~skygrade.transforms.ccd_chain.ExposureInputs`): each exposure's CCDs are scored in one
    batch (:func:`score_ccds`), and the inference is the list of their :class:`CcdScore`.

    Parameters
    ----------
    bundle_path : path-like
        The model bundle directory.
    torch_threads : int or None
        ``torch.set_num_threads`` in the worker; 1 avoids oversubscribing cores that other
        worker processes already use.
    """

    def __init__(self, bundle_path: str | os.PathLike, torch_threads: int | None = 1) -> None:
        super().__init__(max_batch_size=1)
        self.bundle_path = os.fspath(bundle_path)
        self.torch_threads = torch_threads

    def load_model(self) -> ModelBundle:
        if self.torch_threads:
            torch.set_num_threads(self.torch_threads)
        return load_bundle_cached(self.bundle_path)

    def run_inference(
        self,
        batch: Sequence[Any],
        model: ModelBundle,
        inference_args: dict[str, Any] | None = None,
    ) -> Iterable[PredictionResult]:
        return [PredictionResult(e, score_ccds(model, e.ccds), model.version) for e in batch]

    def batch_elements_kwargs(self) -> dict[str, Any]:
        return {"min_batch_size": 1, "max_batch_size": 1}

    def get_metrics_namespace(self) -> str:
        return "skygrade_score"


class ScoreExposures(beam.PTransform):
    """:class:`~skygrade.transforms.ccd_chain.ExposureInputs` -> ``(ExposureInputs,
    [CcdScore])``."""

    def __init__(self, bundle_path: str | os.PathLike, torch_threads: int | None = 1) -> None:
        super().__init__()
        self.handler = BundleModelHandler(bundle_path, torch_threads=torch_threads)

    def expand(self, exposures):
        return (
            exposures
            | "RunInference" >> RunInference(self.handler)
            | "Scores" >> beam.Map(lambda r: (r.example, r.inference))
        )
