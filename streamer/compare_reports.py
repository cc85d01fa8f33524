"""Two bundles on the same held-out sets, exposure by exposure: which is better, beyond noise.

``skygrade evaluate`` writes a ``report.json`` per held-out set whose ``agreement.rows`` hold
each exposure's grade and the person's (or simulator's) label. Two bundles scored on the same
sets agree on most exposures; what tells them apart is the exposures only one of them gets
right. This prints, per set and pooled, both accuracies, those discordant counts (``b``: the
base right and the candidate wrong; ``c``: the reverse) and the exact two-sided McNemar p-value
(a binomial test of ``c`` out of ``b + c``): the paired test of "same accuracy", which needs far
fewer exposures than comparing two totals, because the exposures both get right or both get
wrong carry no information about the difference::

    python -m skygrade.streamer.compare_reports \\
        --base 'eval/r-shipped-{set}' --candidate 'eval/r-new-{set}' \\
        holdout3-seed7 holdout3-seed11 galsim-full-2021 galsim-full-2022

``{set}`` in each template is replaced by each set's name. An exposure counts as right when its
grade is the label or one of the row's ``also`` grades. Exposures graded by one bundle only are
left out, and said.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Paired:
    """One comparison: exposures both bundles graded, each one's right count, the discordant
    counts and the exact two-sided McNemar p-value."""

    n: int
    base: int
    candidate: int
    b: int
    c: int
    p: float
    only_one: int = 0


def mcnemar_p(b: int, c: int) -> float:
    """Exact two-sided McNemar p-value: twice the binomial(b + c, 1/2) tail of the smaller count
    (1.0 when there is no discordant exposure).

    >>> round(mcnemar_p(1, 9), 4), mcnemar_p(0, 0)
    (0.0215, 1.0)
    """
    n, k = b + c, min(b, c)
    if n == 0:
        return 1.0
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2.0**n
    return min(1.0, 2.0 * tail)


def right_by_exposure(report: Mapping) -> dict[str, bool]:
    """Exposure id -> graded right (the label or an ``also`` grade), from a report's rows."""
    rows = (report.get("agreement") or {}).get("rows")
    if rows is None:
        raise ValueError("no agreement rows (a report.json of skygrade evaluate has them)")
    return {
        str(r["exposure_id"]): r["grade"] == r["label"] or r["grade"] in (r.get("also") or [])
        for r in rows
    }


def pair(base: Mapping[str, bool], candidate: Mapping[str, bool]) -> Paired:
    """The paired comparison of two bundles' right-or-wrong on the exposures both graded."""
    shared = sorted(set(base) & set(candidate))
    b = sum(base[e] and not candidate[e] for e in shared)
    c = sum(candidate[e] and not base[e] for e in shared)
    return Paired(
        n=len(shared),
        base=sum(base[e] for e in shared),
        candidate=sum(candidate[e] for e in shared),
        b=b,
        c=c,
        p=mcnemar_p(b, c),
        only_one=len(set(base) ^ set(candidate)),
    )


def read_report(path: str | Path) -> dict[str, bool]:
    """Exposure id -> graded right, from a report directory or its ``report.json``; a
    ValueError that names the file when it cannot be read or has no agreement rows."""
    path = Path(path)
    path = path / "report.json" if path.is_dir() else path
    try:
        return right_by_exposure(json.loads(path.read_text()))
    except (OSError, json.JSONDecodeError, ValueError) as exc:
        raise ValueError(f"{path}: {exc}") from None


def compare(base: str, candidate: str, sets: Sequence[str]) -> list[tuple[str, Paired]]:
    """Per set and pooled (set and exposure ids together), the paired comparison."""
    rows, pooled_base, pooled_cand = [], {}, {}
    for name in sets:
        a = read_report(base.replace("{set}", name))
        b = read_report(candidate.replace("{set}", name))
        rows.append((name, pair(a, b)))
        pooled_base.update({f"{name}/{k}": v for k, v in a.items()})
        pooled_cand.update({f"{name}/{k}": v for k, v in b.items()})
    rows.append(("pooled", pair(pooled_base, pooled_cand)))
    return rows


def format_rows(rows: Sequence[tuple[str, Paired]]) -> str:
    """A markdown table of :func:`compare`'s rows."""
    lines = [
        "| set | exposures | base right | candidate right | base only (b) | candidate only (c) "
        "| McNemar p |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in rows:
        note = f" ({r.only_one} graded by one only)" if r.only_one else ""
        lines.append(
            f"| {name}{note} | {r.n} | {r.base} | {r.candidate} | {r.b} | {r.c} | {r.p:.3g} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skygrade.streamer.compare_reports",
        description="Compare two bundles' skygrade evaluate reports on the same held-out sets, "
        "exposure by exposure (paired McNemar test), per set and pooled.",
    )
    parser.add_argument(
        "--base", required=True, help="report directory (or report.json) template with {set}"
    )
    parser.add_argument("--candidate", required=True, help="the same for the other bundle")
    parser.add_argument("sets", nargs="+", help="set names substituted for {set}")
    args = parser.parse_args(argv)
    for flag, template in (("--base", args.base), ("--candidate", args.candidate)):
        if "{set}" not in template and len(args.sets) > 1:
            parser.error(f"{flag} {template!r} has no {{set}}: every set would read one report")
    try:
        print(format_rows(compare(args.base, args.candidate, args.sets)))
    except ValueError as exc:
        print(f"compare_reports: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
