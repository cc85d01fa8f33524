"""Benchmark: backfill throughput (exposures per minute), 1 vs 2 local workers vs Dask.

Run ``.venv/bin/python benchmarks/backfill.py`` (``--help`` for options; ``--preset small``
is a smoke run of a minute or two). It renders ``--exposures`` simulated exposures
(:mod:`skygrade.streamer.sky_fits`; ``--preset full``: 36 CCDs of 2048 x 4612, ~680 MB each, ~35 s
each to render, two at a time) into one night of an archive in a temporary directory under
/tmp, backfills that archive once per configuration into a fresh grades directory, prints
the table and deletes everything (unless ``--keep``).

What is measured
----------------
Each configuration is ``skygrade.streamer.backfill.run_backfill(archive, out, bundle, Config(),
options=...)``, the whole archive in one Beam job (``--batch``, default all exposures),
timed from the call to its return (discovery, plan, job, reading back the rows):

local x1
    ``pipeline_options("FnApiRunner", 1)``: FnApiRunner in process (``in_memory``).
local x2
    ``pipeline_options("FnApiRunner", 2)``: Beam's ``multi_processing`` mode, two worker
    subprocesses started (and stopped) by the job, CCDs spread by the Reshuffle.
pool x2
    ``pipeline_options("FnApiRunner", 1)`` with ``ccd_workers=2`` (``skygrade backfill
    --ccd-workers 2``): the pipeline in process, each exposure's CCDs in a pool of two
    processes started once for the backfill (inside the timed region), one shuffle-free stage
    per exposure: the daemon's way.
dask x2
    ``pipeline_options("dask", 2, ["--dask_client_address=..."])``: the fixed DaskRunner of
    ``skygrade.streamer.dask_runner`` on a ``LocalCluster`` of two single-threaded worker processes.
    The cluster is started and its workers import the grading modules before the timed
    region (a standing cluster, as on a real deployment); that start-up is listed apart
    (``start s``). Parallelism is per exposure (one exposure per Dask partition), so use an
    even ``--exposures``. Beam's worker subprocesses of ``local x2``, by contrast, start and
    import inside every job: that is part of that mode's cost.

Every configuration runs in a fresh child process (``backfill.py --child ...``) that imports
skygrade, Beam, torch and sep before the timed region; its process tree (Beam or Dask workers
included) is sampled every 50 ms for the peak RSS (``extract.TreeRssSampler``). Runs are
interleaved (repeat 1 of each configuration, then repeat 2...); the best wall time is kept.
The rows of every run are compared with the first run's (grade per exposure): a mismatch is
printed and fails the benchmark.

Targets (ratios of exposures per minute measured side by side; PASS/FAIL on this run only,
exit status 0 unless ``--strict``): ``local x2 >= 1.7x local x1`` and ``dask x2 within 15% of
local x2`` (the same two cores). The load average is printed before every run and a warning
when it passed half the core count: then wall times and their ratios are unreliable.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from extract import add_output_args, cleanup, finish, machine_info, run_child

NIGHT = "2026-11-24"
RESULT_PREFIX = "BACKFILL-RESULT "
CHILD_TIMEOUT_S = 3600
CONFIGS = {
    "local-1": ("local", 1),
    "local-2": ("local", 2),
    "pool-2": ("pool", 2),
    "dask-2": ("dask", 2),
}
LABELS = {"local-1": "local x1", "local-2": "local x2", "pool-2": "pool x2", "dask-2": "dask x2"}

TARGET_SPEEDUP = 1.7
TARGET_DASK_VS_LOCAL = 0.85


# --------------------------------------------------------------------------- child


def child_main(spec: dict) -> None:
    """One timed ``run_backfill`` of the archive; prints one result line."""
    # What a long-running backfill driver has imported before it starts.
    import apache_beam  # noqa: F401

    import skygrade.transforms.grading  # noqa: F401
    from skygrade.models.bundle import DEFAULT_BUNDLE
    from skygrade.ops.config import Config
    from skygrade.streamer.backfill import run_backfill
    from skygrade.streamer.pipelines import pipeline_options

    bundle = spec["bundle"] or DEFAULT_BUNDLE
    runner, workers = spec["runner"], spec["workers"]
    result = {"start_s": 0.0}
    with contextlib.ExitStack() as stack:
        if runner == "dask":
            from skygrade.streamer.dask_runner import local_cluster

            t = time.monotonic()
            cluster = stack.enter_context(local_cluster(workers))
            warm_workers(cluster.scheduler_address)
            result["start_s"] = time.monotonic() - t
            flags = [f"--dask_client_address={cluster.scheduler_address}"]
            options = pipeline_options("dask", workers, flags)
        elif runner == "pool":
            options = pipeline_options("FnApiRunner", 1)
        else:
            options = pipeline_options("FnApiRunner", workers)
        t0 = time.monotonic()
        summary = run_backfill(
            spec["archive"],
            spec["out_dir"],
            bundle,
            Config(),
            options=options,
            batch_size=spec["batch"],
            stream=open(os.devnull, "w"),  # noqa: SIM115 - closed with the process
            ccd_workers=workers if runner == "pool" else 0,
        )
        t1 = time.monotonic()
    result.update(
        t0=t0,
        t1=t1,
        rows=len(summary.rows),
        missing=summary.missing,
        grades={r["exposure_id"]: [r["status"], r["grade"]] for r in summary.rows},
        sources=sum(r["n_sources"] or 0 for r in summary.rows),
    )
    print(RESULT_PREFIX + json.dumps(result), flush=True)


def _import_grading() -> None:
    import apache_beam  # noqa: F401
    import torch  # noqa: F401

    import skygrade.transforms.grading  # noqa: F401


def warm_workers(address: str) -> None:
    """Import what grading imports on every Dask worker, as on a cluster that has run jobs
    before (the driver has imported it too, outside the timed region)."""
    from dask.distributed import Client

    with Client(address) as client:
        client.run(_import_grading)


# --------------------------------------------------------------------------- parent


def measure(spec: dict, tmp: Path) -> dict:
    """Run one configuration in a child process, sampling its tree; the merged record."""
    result, shared = run_child(
        __file__, spec, tmp, f"backfill {spec['config']}", RESULT_PREFIX, CHILD_TIMEOUT_S
    )
    wall = result["t1"] - result["t0"]
    record = {
        "config": spec["config"],
        "wall_s": wall,
        "per_min": result["rows"] / wall * 60 if wall > 0 else 0.0,
        **{k: result[k] for k in ("start_s", "rows", "missing", "grades", "sources")},
        **shared,
    }
    return record


def _render(plan, geometry, path: str) -> str:
    from skygrade.streamer.sky_fits import write_exposure

    return str(write_exposure(plan, geometry, path))


def render_archive(archive: Path, args) -> float:
    """``--exposures`` exposures of ``--preset`` into ``archive/NIGHT/``, two at a time."""
    from skygrade.streamer.sky_plan import GEOMETRIES, plan_night

    geometry = GEOMETRIES[args.preset]
    plans = plan_night(NIGHT, args.exposures, args.seed, {args.label: 1.0})
    night = archive / NIGHT
    night.mkdir(parents=True)
    t0 = time.monotonic()
    with ProcessPoolExecutor(2) as pool:
        paths = [str(night / plan.filename) for plan in plans]
        list(pool.map(_render, plans, [geometry] * len(plans), paths))
    return time.monotonic() - t0


def summarize(records: list[dict]) -> dict[str, dict]:
    """Best run (shortest wall) per configuration, with every run's wall listed."""
    rows = {}
    for name in CONFIGS:
        runs = [r for r in records if r["config"] == name]
        if runs:
            best = dict(min(runs, key=lambda r: r["wall_s"]))
            best["walls"] = [r["wall_s"] for r in runs]
            rows[name] = best
    return rows


