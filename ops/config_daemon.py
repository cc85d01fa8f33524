"""Configuration: the sections of the daemon at the data drop (``skygrade watch``).

:class:`WatchConfig` (the watcher, the grader's retries and back-off, the CCD pool's size),
:class:`MetricsConfig` (the /metrics and /healthz HTTP server) and :class:`AlertsConfig` (the
WARN / ALARM thresholds and the webhook, checked by :func:`check_http_url`). They are declared
with the schema engine (:mod:`skygrade.ops.config_schema`) like every section, and the root
:class:`skygrade.ops.config.Config` holds them as ``watch``, ``metrics`` and ``alerts``.

This module imports nothing from ``streamer``, ``transforms`` or ``models``.
"""

from typing import Literal

from skygrade.ops.config_schema import config_section, setting
from skygrade.ops.config_values import ConfigError, Problem, show_value

__all__ = ["AlertsConfig", "MetricsConfig", "WatchConfig", "check_http_url"]


@config_section
class WatchConfig:
    """The daemon at the data drop (``skygrade watch``)."""

    settle_s: float = setting(
        2.0, "Seconds a file's size and mtime must stay unchanged before it is checked.", gt=0
    )
    incomplete_timeout_s: float = setting(
        900.0,
        "Seconds an incomplete file may stay unchanged before it is quarantined as "
        "truncated (a file still growing is waited for).",
        gt=0,
    )
    poll_s: float = setting(0.5, "Seconds between checks of files still arriving.", gt=0)
    use_polling: bool = setting(
        False,
        "Poll the drop directory instead of inotify events (needed on NFS, where writes made "
        "on another machine raise no event).",
    )
    rescan_s: float | None = setting(
        60.0,
        "Seconds between full rescans of the drop directory (a safety net for lost events); "
        "null disables them.",
        gt=0,
    )
    ccd_workers: int = setting(
        2,
        "Processes measuring the CCDs of an exposure in parallel (a pool that lives as long "
        "as the daemon).",
        ge=1,
    )
    backlog_policy: Literal["fifo", "newest-first"] = setting(
        "newest-first",
        "Order in which waiting exposures are graded when they arrive faster than they are "
        "graded: 'newest-first' shows observers the exposure just taken; nothing is dropped "
        "either way (every file is in the ledger until it is graded or quarantined).",
    )
    max_attempts: int = setting(
        5,
        "Times grading an exposure may fail on the exposure itself (its results cannot be "
        "written, the pipeline raised on it) before it is quarantined as too_many_attempts; a "
        "dataset that cannot be written at all, a bundle that cannot be loaded and a kill or "
        "restart of the daemon do not count. With retry_s 10 the fifth failure comes about "
        "150 s after the first.",
        ge=1,
    )
    max_interruptions: int = setting(
        10,
        "Times an exposure may be caught mid-grading by a crash or kill of the daemon before "
        "it is quarantined as crash_loop (a file that crashes the daemon must not crash it all "
        "night). A kill from outside looks the same as a crash, so this is kept well above "
        "the restarts a good exposure can meet.",
        ge=1,
    )
    retry_s: float = setting(
        10.0,
        "First back-off (s) after a failed grading or write of an exposure; doubles with each "
        "failure of that exposure, up to 300 s. Other exposures are graded meanwhile.",
        gt=0,
    )
    shutdown_timeout_s: float = setting(
        60.0, "Seconds a stop waits for the exposure in flight before handing it back.", gt=0
    )


def check_http_url(url: str) -> str | None:
    """Check that ``url`` is an http:// or https:// URL with a host.

    Parameters
    ----------
    url : str
        The URL (e.g. a webhook endpoint).

    Returns
    -------
    str or None
        None when it is valid, else the error text (used as a field ``check``).

    Examples
    --------
    >>> check_http_url("file:///etc/passwd")
    "expected an http:// or https:// URL, got 'file:///etc/passwd'"
    """
    scheme, sep, rest = url.partition("://")
    if sep and scheme.lower() in ("http", "https") and rest and not rest.startswith("/"):
        return None
    return f"expected an http:// or https:// URL, got {show_value(url)}"


