"""``skygrade backfill``: grade an archive of exposures as Beam batch jobs."""

from __future__ import annotations

from pathlib import Path

from skygrade.ops.config import with_backend
from skygrade.streamer.backfill import run_backfill
from skygrade.streamer.cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    UsageError,
    add_backend_option,
    add_bundle_option,
    add_runner_options,
    bundle_from_args,
    parse_nights,
)
from skygrade.streamer.pipelines import DASK_RUNNERS, pipeline_options

EXAMPLES = (
    "examples:\n"
    "  skygrade backfill archive --out grades\n"
    "  skygrade backfill archive --out grades --nights 2026-11-01..2026-11-07 --workers 2\n"
    "  skygrade backfill archive --out grades --bundle bundles/2026-12   # adds new-model rows\n"
    "  skygrade backfill catalogs --out grades --backend catalog --force\n"
    "  skygrade backfill archive --out grades --runner dask --workers 2   # local Dask cluster\n"
    "  skygrade backfill archive --out grades --runner dask --dask-scheduler tcp://sched:8786\n"
    "  skygrade backfill /data/archive --out /data/grades --runner FlinkRunner \\\n"
    "      --beam-option=--flink_master=flink-jm:8081 \\\n"
    "      --beam-option=--environment_type=EXTERNAL \\\n"
    "      --beam-option=--environment_option=external_service_address=localhost:50000\n"
    "      # Flink, Spark, Dataflow: options and the SDK harness container in docs/runners.md"
)


def add_arguments(parser) -> None:
    """Declare ``skygrade backfill``'s arguments."""
    parser.add_argument("archive", type=Path, help="directory tree of exposures (or catalogs)")
    parser.add_argument(
        "--out",
        type=Path,
        required=True,
        help="grades dataset (exposures/ and ccds/ partitioned by night)",
    )
    parser.add_argument(
        "--nights",
        default=None,
        help="only these nights: YYYY-MM-DD, a range A..B or a comma list (default: all)",
    )
    parser.add_argument(
        "--force",
        action="store_true",
        help="regrade exposures already graded with this model version and config",
    )
    add_backend_option(parser, "extraction backend (default: extract.backend of the config)")
    parser.add_argument(
        "--batch",
        type=int,
        default=32,
        help="exposures per Beam job (what a crash can lose; progress granularity); default 32",
    )
    add_bundle_option(parser)
    add_runner_options(parser)
    parser.add_argument(
        "--ccd-workers",
        type=int,
        default=0,
        metavar="N",
        help="grade in this process with each exposure's CCDs in a pool of N processes "
        "started once (the daemon's way; with the local runner and --workers 1); default 0: "
        "the runner spreads the CCDs",
    )
    parser.add_argument(
        "--dask-scheduler",
        metavar="ADDRESS",
        default=None,
        help="with --runner dask: the dask.distributed scheduler to use (tcp://host:8786); "
        "default: a local cluster of --workers processes for this run",
    )
    parser.add_argument(
        "--beam-option",
        metavar="FLAG",
        action="append",
        default=[],
        help="one more Beam pipeline option, passed through (repeatable), e.g. "
        "--beam-option=--flink_master=localhost:8081; see docs/runners.md",
    )


def command(args, cfg) -> int:
    """Run ``skygrade backfill``; returns the exit code."""
    if not args.archive.is_dir():
        raise UsageError(f"archive {args.archive} is not a directory")
    if args.workers < 1:
        raise UsageError(f"--workers: must be >= 1, got {args.workers}")
    if args.batch < 1:
        raise UsageError(f"--batch: must be >= 1, got {args.batch}")
    if args.ccd_workers < 0:
        raise UsageError(f"--ccd-workers: must be >= 0, got {args.ccd_workers}")
    if args.ccd_workers and (args.workers != 1 or args.runner not in ("FnApiRunner",)):
        raise UsageError(
            "--ccd-workers runs the pipeline in this process: use it with --workers 1 and the "
            f"FnApiRunner (got --workers {args.workers} --runner {args.runner})"
        )
    extra = list(args.beam_option)
    bad = [f for f in extra if not f.startswith("--")]
    if bad:
        raise UsageError(f"--beam-option: expected --flag[=value], got {', '.join(bad)}")
    if args.dask_scheduler:
        if args.runner not in DASK_RUNNERS:
            raise UsageError(f"--dask-scheduler needs --runner dask, got --runner {args.runner}")
        extra.append(f"--dask_client_address={args.dask_scheduler}")
    nights = parse_nights(args.nights) if args.nights else None
    cfg = with_backend(cfg, args.backend)
    if args.ccd_workers and cfg.extract.backend == "catalog":
        raise UsageError("--ccd-workers measures pixels: not for --backend catalog")
    summary = run_backfill(
        args.archive,
        args.out,
        bundle_from_args(args),
        cfg,
        nights=nights,
        force=args.force,
        options=pipeline_options(args.runner, args.workers, extra),
        batch_size=args.batch,
        ccd_workers=args.ccd_workers,
    )
    if not summary.found:
        print(f"no exposure found under {args.archive}" + (f" for {args.nights}" if nights else ""))
        return EXIT_OK
    print(summary.text())
    return EXIT_FAILURE if summary.missing else EXIT_OK
