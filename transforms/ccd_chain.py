"""The per-CCD chain as one function: pixels -> features -> SOM hits -> representative image.

:func:`measure_ccd` is the whole of what happens to one CCD before the CNN, and both ways of
running it call it: the Beam stage (:class:`skygrade.transforms.stages.MeasureExposures` without
``ccd_workers``, one CCD per element after a Reshuffle) and the CCD pool's workers
(:func:`skygrade.streamer.ccd_pool.measure_ccd`, the CCDs of one exposure in processes that outlive
the pipeline). It builds nothing: the extraction backend and the SOM are passed in, made once
per process by the caller (``DoFn.setup``, the pool worker's caches), never here and never at
import. Like the pool, it imports no Beam and no torch (the import rules in pyproject.toml).
"""

from __future__ import annotations

import logging
import time
from dataclasses import replace
from typing import Any, NamedTuple

from skygrade.ops.text import escape_controls
from skygrade.transforms.extract import CcdFeatures, CcdRejected
from skygrade.transforms.psf_measure import with_physics
from skygrade.transforms.quarantine import Quarantined
from skygrade.transforms.representative import CcdInputs, ccd_inputs
from skygrade.transforms.som_hits import ccd_hits

log = logging.getLogger(__name__)


def measure_ccd(
    backend, meta, ccd: int, extract, som=None, tile: int = 32
) -> CcdInputs | CcdFeatures | Quarantined:
    """One CCD of an opened exposure, end to end.

    Parameters
    ----------
    backend
        The extraction backend (:func:`skygrade.transforms.extract.make_backend`), built once per
        process.
    meta : ExposureMeta
        The opened exposure (``backend.open``).
    ccd : int
        The CCD's index (0-based).
    extract : ExtractConfig
        The extraction settings (for the physical measurements).
    som : SourceSom, optional
        The bundle's SOM (:func:`skygrade.transforms.som_hits.load_som`). Without it the chain stops
        at the features, which then carry no pixels (a feature cache).
    tile : int
        Side of each cluster's cutout in the representative image.

    Returns
    -------
    CcdInputs, CcdFeatures or Quarantined
        With ``som``, the CCD's inputs to the CNN (hit counts and representative image, the
        pixels dropped); without, its feature record; a quarantine record (stage
        ``extract``) when the CCD was refused or its extraction failed.
    """
    start = time.perf_counter()
    try:
        features = backend.features(meta, ccd, keep_pixels=som is not None)
    except CcdRejected as exc:
        return Quarantined(meta.exposure_id, meta.path, ccd, "extract", exc.reason, exc.detail)
    except Exception as exc:  # a library failure on one CCD must not stop the night
        log.warning(
            "%s CCD %d: extraction failed: %s",
            escape_controls(meta.path),
            ccd,
            escape_controls(exc),
        )
        return Quarantined(
            meta.exposure_id,
            meta.path,
            ccd,
            "extract",
            "extract_failed",
            f"{meta.path}: CCD {ccd}: {type(exc).__name__}: {exc}",
        )
    features = with_physics(features, meta, extract)
    features = replace(features, extract_s=time.perf_counter() - start)
    if som is None:
        return features
    return ccd_inputs(ccd_hits(features, som), size=tile)


class ExposureInputs(NamedTuple):
    """Everything measured on one exposure's CCDs, travelling as one element.

    Attributes
    ----------
    meta : ExposureMeta
        The exposure's metadata.
    ccds : list of CcdInputs or CcdFeatures
        What :func:`measure_ccd` gave for each CCD it measured, in CCD order.
    bad : list of Quarantined
        The CCDs that could not be measured, with their reasons, in CCD order.
    """

    meta: Any
    ccds: list
    bad: list


def exposure_inputs(meta, results) -> ExposureInputs:
    """An exposure's :class:`ExposureInputs` from the results of its CCDs, in any order."""
    ccds, bad = [], []
    for result in results:
        (bad if isinstance(result, Quarantined) else ccds).append(result)
    return ExposureInputs(meta, sorted(ccds, key=lambda c: c.ccd), sorted(bad, key=lambda b: b.ccd))