def _throughput_goal(target: str, row: dict, base: dict, minimum: float) -> dict:
    """A target line: ``row``'s exposures per minute over ``base``'s, at least ``minimum``."""
    ratio = row["per_min"] / base["per_min"]
    value = f"{ratio:.2f}x ({row['per_min']:.2f} vs {base['per_min']:.2f} /min)"
    return {"target": target, "value": value, "ok": ratio >= minimum}


def targets(rows: dict[str, dict]) -> list[dict]:
    goals = []
    one, two, dask = rows.get("local-1"), rows.get("local-2"), rows.get("dask-2")
    pool = rows.get("pool-2")
    if one and two:
        name = f"local x2 >= {TARGET_SPEEDUP}x local x1"
        goals.append(_throughput_goal(name, two, one, TARGET_SPEEDUP))
    if one and pool:
        name = f"pool x2 (--ccd-workers 2) >= {TARGET_SPEEDUP}x local x1"
        goals.append(_throughput_goal(name, pool, one, TARGET_SPEEDUP))
    if two and dask:
        name = f"dask x2 within {100 * (1 - TARGET_DASK_VS_LOCAL):.0f}% of local x2"
        goals.append(_throughput_goal(name, dask, two, TARGET_DASK_VS_LOCAL))
    return goals


def check_rows(records: list[dict], n: int) -> list[str]:
    """Every run wrote ``n`` rows, none missing, with the first run's grades."""
    problems = []
    first = records[0]["grades"]
    for r in records:
        if r["rows"] != n or r["missing"]:
            problems.append(f"{r['config']}: {r['rows']} rows, missing {r['missing']}")
        elif r["grades"] != first:
            diff = sorted(k for k in first if r["grades"].get(k) != first[k])
            problems.append(f"{r['config']}: grades differ from {records[0]['config']}: {diff}")
    return problems


