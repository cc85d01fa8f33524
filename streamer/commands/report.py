"""``skygrade report``: the morning report of a night from the grades dataset."""

from __future__ import annotations

from pathlib import Path

from skygrade.ops.files import atomic_write_text
from skygrade.streamer.cli_common import EXIT_FAILURE, EXIT_OK, UsageError, parse_nights
from skygrade.streamer.report import (
    csv_text,
    format_empty,
    format_report,
    night_rows,
    plot_night,
    write_html,
    write_png,
)
from skygrade.transforms.grades_dataset import GradesDataset

EXAMPLES = (
    "examples:\n"
    "  skygrade report --night 2026-11-24 grades\n"
    "  skygrade report --night 2026-11-24 grades --png night.png\n"
    "  skygrade report --night 2026-11-24 grades --html night.html   # + night.csv beside it\n"
    "  skygrade report --night 2026-11-24 grades --csv night.csv\n"
    "  skygrade report grades --model-version 2026.11.24-101500   # the latest night"
)


def add_arguments(parser) -> None:
    """Declare ``skygrade report``'s arguments."""
    parser.add_argument("dataset", type=Path, help="grades dataset (exposures/ by night)")
    parser.add_argument(
        "--night", default=None, help="YYYY-MM-DD (default: the latest night in the dataset)"
    )
    parser.add_argument("--png", type=Path, default=None, help="also write a plot here")
    parser.add_argument(
        "--csv",
        type=Path,
        default=None,
        help="also write every exposure of the night here as CSV (default with --html: beside "
        "the HTML file, same name, .csv)",
    )
    parser.add_argument(
        "--html",
        type=Path,
        default=None,
        help="also write the morning report here: the observer page's night view, the plot "
        "and what to re-observe in one self-contained HTML file (CSS and images inlined, no "
        "script), with the CSV beside it",
    )
    parser.add_argument(
        "--model-version",
        default=None,
        help="rows of this model version (default: each exposure's latest grade)",
    )


def _is_empty_dataset(path: Path) -> bool:
    """A directory the daemon has made but not written a night into yet."""
    dataset = GradesDataset(path)
    if dataset.has_exposures():
        return not dataset.nights()
    return path.is_dir() and all(
        p.name in ("ccds", "images", "ledger.sqlite") or p.name.startswith(".")
        for p in path.iterdir()
    )


def command(args, cfg) -> int:
    """Run ``skygrade report``; returns the exit code."""
    if _is_empty_dataset(args.dataset) and args.night is None:
        print(format_empty(args.dataset))
        if args.png is not None:
            print(f"plot: {write_png(args.dataset, None, args.png)}")
        if args.html is not None:
            print(f"page: {write_html(args.dataset, None, args.html)}")
        return EXIT_OK
    dataset = GradesDataset(args.dataset)
    if not dataset.has_exposures():
        raise UsageError(f"{args.dataset} is not a grades dataset (no exposures/ directory)")
    available = dataset.nights()
    if args.night is None:
        night = available[-1]
    else:
        chosen = parse_nights(args.night)
        if len(chosen) != 1:
            raise UsageError(f"--night: give one night, got {args.night!r}")
        night = chosen[0]
    rows = night_rows(args.dataset, night, args.model_version)
    if not rows:
        print(
            f"night {night}: no exposure in {args.dataset}; nights with data: "
            + (", ".join(available[-10:]) or "none")
        )
        return EXIT_FAILURE
    print(format_report(night, rows))
    if args.png is not None:
        print(f"plot: {plot_night(night, rows, args.png)}")
    csv_path = args.csv
    if csv_path is None and args.html is not None:
        csv_path = args.html.with_suffix(".csv")
    if csv_path is not None:
        print(f"csv: {atomic_write_text(csv_path, csv_text(rows))}")
    if args.html is not None:
        csv_href = None
        if csv_path is not None and csv_path.resolve().parent == args.html.resolve().parent:
            csv_href = csv_path.name
        print(f"page: {write_html(args.dataset, night, args.html, rows=rows, csv=csv_href)}")
    return EXIT_OK
