"""Prometheus metrics of skygrade, defined on an injected registry.

Every metric lives on the :class:`~prometheus_client.CollectorRegistry` given to :class:`Metrics`
(a new private one by default, never the process-global registry), so tests and several daemons
in one process each build their own. Names follow the Prometheus conventions: a ``skygrade_``
prefix, the unit in the name, no exposure ids as label values, label values drawn from small
fixed sets (grades, reason slugs, stage names, alert levels) and the model version as an
``_info`` metric.

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import math
import re
from collections.abc import Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from skygrade.ops.config import CLASSES

__all__ = [
    "CONFIDENCE_BUCKETS",
    "LATENCY_BUCKETS_S",
    "SEEING_BUCKETS_ARCSEC",
    "SKY_BRIGHTNESS_BUCKETS",
    "STAGE_BUCKETS_S",
    "WRITE_FAILURE_KINDS",
    "Metrics",
    "label_slug",
    "reason_slug",
]

#: Buckets of the grading latency (file complete -> row written), one at each target in seconds.
LATENCY_BUCKETS_S: tuple[float, ...] = (1, 2.5, 5, 10, 12.5, 15, 20, 30, 60, 120, 300, 600)
#: Buckets of one pipeline stage's duration for one exposure, in seconds.
STAGE_BUCKETS_S: tuple[float, ...] = (
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    120,
)
#: Buckets of the exposure OOD score: 1 is the edge of the training data (skygrade.models.ood).
OOD_BUCKETS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0)

#: Buckets of the exposure seeing (PSF FWHM, arcsec) at the thresholds observers use on Mauna
#: Kea: 0.5 (excellent), 0.6-0.8 (around the MegaCam median of ~0.7), 1.0, 1.2 (the
#: default ``alerts.seeing_warn_arcsec``), 1.5 and 2.0 (most programmes stop).
SEEING_BUCKETS_ARCSEC: tuple[float, ...] = (0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.2, 1.5, 2.0, 3.0)
#: Buckets of the sky brightness (mag/arcsec^2): twilight / bright Moon (17-19), grey (19-20.5)
#: and dark time (20.5-22.5; r dark at Mauna Kea ~21.2, g ~22.0).
SKY_BRIGHTNESS_BUCKETS: tuple[float, ...] = (
    17.0,
    18.0,
    19.0,
    19.5,
    20.0,
    20.5,
    21.0,
    21.5,
    22.0,
    22.5,
)

#: Label values of ``skygrade_write_failures_total``: whose fault a failed grading was.
WRITE_FAILURE_KINDS = ("exposure", "output")

#: Buckets of the exposure confidence (the grade's probability), 0.1 to 1.0.
CONFIDENCE_BUCKETS: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 11))

_SLUG = re.compile(r"[a-z_]{1,40}")
_OTHER = "other"
_STATUSES = ("graded", "quarantined")
# Sample-name suffixes each metric type exports (``_created`` left out: see metric_names).
_SUFFIXES = {
    "counter": ("_total",),
    "gauge": ("",),
    "histogram": ("_bucket", "_count", "_sum"),
    "info": ("_info",),
}


def label_slug(value: object) -> str:
    """Bound a free-text label value: itself if it matches ``[a-z_]{1,40}``, else ``"other"``.

    Parameters
    ----------
    value : object
        A candidate label value (a stage name, a slug).

    Returns
    -------
    str
        ``value`` when it is a string of 1 to 40 lowercase letters or underscores, else
        ``"other"``.

    Examples
    --------
    >>> label_slug("extract"), label_slug("Extract sources")
    ('extract', 'other')
    """
    if isinstance(value, str) and _SLUG.fullmatch(value):
        return value
    return _OTHER


def reason_slug(reason: str | None) -> str:
    """The bounded label value of a quarantine reason: the slug before ``':'``.

    Parameters
    ----------
    reason : str or None
        A reason as written in the ledger and the dead-letter rows, e.g.
        ``"truncated: expected 37 HDUs, found 12"``.

    Returns
    -------
    str
        The text before the first ``':'`` (stripped) when it matches ``[a-z_]{1,40}``, else
        ``"other"`` (also for a missing reason).

    Examples
    --------
    >>> reason_slug("truncated: expected 37 HDUs, found 12")
    'truncated'
    >>> reason_slug("File /data/2817011o.fits is bad")
    'other'
    """
    if not isinstance(reason, str):
        return _OTHER
    return label_slug(reason.split(":", 1)[0].strip())


def _finite(value: float | None) -> bool:
    return value is not None and isinstance(value, int | float) and math.isfinite(value)


class Metrics:
    """The skygrade metrics, registered on one registry.

    Parameters
    ----------
    registry : prometheus_client.CollectorRegistry, optional
        Where to register the metrics. None (the default) creates a new private registry;
        the process-global ``prometheus_client.REGISTRY`` is only used when passed explicitly.

    Attributes
    ----------
    registry : prometheus_client.CollectorRegistry
        The registry holding every metric below (serve it with
        :class:`skygrade.ops.http.HttpServer`).
    exposures_graded : Counter
        ``skygrade_exposures_graded_total{grade}``: exposures graded, by grade.
    exposures_quarantined : Counter
        ``skygrade_exposures_quarantined_total{reason}``: exposures quarantined, by reason slug.
    ccds_graded : Counter
        ``skygrade_ccds_graded_total``: CCDs graded.
    ccds_quarantined : Counter
        ``skygrade_ccds_quarantined_total{reason}``: CCDs quarantined, by reason slug.
    sources_extracted : Counter
        ``skygrade_sources_extracted_total``: sources extracted in graded exposures.
    stage_seconds : Histogram
        ``skygrade_stage_duration_seconds{stage}``: time spent in each pipeline stage per
        exposure.
    latency_seconds : Histogram
        ``skygrade_grading_latency_seconds``: file complete -> row written, with a bucket at
        each target (:data:`LATENCY_BUCKETS_S`).
    confidence : Histogram
        ``skygrade_exposure_confidence``: confidence of each graded exposure.
    ood : Histogram
        ``skygrade_exposure_ood_score``: out-of-distribution score of each graded exposure
        (the median over its CCDs; above 1 its inputs are unlike the training data and its
        confidence was lowered: ``skygrade.models.ood``).
    seeing : Histogram
        ``skygrade_seeing_arcsec``: seeing (median PSF FWHM of the stars, as measured) of each
        graded exposure, buckets :data:`SEEING_BUCKETS_ARCSEC`.
    sky_brightness : Histogram
        ``skygrade_sky_brightness_mag_arcsec2``: sky brightness of each graded exposure,
        buckets :data:`SKY_BRIGHTNESS_BUCKETS`.
    backlog : Gauge
        ``skygrade_backlog_exposures``: exposures ready but not yet graded.
    last_graded : Gauge
        ``skygrade_last_graded_timestamp_seconds``: Unix time of the last graded exposure.
    alerts : Counter
        ``skygrade_alerts_total{level}``: alerts fired, by level (WARN, ALARM).
    alerts_dropped : Counter
        ``skygrade_alerts_dropped_total``: alerts dropped undelivered because the delivery
        queue was full or the daemon stopped.
    webhook_failures : Counter
        ``skygrade_alert_webhook_failures_total``: alerts the webhook did not accept after
        every retry.
    write_failures : Counter
        ``skygrade_write_failures_total{kind}``: gradings whose rows could not be written or
        whose pipeline raised, by kind: ``exposure`` (that exposure alone failed; it is retried,
        then quarantined) or ``output`` (nothing can be written into the dataset).
    oldest_pending_age : Gauge
        ``skygrade_oldest_pending_age_seconds``: age of the oldest exposure waiting to be graded
        or being graded (0 when none), read at scrape time from the daemon's ledger.
    bundle_refusals : Counter
        ``skygrade_bundle_refusals_total``: model bundles found on disk (a symlink swapped to
        a new version) that failed their check and were not used.
    model_info : Info
        ``skygrade_model_info{version, ...}``: the model bundle in use.

    Examples
    --------
    >>> m = Metrics()
    >>> m.observe_exposure("GOOD", "graded", None, 12.0, 0.9, 36, 5000, {"extract": 3.1})
    >>> m.registry.get_sample_value("skygrade_exposures_graded_total", {"grade": "GOOD"})
    1.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = CollectorRegistry() if registry is None else registry
        reg = self.registry
        self.exposures_graded = Counter(
            "skygrade_exposures_graded",
            "Exposures graded, by grade.",
            ["grade"],
            registry=reg,
        )
        self.exposures_quarantined = Counter(
            "skygrade_exposures_quarantined",
            "Exposures quarantined (unreadable or invalid), by reason slug.",
            ["reason"],
            registry=reg,
        )
        self.ccds_graded = Counter("skygrade_ccds_graded", "CCDs graded.", registry=reg)
        self.ccds_quarantined = Counter(
            "skygrade_ccds_quarantined",
            "CCDs quarantined, by reason slug.",
            ["reason"],
            registry=reg,
        )
        self.sources_extracted = Counter(
            "skygrade_sources_extracted", "Sources extracted in graded exposures.", registry=reg
        )
        self.stage_seconds = Histogram(
            "skygrade_stage_duration_seconds",
            "Time spent in one pipeline stage for one exposure.",
            ["stage"],
            buckets=STAGE_BUCKETS_S,
            registry=reg,
        )
        self.latency_seconds = Histogram(
            "skygrade_grading_latency_seconds",
            "Seconds from an exposure's file being complete to its row being written.",
            buckets=LATENCY_BUCKETS_S,
            registry=reg,
        )
        self.confidence = Histogram(
            "skygrade_exposure_confidence",
            "Confidence (probability of the grade) of each graded exposure.",
            buckets=CONFIDENCE_BUCKETS,
            registry=reg,
        )
        self.ood = Histogram(
            "skygrade_exposure_ood_score",
            "Out-of-distribution score of each graded exposure (above 1: inputs unlike the "
            "training data, confidence lowered).",
            buckets=OOD_BUCKETS,
            registry=reg,
        )
        self.seeing = Histogram(
            "skygrade_seeing_arcsec",
            "Seeing (median PSF FWHM of the stars, arcsec, not corrected to zenith) of each "
            "graded exposure.",
            buckets=SEEING_BUCKETS_ARCSEC,
            registry=reg,
        )
        self.sky_brightness = Histogram(
            "skygrade_sky_brightness_mag_arcsec2",
            "Sky brightness (mag/arcsec^2, nominal zero point) of each graded exposure.",
            buckets=SKY_BRIGHTNESS_BUCKETS,
            registry=reg,
        )
        self.backlog = Gauge(
            "skygrade_backlog_exposures", "Exposures ready but not yet graded.", registry=reg
        )
        self.last_graded = Gauge(
            "skygrade_last_graded_timestamp_seconds",
            "Unix time at which the last exposure was graded.",
            registry=reg,
        )
        self.alerts = Counter(
            "skygrade_alerts", "Alerts fired, by level (WARN, ALARM).", ["level"], registry=reg
        )
        self.alerts_dropped = Counter(
            "skygrade_alerts_dropped",
            "Alerts dropped undelivered (delivery queue full, or left at shutdown).",
            registry=reg,
        )
        self.webhook_failures = Counter(
            "skygrade_alert_webhook_failures",
            "Alerts the webhook did not accept after every retry.",
            registry=reg,
        )
        self.write_failures = Counter(
            "skygrade_write_failures",
            "Gradings that failed (rows not written, pipeline raised), by kind: exposure "
            "(that exposure alone) or output (nothing can be written).",
            ["kind"],
            registry=reg,
        )
        for kind in WRITE_FAILURE_KINDS:  # both series exist from the start, at 0
            self.write_failures.labels(kind)
        self.oldest_pending_age = Gauge(
            "skygrade_oldest_pending_age_seconds",
            "Age of the oldest exposure waiting to be graded or being graded (0 when none).",
            registry=reg,
        )
        self.bundle_refusals = Counter(
            "skygrade_bundle_refusals",
            "Model bundles swapped in on disk that failed their check and were not used.",
            registry=reg,
        )
        self.model_info = Info(
            "skygrade_model", "The model bundle grading exposures.", registry=reg
        )
        self._collectors = (
            self.exposures_graded,
            self.exposures_quarantined,
            self.ccds_graded,
            self.ccds_quarantined,
            self.sources_extracted,
            self.stage_seconds,
            self.latency_seconds,
            self.confidence,
            self.ood,
            self.seeing,
            self.sky_brightness,
            self.backlog,
            self.last_graded,
            self.alerts,
            self.alerts_dropped,
            self.webhook_failures,
            self.write_failures,
            self.oldest_pending_age,
            self.bundle_refusals,
            self.model_info,
        )

    def observe_exposure(
        self,
        grade: str | None,
        status: str,
        reason: str | None,
        latency_s: float | None,
        confidence: float | None,
        n_ccd_graded: int,
        n_sources: int,
        stage_seconds: Mapping[str, float],
        ood: float | None = None,
        seeing_arcsec: float | None = None,
        sky_mag_arcsec2: float | None = None,
    ) -> None:
        """Record one exposure row (call once per row written).

        Parameters
        ----------
        grade : str or None
            The exposure grade (one of ``skygrade.ops.config.CLASSES``; anything else is counted as
            ``"other"``). Ignored for a quarantined exposure.
        status : {"graded", "quarantined"}
            What happened to the exposure.
        reason : str or None
            Quarantine reason; counted under its slug (:func:`reason_slug`).
        latency_s : float or None
            Seconds from file complete to row written; observed for graded rows only (a file
            refused by the watcher would add ~0 s and hide slow grading); None or NaN is not
            observed.
        confidence : float or None
            Confidence of the grade; None or NaN is not observed (nor for quarantined rows).
        n_ccd_graded : int
            CCDs of the exposure that were graded.
        n_sources : int
            Sources extracted from the exposure.
        stage_seconds : mapping of str to float
            Seconds spent per pipeline stage; stage names outside ``[a-z_]{1,40}`` are counted
            as ``"other"``, non-finite durations skipped.
        ood : float or None
            Out-of-distribution score of a graded exposure; None or NaN is not observed.
        seeing_arcsec, sky_mag_arcsec2 : float or None
            Seeing and sky brightness of a graded exposure; None or NaN is not observed.

        Raises
        ------
        ValueError
            If ``status`` is not ``"graded"`` or ``"quarantined"``.
        """
        if status not in _STATUSES:
            raise ValueError(f"status must be one of {_STATUSES}, got {status!r}")
        if status == "graded":
            self.exposures_graded.labels(grade if grade in CLASSES else _OTHER).inc()
            self.last_graded.set_to_current_time()
            if _finite(confidence):
                self.confidence.observe(confidence)
            if _finite(ood):
                self.ood.observe(ood)
            if _finite(seeing_arcsec):
                self.seeing.observe(seeing_arcsec)
            if _finite(sky_mag_arcsec2):
                self.sky_brightness.observe(sky_mag_arcsec2)
        else:
            self.exposures_quarantined.labels(reason_slug(reason)).inc()
        if n_ccd_graded > 0:
            self.ccds_graded.inc(n_ccd_graded)
        if n_sources > 0:
            self.sources_extracted.inc(n_sources)
        if status == "graded" and _finite(latency_s):
            self.latency_seconds.observe(latency_s)
        for stage, seconds in stage_seconds.items():
            if _finite(seconds):
                self.stage_seconds.labels(label_slug(stage)).observe(seconds)

    def observe_ccd_quarantined(self, reason: str | None, n: int = 1) -> None:
        """Count ``n`` quarantined CCDs under the slug of ``reason``.

        Parameters
        ----------
        reason : str or None
            Quarantine reason, e.g. ``"bad_shape: NAXIS2 is 10"``.
        n : int, optional
            How many CCDs (default 1).
        """
        if n > 0:
            self.ccds_quarantined.labels(reason_slug(reason)).inc(n)

    def set_model(self, version: str, **labels: str) -> None:
        """Publish the model bundle in use as ``skygrade_model_info``.

        Parameters
        ----------
        version : str
            The bundle's version.
        **labels : str
            Further fields of the bundle (e.g. ``created``, ``digest``); keep them few.
        """
        self.model_info.info({"version": str(version), **{k: str(v) for k, v in labels.items()}})

    def metric_names(self) -> set[str]:
        """Every sample name these metrics export, as queried in PromQL.

        Histograms give ``_bucket``, ``_count`` and ``_sum``; counters ``_total``; the info
        metric ``skygrade_model_info``. The ``_created`` timestamps are left out: a dashboard
        or alert rule should not depend on them.

        Returns
        -------
        set of str
            E.g. ``{"skygrade_exposures_graded_total", "skygrade_backlog_exposures", ...}``.

        Examples
        --------
        >>> "skygrade_grading_latency_seconds_bucket" in Metrics().metric_names()
        True
        """
        names = set()
        for collector in self._collectors:
            for family in collector.describe():
                names.update(family.name + suffix for suffix in _SUFFIXES[family.type])
        return names