def print_report(info: dict, args, render_s: float, size_mb: float, rows: dict, goals) -> None:
    load = " ".join(f"{x:.2f}" for x in info["loadavg_start"])
    print()
    print(
        f"machine: {info['cpus_usable']}/{info['cpu_count']} cores usable, "
        f"{info.get('cpu_model', '?')}, {info.get('mem_total_gb', 0):.1f} GiB; python "
        f"{info['python']}, sep {info['sep']}, apache-beam {info['apache-beam']}"
    )
    print(f"load average before start (1/5/15 min): {load}")
    print(
        f"archive: {args.exposures} x {args.preset} exposures ({size_mb:.0f} MB each), label "
        f"{args.label}, seed {args.seed}, rendered in {render_s:.0f} s; batch {args.batch}; "
        f"best of {args.repeats} run(s)"
    )
    print()
    base = rows.get("local-1")
    header = (
        f"{'':<9} {'wall s':>7}  {'runs':<18} {'exp/min':>8} {'x local x1':>10} "
        f"{'start s':>7} {'peak MB':>8} {'sources':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r in rows.items():
        runs = "(" + ", ".join(f"{w:.1f}" for w in r["walls"]) + ")"
        ratio = f"{r['per_min'] / base['per_min']:.2f}x" if base else "n/a"
        start = f"{r['start_s']:.1f}" if name.startswith("dask") else "-"
        print(
            f"{LABELS[name]:<9} {r['wall_s']:>7.1f}  {runs:<18} {r['per_min']:>8.2f} "
            f"{ratio:>10} {start:>7} {r['peak_mb']:>8.0f} {r['sources']:>8}"
        )
    print()
    for g in goals:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[g["ok"]]
        print(f"{verdict}  {g['target']}: {g['value']}")
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")


def parse_args(argv=None) -> argparse.Namespace:
    from skygrade.streamer.sky_plan import GEOMETRIES

    ap = argparse.ArgumentParser(
        description="Backfill benchmark: exposures per minute with 1 and 2 local workers "
        "(FnApiRunner) and on Dask with 2 workers, side by side.",
        epilog="A full-size run (default, 4 exposures, ~2.7 GB in /tmp) takes ~10 minutes on "
        "2 quiet cores; '--preset small' is a smoke run.",
    )
    ap.add_argument("--exposures", type=int, default=4, help="exposures (default 4; even)")
    ap.add_argument(
        "--preset", choices=sorted(GEOMETRIES), default="full", help="geometry (default full)"
    )
    ap.add_argument(
        "--configs",
        default=",".join(CONFIGS),
        help=f"comma-separated configurations (default {','.join(CONFIGS)})",
    )
    ap.add_argument("--repeats", type=int, default=1, help="runs per configuration (default 1)")
    ap.add_argument("--batch", type=int, default=None, help="exposures per Beam job (all)")
    ap.add_argument("--bundle", default=None, help="model bundle (default: the shipped one)")
    ap.add_argument("--label", default="GOOD", help="class of the simulated exposures (GOOD)")
    ap.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    add_output_args(ap)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    for name in ("exposures", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be >= 1, got {getattr(args, name)}")
    args.batch = args.batch or args.exposures
    args.configs = [c.strip() for c in args.configs.split(",") if c.strip()]
    unknown = [c for c in args.configs if c not in CONFIGS]
    if unknown or not args.configs:
        ap.error(f"--configs: unknown {unknown}; valid: {', '.join(CONFIGS)}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0

    started = time.monotonic()
    info = machine_info()
    print(f"load average before start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    tmp = Path(tempfile.mkdtemp(prefix="skygrade-bench-backfill-", dir="/tmp"))
    try:
        (tmp / "scratch").mkdir()
        archive = tmp / "archive"
        print(f"rendering {args.exposures} {args.preset} exposures into {archive} ...", flush=True)
        render_s = render_archive(archive, args)
        files = sorted(archive.rglob("*.fits"))
        size_mb = sum(f.stat().st_size for f in files) / len(files) / 1e6
        print(f"rendered {len(files)} exposures ({size_mb:.0f} MB each) in {render_s:.0f} s")

        records = []
        for rep in range(args.repeats):
            for name in args.configs:
                runner, workers = CONFIGS[name]
                out_dir = tmp / f"grades-{name}-{rep}"
                spec = {
                    "config": name,
                    "runner": runner,
                    "workers": workers,
                    "archive": str(archive),
                    "out_dir": str(out_dir),
                    "batch": args.batch,
                    "bundle": args.bundle,
                }
                r = measure(spec, tmp)
                records.append(r)
                start = f", cluster start {r['start_s']:.1f} s" if runner == "dask" else ""
                print(
                    f"  run {rep + 1}/{args.repeats} {LABELS[name]:<9}: {r['wall_s']:7.1f} s, "
                    f"{r['per_min']:.2f} exposures/min{start}, peak {r['peak_mb']:.0f} MB "
                    f"({r['max_processes']} processes), load {r['load_before']:.2f}",
                    flush=True,
                )
                shutil.rmtree(out_dir, ignore_errors=True)

        problems = check_rows(records, args.exposures)
        rows = summarize(records)
        goals = targets(rows)
        print_report(info, args, render_s, size_mb, rows, goals)
        max_load = max(r["load_before"] for r in records)
        if max_load > 0.5 * info["cpus_usable"]:
            print(
                f"WARNING: the 1-min load average reached {max_load:.2f} before a run on "
                f"{info['cpus_usable']} cores: other jobs shared the machine; wall times and "
                "their ratios are unreliable. Re-run on a quiet machine."
            )
        for p in problems:
            print(f"ERROR  {p}")
        total = time.monotonic() - started
        print(f"benchmark runtime: {total:.0f} s")
        code = finish(args, info, render_s, {"runs": records, "rows": rows}, goals, total)
        return 1 if problems else code
    finally:
        cleanup(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
