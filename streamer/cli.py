"""The ``skygrade`` command line.

Every subcommand is a pair of functions: ``_add_<name>(parser)`` declares its arguments (with
an example in its epilog) and ``_cmd_<name>(args) -> int`` runs it. Heavy modules are imported
inside the command that needs them, so ``skygrade --help`` stays fast.

Exit codes: 0 success, 1 failure while running, 2 usage or configuration error. They, the
usage error and the options the command modules share are in :mod:`streamer.cli_common`.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import logging
import sys
from collections.abc import Callable
from pathlib import Path

from ops.config import Config, load_config, with_backend
from ops.config_schema import ConfigError
from streamer.cli_common import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_USAGE,
    UsageError,
    add_bundle_option,
    add_runner_options,
    bundle_from_args,
    not_beam_noise,
    parse_nights,
    parse_shape,
)

log = logging.getLogger("skygrade")

# --------------------------------------------------------------------------- helpers


def _setup_logging(args: argparse.Namespace, cfg: Config | None) -> None:
    level = cfg.logging.level if cfg is not None else "INFO"
    if args.verbose:
        level = "DEBUG"
    elif args.quiet:
        level = "WARNING"
    # apache_beam configures the root logger on import: force our format and level.
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        force=True,
    )
    # Beam logs every worker start and bundle at INFO, relays worker start-up warnings and
    # warns about Google Cloud clients we do not use: keep all of it for -v.
    if not args.verbose:
        logging.getLogger("apache_beam").setLevel("WARNING")
        logging.getLogger("apache_beam.runners.portability.local_job_service").setLevel("ERROR")
        for handler in logging.getLogger().handlers:
            handler.addFilter(not_beam_noise)


# --------------------------------------------------------------------------- simulate


def _add_simulate(p: argparse.ArgumentParser) -> None:
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="write an archive of labelled exposures here")
    where.add_argument(
        "--drop", type=Path, help="act as the telescope: write exposures into this drop directory"
    )
    p.add_argument(
        "--nights",
        default=None,
        help="archive mode: nights as YYYY-MM-DD, a range A..B or a comma list (default: tonight)",
    )
    p.add_argument(
        "--exposures",
        type=int,
        default=None,
        help="exposures per night (archive) or in total (drop mode; default: until interrupted)",
    )
    p.add_argument(
        "--geometry",
        choices=("full", "small"),
        default=None,
        help="CCD layout preset: full = 36 x 2048x4612, small = 4 x 512x1152",
    )
    p.add_argument("--n-ccd", type=int, default=None, help="override the number of CCDs")
    p.add_argument("--ccd-shape", default=None, help="override the CCD size, WIDTHxHEIGHT")
    p.add_argument("--seed", type=int, default=None, help="random seed (same seed, same bytes)")
    p.add_argument(
        "--cadence", type=float, default=None, help="drop mode: seconds between exposures"
    )
    p.add_argument(
        "--transfer",
        type=float,
        default=None,
        help="drop mode: seconds over which each file is written progressively",
    )


def _cmd_simulate(args: argparse.Namespace, cfg: Config) -> int:
    from streamer import telescope
    from streamer.progress import Progress

    tc = cfg.telescope
    shape = parse_shape(args.ccd_shape) if args.ccd_shape else tc.ccd_shape
    n_ccd = args.n_ccd if args.n_ccd is not None else tc.n_ccd
    if n_ccd is not None and n_ccd < 1:
        raise UsageError(f"--n-ccd: must be >= 1, got {n_ccd}")
    if args.exposures is not None and args.exposures < 1:
        raise UsageError(f"--exposures: must be >= 1, got {args.exposures}")
    geometry = telescope.resolve_geometry(args.geometry or tc.geometry, n_ccd, shape)
    seed = tc.seed if args.seed is None else args.seed
    mix = dict(tc.class_mix)

    if args.out is not None:
        nights = parse_nights(args.nights) if args.nights else [_tonight()]
        per_night = args.exposures or tc.exposures_per_night
        bar = Progress(len(nights) * per_night, "exposures")
        paths = telescope.simulate_archive(
            args.out,
            nights,
            per_night,
            geometry,
            seed,
            mix,
            progress=lambda done, total, path: bar.update(note=path.name),
        )
        bar.close()
        print(
            f"wrote {len(paths)} exposures ({geometry.n_ccd} CCDs of "
            f"{geometry.width}x{geometry.height}) for {len(nights)} night(s) under {args.out}/, "
            f"labels in {args.out / 'labels.csv'}"
        )
        return EXIT_OK

    if args.nights and len(parse_nights(args.nights)) != 1:
        raise UsageError("--nights: drop mode writes one night; give a single date")
    night = parse_nights(args.nights)[0] if args.nights else _tonight()
    cadence = tc.cadence_s if args.cadence is None else args.cadence
    transfer = tc.transfer_s if args.transfer is None else args.transfer
    if cadence <= 0 or transfer < 0:
        raise UsageError("--cadence must be > 0 and --transfer >= 0")
    log.info(
        "telescope: writing into %s every %.1f s (transfer %.1f s); Ctrl-C to stop",
        args.drop,
        cadence,
        transfer,
    )
    try:
        paths = telescope.run_telescope(
            args.drop,
            args.exposures,
            geometry,
            seed,
            mix,
            cadence,
            transfer,
            tc.transfer_chunks,
            night,
            progress=lambda done, total, path: log.info("exposure %d: %s", done, path),
        )
    except KeyboardInterrupt:
        print("telescope stopped")
        return EXIT_OK
    print(f"wrote {len(paths)} exposures into {args.drop}/")
    return EXIT_OK


def _tonight() -> str:
    """The current observing night at CFHT (HST = UTC-10, rolls over at local noon)."""
    now = dt.datetime.now(dt.UTC)
    return (now - dt.timedelta(hours=22)).date().isoformat()


# --------------------------------------------------------------------------- extract


def _add_extract(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, help="exposures (.fits, .fits.fz) or catalogs")
    p.add_argument("--out", type=Path, required=True, help="directory for <exposure>.parquet")
    p.add_argument(
        "--backend",
        choices=("sep", "sextractor", "catalog"),
        default=None,
        help="extraction backend (default: extract.backend of the config, sep)",
    )
    p.add_argument(
        "--ccd-workers",
        type=int,
        default=0,
        metavar="N",
        help="measure each exposure's CCDs in a pool of N processes started once for the run "
        "(cheaper than Beam worker processes for a few exposures; use with --workers 1); "
        "default 0: CCDs are spread by the Beam runner",
    )
    add_runner_options(p)


def _cmd_extract(args: argparse.Namespace, cfg: Config) -> int:
    import dataclasses

    from streamer.pipelines import pipeline_options, run_extract

    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    params = cfg.extract
    if args.backend:
        params = dataclasses.replace(params, backend=args.backend)
    if args.ccd_workers < 0:
        raise UsageError(f"--ccd-workers must be >= 0, got {args.ccd_workers}")
    options = pipeline_options(args.runner, args.workers)
    summary = run_extract(
        [str(f) for f in args.files],
        args.out,
        params.backend,
        params,
        options,
        ccd_workers=args.ccd_workers,
    )
    for q in summary["quarantined"]:
        print(
            f"quarantined {q.exposure_id}"
            + ("" if q.ccd is None else f" CCD {q.ccd}")
            + f": {q.reason}: {q.detail}"
        )
    print(
        f"features of {len(summary['written'])} exposure(s) in {args.out}/ "
        f"({len(summary['quarantined'])} quarantine record(s) in {args.out}/_quarantine/)"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- grade


def _add_grade(p: argparse.ArgumentParser) -> None:
    p.add_argument("files", nargs="+", type=Path, help="exposures (.fits, .fits.fz) or catalogs")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="grades dataset (exposures/ and ccds/ partitioned by night)",
    )
    p.add_argument(
        "--backend",
        choices=("sep", "sextractor", "catalog"),
        default=None,
        help="extraction backend (default: extract.backend of the config)",
    )
    p.add_argument(
        "--night",
        default=None,
        help="YYYY-MM-DD night of catalogs that carry no DATE-OBS and sit in no YYYY-MM-DD "
        "folder (default: extract.catalog_night, else 'unknown')",
    )
    add_bundle_option(p)
    add_runner_options(p)


def format_grade_table(rows: list[dict]) -> str:
    """A fixed-width table of exposure rows for the terminal."""
    lines = [f"{'exposure':>10}  {'night':10}  {'grade':8}  {'conf':>5}  {'CCDs':>5}  reason"]
    for r in rows:
        ccds = f"{r['n_ccd_graded']}/{r['n_ccd']}"
        grade = r["grade"] or "-"
        reason = (r["reason"] or "")[:70]
        lines.append(
            f"{r['exposure_id']:>10}  {r['night']:10}  {grade:8}  {r['confidence']:5.2f}  "
            f"{ccds:>5}  {reason}"
        )
    return "\n".join(lines)


def _cmd_grade(args: argparse.Namespace, cfg: Config) -> int:
    from streamer.pipelines import pipeline_options, run_grade

    missing = [str(f) for f in args.files if not f.exists()]
    if missing:
        raise UsageError(f"no such file: {', '.join(missing)}")
    bundle = bundle_from_args(args)
    cfg = with_backend(cfg, args.backend)
    if args.night is not None:
        try:
            extract = dataclasses.replace(cfg.extract, catalog_night=args.night)
        except ConfigError as exc:
            raise UsageError(f"--night: {exc}") from None
        cfg = dataclasses.replace(cfg, extract=extract)
    rows = run_grade(
        [str(f) for f in args.files],
        args.out,
        bundle,
        cfg,
        pipeline_options(args.runner, args.workers),
    )
    print(format_grade_table(rows))
    graded = sum(r["status"] == "graded" for r in rows)
    print(
        f"{graded} graded, {len(rows) - graded} quarantined; rows in {args.out}/exposures/ "
        f"and {args.out}/ccds/ (model {rows[0]['model_version'] if rows else '-'})"
    )
    return EXIT_OK


# --------------------------------------------------------------------------- watch


def _add_watch(p: argparse.ArgumentParser) -> None:
    p.add_argument("--drop", type=Path, required=True, help="the data-drop directory to watch")
    p.add_argument(
        "--out",
        type=Path,
        required=True,
        help="grades dataset + ledger (exposures/, ccds/, ledger.sqlite)",
    )
    add_bundle_option(p)


def _cmd_watch(args: argparse.Namespace, cfg: Config) -> int:
    from streamer.daemon import Daemon

    if not args.drop.is_dir():
        raise UsageError(f"--drop {args.drop} is not a directory")
    try:
        Daemon(args.drop, args.out, bundle_from_args(args), cfg).run_forever()
    except ConfigError as exc:  # a setting refused at start (metrics.port in use): name the file
        if exc.source is None and args.config is not None:
            raise ConfigError(exc.problems, str(args.config)) from exc
        raise
    return EXIT_OK


# --------------------------------------------------------------------------- train


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("archive", type=Path, help="labelled archive (exposures + labels.csv)")
    p.add_argument("--out", type=Path, required=True, help="model bundle directory to write")
    p.add_argument(
        "--work",
        type=Path,
        default=None,
        help="feature cache and shards (default: <out>.work; reused by a retrain)",
    )
    p.add_argument(
        "--catalogs",
        type=Path,
        default=None,
        help="a labelled archive of SExtractor catalogs of some of the same exposures (e.g. "
        "made by python -m streamer.archive_catalogs): trained on beside the pixels, so that "
        "catalog mode knows SExtractor's measurements; each catalog follows its exposure's "
        "side of the split",
    )
    add_runner_options(p)


def _cmd_train(args: argparse.Namespace, cfg: Config) -> int:
    from streamer.pipelines import pipeline_options, run_train

    if not args.archive.is_dir():
        raise UsageError(f"archive {args.archive} is not a directory")
    if args.catalogs is not None and not args.catalogs.is_dir():
        raise UsageError(f"--catalogs {args.catalogs} is not a directory")
    summary = run_train(
        args.archive,
        args.out,
        cfg,
        pipeline_options(args.runner, args.workers),
        args.work,
        progress=print,
        catalogs=args.catalogs,
    )
    print(f"model bundle: {summary['bundle']}")
    return EXIT_OK


# --------------------------------------------------------------------------- config


def _add_config(p: argparse.ArgumentParser) -> None:
    sub = p.add_subparsers(dest="config_cmd", required=True, metavar="{show,check}")
    show = sub.add_parser(
        "show", help="print the effective configuration with every field documented"
    )
    show.add_argument(
        "file", nargs="?", type=Path, help="config file (default: --config or built-in defaults)"
    )
    check = sub.add_parser("check", help="validate a configuration file")
    check.add_argument("file", type=Path, help="the YAML file to validate")


def _cmd_config(args: argparse.Namespace, cfg: Config) -> int:
    from ops.config import config_digest
    from ops.config_yaml import render_yaml

    if args.file is not None:
        cfg = load_config(args.file)
    if args.config_cmd == "show":
        sys.stdout.write(render_yaml(cfg))
    else:
        print(f"{args.file}: ok (config digest {config_digest(cfg)})")
    return EXIT_OK


# --------------------------------------------------------------------------- main

Command = tuple[str, str, Callable[[argparse.ArgumentParser], None], Callable[..., int]]


def _module_command(module: str) -> tuple[Callable, Callable]:
    """(add_arguments, command) of a command that lives in its own module, imported only
    when that command is used (Beam and torch take seconds to import)."""
    import importlib

    def add(p: argparse.ArgumentParser) -> None:
        mod = importlib.import_module(module)
        mod.add_arguments(p)
        p.epilog = p.epilog or getattr(mod, "EXAMPLES", None)

    def run(args: argparse.Namespace, cfg: Config) -> int:
        return importlib.import_module(module).command(args, cfg)

    return add, run


COMMANDS: list[Command] = [
    (
        "simulate",
        "render labelled MegaCam-like exposures: an archive, or a live telescope at a drop dir",
        _add_simulate,
        _cmd_simulate,
    ),
    (
        "extract",
        "measure the sources of exposures into parquet feature tables (one per exposure)",
        _add_extract,
        _cmd_extract,
    ),
    (
        "grade",
        "grade exposures once with a model bundle and print a table (rows go to parquet)",
        _add_grade,
        _cmd_grade,
    ),
    (
        "watch",
        "the daemon: grade every exposure that lands in the drop directory, serve metrics",
        _add_watch,
        _cmd_watch,
    ),
    (
        "train",
        "fit the SOM and the CNN on a labelled archive and write a versioned model bundle",
        _add_train,
        _cmd_train,
    ),
    (
        "evaluate",
        "score a model bundle on a labelled archive (held-out split or independent archive) "
        "beside a threshold baseline; writes a markdown + JSON + PNG report",
        *_module_command("streamer.evaluate"),
    ),
    (
        "backfill",
        "grade an archive of exposures as a Beam batch job (idempotent, resumable)",
        *_module_command("streamer.backfill"),
    ),
    (
        "report",
        "summarise a night of grades: grade counts, usable fraction, timeline (text and PNG)",
        *_module_command("streamer.report"),
    ),
    (
        "inspect",
        "draw an exposure's representative images and SOM hit counts (per CCD) into a PNG",
        *_module_command("streamer.inspect"),
    ),
    ("config", "show or check the configuration", _add_config, _cmd_config),
]

EXAMPLES = {
    "simulate": (
        "examples:\n"
        "  skygrade simulate --out archive --nights 2026-11-01..2026-11-03 --exposures 20\n"
        "  skygrade simulate --out small --geometry small --exposures 5 --seed 7\n"
        "  skygrade simulate --drop /data/drop --cadence 60 --transfer 10"
    ),
    "extract": (
        "examples:\n"
        "  skygrade extract archive/2026-11-24/*.fits --out features\n"
        "  skygrade extract night/*.fits.fz --out features --backend sextractor --workers 2\n"
        "  skygrade extract exposure.fits --out features --ccd-workers 2\n"
        "  skygrade extract catalogs/*.ldac --out features --backend catalog"
    ),
    "grade": (
        "examples:\n"
        "  skygrade grade /data/drop/2026-11-24/2817001o.fits --out grades\n"
        "  skygrade grade archive/*/*.fits --out grades --bundle bundles/2026-11 --workers 2"
    ),
    "watch": (
        "examples:\n"
        "  skygrade watch --drop /data/drop --out /data/grades\n"
        "  skygrade --config /etc/skygrade/skygrade.yaml watch --drop /data/drop --out /data/grades"
    ),
    "train": (
        "examples:\n"
        "  skygrade simulate --out archive --nights 2026-10-01..2026-10-08 --exposures 30\n"
        "  skygrade train archive --out bundles/2026-11 --workers 2"
    ),
    "evaluate": (
        "examples:\n"
        "  skygrade evaluate build/model-archive --out report          # the shipped bundle\n"
        "  skygrade evaluate other-nights/ --bundle bundles/mine --out report"
    ),
    "config": (
        "examples:\n  skygrade config show > skygrade.yaml\n  skygrade config check skygrade.yaml"
    ),
}


def _command_name(argv: list[str]) -> str:
    """The subcommand in ``argv`` (the first word after the global options), or ""."""
    words = iter(argv)
    for word in words:
        if word == "--config":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return ""


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The top-level parser with every implemented subcommand.

    Only the subcommand named in ``argv`` gets its arguments (all of them when ``argv`` is
    None), so ``skygrade --help`` and light commands do not import Beam and torch.
    """
    chosen = None if argv is None else _command_name(argv)
    parser = argparse.ArgumentParser(
        prog="skygrade",
        description="Grade the image quality of CFHT MegaCam exposures (SOM + CNN).",
        epilog="Run 'skygrade COMMAND --help' for a command's options and an example.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML configuration file")
    verbosity = parser.add_mutually_exclusive_group()
    verbosity.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    verbosity.add_argument("-q", "--quiet", action="store_true", help="warnings and errors only")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, help_text, add, _ in COMMANDS:
        p = sub.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=EXAMPLES.get(name),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        if chosen is None or name == chosen:
            add(p)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``skygrade`` console script; returns the exit code."""
    argv = sys.argv[1:] if argv is None else argv
    logging.getLogger().addFilter(not_beam_noise)
    parser = build_parser(argv)
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config)
    except ConfigError as exc:
        _setup_logging(args, None)
        print(f"skygrade: configuration error:\n{exc}", file=sys.stderr)
        return EXIT_USAGE
    _setup_logging(args, cfg)
    run = {name: cmd for name, _, _, cmd in COMMANDS}[args.command]
    try:
        return run(args, cfg)
    except (UsageError, ConfigError) as exc:
        print(f"skygrade {args.command}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_FAILURE
    except Exception as exc:  # the command failed: say what, keep the traceback for -v
        bundle = sys.modules.get("models.bundle")  # a bad model bundle is a usage error
        if bundle is not None and isinstance(exc, bundle.BundleError):
            print(f"skygrade {args.command}: {exc}", file=sys.stderr)
            return EXIT_USAGE
        log.debug("traceback", exc_info=True)
        print(f"skygrade {args.command}: error: {exc}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
