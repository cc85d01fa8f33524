"""WARN / ALARM rules on the graded exposures: the alerts they fire and clear.

:class:`AlertEngine` looks at each exposure row as it is written and keeps one state per rule:

==================  =====================================================================
rule                condition (thresholds from :class:`skygrade.ops.config_daemon.AlertsConfig`)
==================  =====================================================================
consecutive_bad     N consecutive graded exposures not GOOD: WARN at ``consecutive_bad_warn``,
                    ALARM at ``consecutive_bad_alarm``; cleared by a GOOD exposure
low_confidence      a graded exposure's confidence below ``low_confidence`` (WARN)
median_elongation   median source elongation at or above ``median_elongation_warn`` (WARN) or
                    ``median_elongation_alarm`` (ALARM): trailed stars, tracking
median_iso0         median ISO0 above ``median_iso0_warn`` (WARN; off when unset): seeing
seeing              measured seeing (``seeing_arcsec``, PSF FWHM) at or above
                    ``seeing_warn_arcsec`` (WARN; off when unset)
quarantine_rate     ``quarantine_warn`` or more of the last ``quarantine_window`` exposures
                    quarantined (WARN)
==================  =====================================================================

It reports changes only: a rule going active, escalating from WARN to ALARM, or clearing (a
resolved :class:`Alert`). While a rule stays active its level does not go down, and
:meth:`AlertEngine.active` shows its latest message. Quarantined exposures only count for the
quarantine rule; they neither extend nor break a run of exposures not GOOD.

The engine hands each :class:`Alert` to its sink;
:class:`skygrade.ops.alert_delivery.AlertDispatcher` logs it and posts it to the webhook
(:mod:`skygrade.ops.alert_delivery`).

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

import collections
import dataclasses
import logging
import math
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from skygrade.ops.config_daemon import AlertsConfig
from skygrade.ops.metrics import Metrics

__all__ = ["RULES", "SEVERITY", "Alert", "AlertEngine"]

logger = logging.getLogger(__name__)

#: The rules of :class:`AlertEngine`, in the order they are evaluated and listed.
RULES: tuple[str, ...] = (
    "consecutive_bad",
    "low_confidence",
    "median_elongation",
    "median_iso0",
    "seeing",
    "quarantine_rate",
)

Level = Literal["WARN", "ALARM"]
_RANK = {"WARN": 1, "ALARM": 2}
#: The Alertmanager ``severity`` label of each level.
SEVERITY = {"WARN": "warning", "ALARM": "critical"}
_STATUSES = ("graded", "quarantined")
_SKIP = object()  # a rule that learns nothing from a row keeps its state


@dataclasses.dataclass(frozen=True)
class Alert:
    """One alert, as fired, escalated or resolved by :class:`AlertEngine`.

    Attributes
    ----------
    level : {"WARN", "ALARM"}
        Severity. A resolved alert keeps the level it had while active.
    rule : str
        The rule (one of :data:`RULES`).
    message : str
        For people, e.g. ``"6 consecutive exposures not GOOD (last: BT, 2817011)"``.
    exposure_id : str or None
        The exposure whose row changed the rule's state.
    started_at : datetime
        When the alert (at this level) started, UTC.
    resolved : bool
        True for the notice that the condition has cleared.
    ended_at : datetime or None
        When the condition cleared (resolved alerts only), UTC.
    """

    level: Level
    rule: str
    message: str
    exposure_id: str | None
    started_at: datetime
    resolved: bool = False
    ended_at: datetime | None = None

    @property
    def alertname(self) -> str:
        """``skygrade_<rule>``, the Alertmanager ``alertname`` label."""
        return f"skygrade_{self.rule}"

    @property
    def severity(self) -> str:
        """``"warning"`` for WARN, ``"critical"`` for ALARM (the Alertmanager label)."""
        return SEVERITY[self.level]


def _finite(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


class AlertEngine:
    """Evaluate the alert rules on each exposure row; report and remember state changes.

    Parameters
    ----------
    config : skygrade.ops.config_daemon.AlertsConfig
        The thresholds.
    sink : callable, optional
        Called with each :class:`Alert` that :meth:`observe` reports (e.g.
        ``skygrade.ops.alert_delivery.AlertDispatcher.send``). An exception from it is logged, never
        raised.
    metrics : skygrade.ops.metrics.Metrics, optional
        Counts fired alerts in ``skygrade_alerts_total{level}``.
    clock : callable, optional
        Returns the current aware datetime (default ``datetime.now(UTC)``); for tests.

    Examples
    --------
    >>> engine = AlertEngine(AlertsConfig(consecutive_bad_warn=1, consecutive_bad_alarm=2))
    >>> row = {"exposure_id": "2817011", "grade": "BT", "status": "graded", "confidence": 0.9}
    >>> [(a.level, a.message) for a in engine.observe(row)]
    [('WARN', '1 consecutive exposures not GOOD (last: BT, 2817011)')]
    """

    def __init__(
        self,
        config: AlertsConfig,
        sink: Callable[[Alert], None] | None = None,
        metrics: Metrics | None = None,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        self.config = config
        self._sink = sink
        self._metrics = metrics
        self._clock = clock or (lambda: datetime.now(UTC))
        self._lock = threading.Lock()
        self._active: dict[str, Alert] = {}
        self._bad_run = 0
        self._recent: collections.deque[bool] = collections.deque(maxlen=config.quarantine_window)
        self._last_quarantined: tuple[str, str | None] | None = None

    def observe(self, row: Mapping[str, Any]) -> list[Alert]:
        """Evaluate every rule on one exposure row.

        Parameters
        ----------
        row : mapping
            The exposure row; the keys used are ``exposure_id``, ``grade``, ``status``
            (``"graded"`` or ``"quarantined"``), ``confidence``, ``median_elongation``,
            ``median_iso0``, ``seeing_arcsec``, ``seeing_zenith_arcsec``, ``n_psf_stars`` and
            ``reason``. Missing or NaN values leave the rules that need
            them as they are.

        Returns
        -------
        list of Alert
            The state changes, in :data:`RULES` order: alerts that went active or escalated
            to ALARM, and resolved alerts (``resolved=True``) of rules that cleared. Each was
            also passed to the sink.

        Raises
        ------
        ValueError
            If ``row["status"]`` is not ``"graded"`` or ``"quarantined"``.
        """
        status = row.get("status")
        if status not in _STATUSES:
            raise ValueError(f"row['status'] must be one of {_STATUSES}, got {status!r}")
        exposure_id = None if row.get("exposure_id") is None else str(row["exposure_id"])
        with self._lock:
            now = self._clock()
            verdicts = {
                "consecutive_bad": self._consecutive_bad(row, status, exposure_id),
                "low_confidence": self._low_confidence(row, status, exposure_id),
                "median_elongation": self._elongation(row, status, exposure_id),
                "median_iso0": self._iso0(row, status, exposure_id),
                "seeing": self._seeing(row, status, exposure_id),
                "quarantine_rate": self._quarantine_rate(row, status, exposure_id),
            }
            changes = []
            for rule in RULES:
                verdict = verdicts[rule]
                if verdict is not _SKIP:
                    change = self._transition(rule, *verdict, exposure_id, now)
                    if change is not None:
                        changes.append(change)
        for alert in changes:
            if self._metrics is not None and not alert.resolved:
                self._metrics.alerts.labels(alert.level).inc()
            if self._sink is not None:
                try:
                    self._sink(alert)
                except Exception:
                    logger.exception("alert sink failed on %s", alert)
        return changes

    def active(self) -> list[Alert]:
        """The active alerts, in :data:`RULES` order, each with its latest message.

        Returns
        -------
        list of Alert
            One per active rule; empty when all is well.
        """
        with self._lock:
            return [self._active[rule] for rule in RULES if rule in self._active]

    # -- state machine

    def _transition(
        self,
        rule: str,
        level: Level | None,
        message: str,
        exposure_id: str | None,
        now: datetime,
    ) -> Alert | None:
        previous = self._active.get(rule)
        if level is None:
            if previous is None:
                return None
            del self._active[rule]
            return dataclasses.replace(
                previous, message=message, exposure_id=exposure_id, resolved=True, ended_at=now
            )
        if previous is None or _RANK[level] > _RANK[previous.level]:
            alert = Alert(level, rule, message, exposure_id, started_at=now)
            self._active[rule] = alert
            return alert
        # still active at the same or a lower level: the level sticks until the rule clears
        self._active[rule] = dataclasses.replace(previous, message=message, exposure_id=exposure_id)
        return None

    # -- rules: each returns _SKIP or (level or None, message)

    def _consecutive_bad(self, row: Mapping, status: str, eid: str | None) -> Any:
        grade = row.get("grade")
        if status != "graded" or not grade:
            return _SKIP
        cfg = self.config
        if grade == "GOOD":
            run, self._bad_run = self._bad_run, 0
            return None, f"{eid} graded GOOD after {run} consecutive exposures not GOOD"
        self._bad_run += 1
        run = self._bad_run
        level = (
            "ALARM"
            if run >= cfg.consecutive_bad_alarm
            else "WARN"
            if run >= cfg.consecutive_bad_warn
            else None
        )
        return level, f"{run} consecutive exposures not GOOD (last: {grade}, {eid})"

    def _low_confidence(self, row: Mapping, status: str, eid: str | None) -> Any:
        confidence = _finite(row.get("confidence"))
        if status != "graded" or confidence is None:
            return _SKIP
        limit = self.config.low_confidence
        if confidence < limit:
            grade = row.get("grade")
            return "WARN", f"confidence {confidence:.2f} below {limit:g} (graded {grade}, {eid})"
        return None, f"confidence {confidence:.2f} back at or above {limit:g} ({eid})"

    def _elongation(self, row: Mapping, status: str, eid: str | None) -> Any:
        value = _finite(row.get("median_elongation"))
        if status != "graded" or value is None:
            return _SKIP
        cfg = self.config
        for level, limit in (
            ("ALARM", cfg.median_elongation_alarm),
            ("WARN", cfg.median_elongation_warn),
        ):
            if value >= limit:
                return level, (
                    f"median elongation {value:.2f} >= {limit:g} ({eid}): stars trailed, "
                    "check tracking"
                )
        return (
            None,
            f"median elongation {value:.2f} back below {cfg.median_elongation_warn:g} ({eid})",
        )

    def _iso0(self, row: Mapping, status: str, eid: str | None) -> Any:
        limit = self.config.median_iso0_warn
        value = _finite(row.get("median_iso0"))
        if limit is None or status != "graded" or value is None:
            return _SKIP
        if value > limit:
            return "WARN", f"median ISO0 {value:.1f} px > {limit:g} ({eid}): poor seeing"
        return None, f"median ISO0 {value:.1f} px back at or below {limit:g} ({eid})"

    def _seeing(self, row: Mapping, status: str, eid: str | None) -> Any:
        limit = self.config.seeing_warn_arcsec
        value = _finite(row.get("seeing_arcsec"))
        if limit is None or status != "graded" or value is None:
            return _SKIP
        zenith = _finite(row.get("seeing_zenith_arcsec"))
        stars = row.get("n_psf_stars")
        detail = ", ".join(
            part
            for part in (
                f'{zenith:.2f}" at zenith' if zenith is not None else "",
                f"{int(stars)} stars" if stars is not None else "",
            )
            if part
        )
        detail = f" ({detail})" if detail else ""
        if value >= limit:
            return "WARN", f'seeing {value:.2f}"{detail} >= {limit:g}" ({eid}): poor seeing'
        return None, f'seeing {value:.2f}" back below {limit:g}" ({eid})'

    def _quarantine_rate(self, row: Mapping, status: str, eid: str | None) -> Any:
        quarantined = status == "quarantined"
        self._recent.append(quarantined)
        if quarantined:
            self._last_quarantined = (eid, row.get("reason"))
        n, window = sum(self._recent), len(self._recent)
        if n >= self.config.quarantine_warn:
            last_id, reason = self._last_quarantined or (eid, None)
            detail = f"{last_id}: {reason}" if reason else f"{last_id}"
            return "WARN", f"{n} of the last {window} exposures quarantined (last {detail})"
        return None, f"{n} of the last {window} exposures quarantined ({eid})"