@config_section
class MetricsConfig:
    """The daemon's HTTP server for Prometheus metrics (/metrics) and health (/healthz)."""

    host: str = setting(
        "127.0.0.1",
        "Address the server binds to; the default serves this machine only, 0.0.0.0 (or ::) "
        "every interface.",
    )
    port: int = setting(9108, "TCP port of the server; 0 picks a free one.", ge=0, le=65535)
    request_timeout_s: float = setting(
        10.0,
        "Seconds one connection may last, from accept to the end of the answer: a client "
        "that trickles its request (or reads the answer slowly) is cut off then, whatever "
        "it sends.",
        gt=0,
    )
    max_connections: int = setting(
        32,
        "Connections served at once (one thread each); more are answered 503 at once and "
        "closed. A connection gets its thread once it has sent something: silent ones hold "
        "none (up to 256, then the oldest is closed) and are closed at the request timeout.",
        ge=1,
    )


@config_section
class AlertsConfig:
    """WARN / ALARM rules on the graded exposures, and their delivery."""

    consecutive_bad_warn: int = setting(
        3, "WARN when this many consecutive graded exposures are not GOOD.", ge=1
    )
    consecutive_bad_alarm: int = setting(
        6,
        "ALARM when this many consecutive graded exposures are not GOOD (>= consecutive_bad_warn).",
        ge=1,
    )
    low_confidence: float = setting(
        0.5, "WARN when a graded exposure's confidence is below this.", ge=0, le=1
    )
    median_iso0_warn: float | None = setting(
        None,
        "WARN when an exposure's median ISO0 (pixels above threshold, a seeing proxy) exceeds "
        "this; unset disables the rule.",
        gt=0,
    )
    seeing_warn_arcsec: float | None = setting(
        1.2,
        "WARN when an exposure's seeing (median PSF FWHM of its stars, arcsec, as measured: "
        "not corrected to zenith) reaches this; unset disables the rule. The default is well "
        "above the MegaCam median on Mauna Kea (~0.7).",
        gt=0,
    )
    median_elongation_warn: float = setting(
        1.6, "WARN when an exposure's median source elongation (A/B) reaches this.", ge=1
    )
    median_elongation_alarm: float = setting(
        2.2,
        "ALARM when an exposure's median source elongation reaches this (>= "
        "median_elongation_warn).",
        ge=1,
    )
    quarantine_warn: int = setting(
        3, "WARN when this many of the last quarantine_window exposures were quarantined.", ge=1
    )
    quarantine_window: int = setting(
        10, "Number of most recent exposures the quarantine rule looks at.", ge=1
    )
    webhook_url: str | None = setting(
        None,
        "Alertmanager-compatible endpoint (e.g. http://localhost:9093/api/v2/alerts) that "
        "alerts are POSTed to; unset means alerts are only logged.",
        check=check_http_url,
    )
    webhook_timeout_s: float = setting(2.0, "Seconds one webhook request may take.", gt=0)
    webhook_retries: int = setting(
        3, "Further attempts after a failed webhook request, with exponential backoff.", ge=0
    )
    webhook_queue: int = setting(
        100, "Alerts waiting for delivery at most; when full the oldest is dropped.", ge=1
    )

    def __post_init__(self) -> None:
        problems = []
        if self.consecutive_bad_alarm < self.consecutive_bad_warn:
            problems.append(
                Problem(
                    "consecutive_bad_alarm",
                    f"expected >= consecutive_bad_warn ({self.consecutive_bad_warn}), "
                    f"got {self.consecutive_bad_alarm}",
                )
            )
        if self.median_elongation_alarm < self.median_elongation_warn:
            problems.append(
                Problem(
                    "median_elongation_alarm",
                    f"expected >= median_elongation_warn ({self.median_elongation_warn}), "
                    f"got {self.median_elongation_alarm}",
                )
            )
        if self.quarantine_warn > self.quarantine_window:
            problems.append(
                Problem(
                    "quarantine_warn",
                    f"expected <= quarantine_window ({self.quarantine_window}), "
                    f"got {self.quarantine_warn}",
                )
            )
        if problems:
            raise ConfigError(problems, f"{type(self).__name__}(...)")
