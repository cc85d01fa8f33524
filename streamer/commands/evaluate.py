"""``skygrade evaluate``: score a model bundle on a labelled archive beside a threshold baseline."""

from __future__ import annotations

import argparse
from pathlib import Path

from skygrade.ops.config import with_backend
from skygrade.streamer.cli_common import (
    EXIT_OK,
    UsageError,
    add_backend_option,
    add_bundle_option,
    add_runner_options,
    bundle_from_args,
)
from skygrade.streamer.evaluate import run_evaluate
from skygrade.streamer.pipelines import pipeline_options

EXAMPLES = (
    "examples:\n"
    "  skygrade evaluate build/model-archive --out report          # the shipped bundle\n"
    "  skygrade evaluate other-nights/ --bundle bundles/mine --out report"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``skygrade evaluate``."""
    parser.add_argument("archive", type=Path, help="labelled archive (exposures + labels.csv)")
    parser.add_argument(
        "--out", type=Path, required=True, help="report directory (report.md, .json, .png)"
    )
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="feature cache and shards (default: <out>/work; the training's work dir reuses "
        "its cached features)",
    )
    add_backend_option(
        parser,
        "extraction backend (default: extract.backend of the config); 'catalog' scores an "
        "archive of SExtractor catalogs in catalog mode",
    )
    add_bundle_option(parser)
    add_runner_options(parser)


def command(args: argparse.Namespace, cfg) -> int:
    """Run ``skygrade evaluate`` and print a short summary; returns the exit code."""
    if not args.archive.is_dir():
        raise UsageError(f"archive {args.archive} is not a directory")
    cfg = with_backend(cfg, args.backend)
    out = run_evaluate(
        bundle_from_args(args),
        args.archive,
        args.out,
        cfg,
        pipeline_options(args.runner, args.workers),
        args.work,
        progress=print,
    )
    print(format_summary(out["report"]))
    a = out["report"]["agreement"]
    if a["n_also"]:
        print(
            f"agreement with the person (label or also): {a['n_agree']}/{a['n']} "
            f"(label alone: {a['n_exact']}/{a['n']})"
        )
    print(f"report: {out['paths']['markdown']} (+ report.json, confusion.png)")
    return EXIT_OK


def format_summary(report: dict) -> str:
    """The side-by-side table of a report as fixed-width text for the terminal."""

    def pct(x) -> str:
        return "  n/a" if x is None else f"{100 * x:5.1f}"

    lines = [
        report["scope"]["text"],
        f"{'method':52}  {'acc %':>5}  {'F1':>5}  {'ECE':>5}",
    ]
    for r in report["comparison"]["rows"]:
        f1 = "  n/a" if r["exposure_macro_f1"] is None else f"{r['exposure_macro_f1']:5.3f}"
        ece = "  n/a" if r["exposure_ece"] is None else f"{r['exposure_ece']:5.3f}"
        lines.append(f"{r['label'][:52]:52}  {pct(r['exposure_accuracy'])}  {f1}  {ece}")
    return "\n".join(lines)
