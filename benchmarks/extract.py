"""Benchmark: source extraction of one simulated MegaCam exposure, pipeline vs. bare floor.

Run ``.venv/bin/python benchmarks/extract.py`` (``--help`` for options; ``--geometry small`` is a
quick smoke run). It renders one exposure with :mod:`skygrade.streamer.sky_fits` (full size: 36 CCDs
of 2048 x 4612, ~680 MB, ~35 s) into a temporary directory under /tmp, measures, prints a table and
deletes the directory (unless ``--keep``).

What is measured
----------------
bare floor
    A plain function of this script, no skygrade pipeline code: per CCD ``read_ccd`` (reading is
    part of any real run), ``sep.Background(bw=64, bh=64, fw=3, fh=3)``, ``back()``, ``rms()``,
    subtract, ``sep.extract(data, 1.5, err=rms, minarea=5, filter_type="conv")`` and
    one ``sep.flux_radius(..., subpix=1)`` call (plain sep; the sep backend measures more per
    source for SExtractor's FLUX_RADIUS: a Kron radius, FLUX_AUTO and a 3x3-sampled growth
    curve, and that work is part of what the ratio shows), over all CCDs with a
    ``multiprocessing.Pool(workers)`` (``imap_unordered``, one CCD per task). Pool start-up and
    shut-down are inside the timed region, as Beam's worker start-up is for the pipeline rows.
sep / sextractor
    The real pipeline: ``skygrade.streamer.pipelines.run_extract([path], out_dir, backend,
    ExtractConfig(), pipeline_options("FnApiRunner", workers))``: open + integrity walk, Reshuffle
    of the CCD tasks, extraction, feature table (stellarity included), GroupByKey and the parquet
    write. ``workers=1`` runs in process (``in_memory``); ``workers>1`` in Beam's
    ``multi_processing`` mode (worker subprocesses started and stopped by every run).
sep pool / sextractor pool (``workers > 1`` only)
    The same ``run_extract`` in process (``in_memory``) with ``ccd_workers=workers``: each
    exposure's CCDs go to a pool of that many spawned processes that lives as long as the
    process (what the daemon does; ``skygrade extract --ccd-workers N``). The pool is started
    inside the timed region, as Beam's worker subprocesses are for the rows above.

Every measurement runs in a fresh child process (``python extract.py --child ...``) so that one
measurement's heap does not inflate the next one's RSS. The child imports skygrade, Beam, sep and
pyarrow before the timed region, as a long-running daemon would have; Beam's worker subprocesses
(``workers > 1``) start and import afresh inside every run, which is part of their cost.
Runs are interleaved (repeat 1 of every configuration, then repeat 2, ...) so that slow drifts
of a shared machine spread over all rows.

How to read the table
---------------------
``wall s``
    Best of ``--repeats`` runs (default 2: a full-size pipeline run costs 10-40 s); every run is
    listed in brackets, so a wide spread flags a noisy machine.
``x bare``
    Wall time over the bare floor's with the same number of processes: what the pipeline costs
    on top of the unavoidable sep work (read + extract).
``cpu s`` / ``cpu x``
    CPU seconds (user + system) of the whole tree over the run (``getrusage`` of the child and
    of every descendant it reaped; best of the runs), and its ratio to the bare floor's. On a
    machine shared with other jobs, wall time stretches with the load but CPU time barely does:
    when the two ratios disagree, trust ``cpu x`` for "how much more work" and ``x bare`` for
    "how much later the answer comes" (start-up waits and idle workers cost wall, not CPU).
``peak MB``
    Peak of the RSS summed over the whole process tree of the measurement (the child, Beam worker
    subprocesses, pool workers, source-extractor children), sampled every ~50 ms by a thread of
    this (otherwise idle) parent process from ``/proc/<pid>/status`` ``VmRSS``; max over the
    run of the per-sample sum. Summed RSS counts pages shared between processes (shared
    libraries, copy-on-write pages of forked pool workers) once per process: an upper bound.
    ``base MB`` is the tree's RSS just before the timed region (the child's imports).
``sources``
    Sources found (the parquet row count for the pipeline): a check that all rows did the same
    work. sextractor finds a handful more or fewer than sep.

The target lines apply PASS/FAIL to the best wall times of this run only; they are ratios
measured side by side, so they survive slow drifts that absolute seconds do not. They do not
survive other jobs competing for the cores: the load average before the start, before every run
and at the end is printed, and a warning is printed when it passed half the core count (then
trust ``cpu x`` and re-run when the machine is quiet). The exit status is 0 even when a target
fails (``--strict`` makes it 1); a run that errors is always fatal.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from importlib import metadata
from pathlib import Path

BACK_SIZE, BACK_FILTER = 64, 3
THRESH, MINAREA = 1.5, 5
PIXSTACK, SUB_OBJECT_LIMIT = 5_000_000, 4096
SAMPLE_INTERVAL_S = 0.05
CHILD_TIMEOUT_S = 1800
RESULT_PREFIX = "BENCH-RESULT "

TARGET_SEP_VS_BARE = 1.1
TARGET_PEAK_MB = 1500.0
TARGET_SEP_VS_SEXTRACTOR = 1.5


# --------------------------------------------------------------------------- process-tree RSS


def _children(pid: int) -> list[int]:
    """Direct children of ``pid`` (all its threads' ``children`` files), or [] once it is gone."""
    out: list[int] = []
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children") as fh:
                out.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return out


def _children_by_ppid(pid: int) -> list[int]:
    """Fallback for kernels without ``/proc/<pid>/task/<tid>/children``: scan every process."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                stat = fh.read()
        except OSError:
            continue
        # Field 4 (ppid) follows the ")" that closes the command name.
        if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
            out.append(int(entry))
    return out


_HAS_CHILDREN_FILE = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def _rss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/status") as fh:
            for line in fh:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0  # gone, or a zombie (no VmRSS line)


def tree_pids(root: int) -> list[int]:
    """``root`` and all its descendants (pids that vanish while walking are still listed)."""
    children = _children if _HAS_CHILDREN_FILE else _children_by_ppid
    out, todo, seen = [], [root], set()
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        out.append(pid)
        todo.extend(children(pid))
    return out


def tree_rss_kb(root: int) -> tuple[int, int]:
    """(sum of VmRSS in kB, number of processes) over ``root`` and all its descendants."""
    pids = tree_pids(root)
    return sum(_rss_kb(pid) for pid in pids), len(pids)


class TreeRssSampler(threading.Thread):
    """Samples :func:`tree_rss_kb` of ``root`` every ``interval`` seconds until stopped.

    ``samples`` holds ``(time.monotonic(), kB, processes)``; CLOCK_MONOTONIC is system-wide, so the
    child's own timestamps select the samples of its timed region.
    """

    def __init__(self, root: int, interval: float = SAMPLE_INTERVAL_S) -> None:
        super().__init__(name=f"rss-sampler-{root}", daemon=True)
        self.root, self.interval = root, interval
        self.samples: list[tuple[float, int, int]] = []
        self.cpu_s = self.elapsed_s = 0.0
        self._stop_event = threading.Event()

    def run(self) -> None:
        start = time.monotonic()
        while not self._stop_event.is_set():
            kb, n = tree_rss_kb(self.root)
            self.samples.append((time.monotonic(), kb, n))
            self._stop_event.wait(self.interval)
        self.cpu_s = time.thread_time()
        self.elapsed_s = time.monotonic() - start

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def window(self, t0: float, t1: float) -> dict:
        """Peak and baseline of the samples in ``[t0, t1]``."""
        inside = [s for s in self.samples if t0 <= s[0] <= t1]
        before = [s for s in self.samples if s[0] < t0]
        if not inside:  # a run shorter than one interval: take the nearest samples
            inside = [min(self.samples, key=lambda s: abs(s[0] - t1))]
        peak = max(inside, key=lambda s: s[1])
        return {
            "peak_mb": peak[1] / 1024,
            "peak_processes": peak[2],
            "max_processes": max(s[2] for s in inside),
            "base_mb": (before[-1] if before else inside[0])[1] / 1024,
            "n_samples": len(inside),
        }


# --------------------------------------------------------------------------- child: bare floor


def _cpu_s() -> float:
    """CPU seconds (user + system) of this process and of every descendant it has waited for
    (pool workers, Beam worker subprocesses and their source-extractor children)."""
    import resource

    return sum(
        u.ru_utime + u.ru_stime
        for u in (
            resource.getrusage(resource.RUSAGE_SELF),
            resource.getrusage(resource.RUSAGE_CHILDREN),
        )
    )


def _bare_init() -> None:
    import sep

    sep.set_extract_pixstack(PIXSTACK)
    sep.set_sub_object_limit(SUB_OBJECT_LIMIT)


def _bare_ccd(task: tuple[str, int]) -> int:
    """Read one CCD and run the sep calls of the backend on it; returns the number of sources."""
    import numpy as np
    import sep

    from skygrade.transforms.ccd_pixels import read_ccd

    path, index = task
    data = read_ccd(path, index).data
    bkg = sep.Background(data, bw=BACK_SIZE, bh=BACK_SIZE, fw=BACK_FILTER, fh=BACK_FILTER)
    back = bkg.back()
    rms = bkg.rms()
    data -= back
    objects = sep.extract(data, THRESH, err=rms, minarea=MINAREA, filter_type="conv")
    if len(objects) == 0:
        return 0
    rmax = np.clip(6.0 * np.maximum(objects["a"], 1e-3), 3.0, 60.0)
    flux = objects["flux"]
    sep.flux_radius(
        data,
        objects["x"],
        objects["y"],
        rmax,
        0.5,
        normflux=np.where(flux > 0, flux, 1.0),
        subpix=1,
    )
    return len(objects)


def bare_floor(path: str, workers: int) -> dict:
    """The bare floor over all CCDs of ``path`` with ``Pool(workers)``; timed inside."""
    import multiprocessing

    from skygrade.transforms.exposure import read_meta

    c0, t0 = _cpu_s(), time.monotonic()
    n_ccd = read_meta(path).n_ccd
    with multiprocessing.get_context("fork").Pool(workers, initializer=_bare_init) as pool:
        counts = list(pool.imap_unordered(_bare_ccd, [(path, i) for i in range(n_ccd)], 1))
        pool.close()
        pool.join()
    t1 = time.monotonic()
    cpu = _cpu_s() - c0
    return {"t0": t0, "t1": t1, "cpu_s": cpu, "sources": sum(counts), "quarantined": 0}


# --------------------------------------------------------------------------- child: pipeline


def pipeline(path: str, out_dir: str, backend: str, workers: int, pool: bool = False) -> dict:
    """One ``run_extract`` of ``path`` with ``backend`` on FnApiRunner; timed inside. With
    ``pool`` the pipeline runs in process and the CCDs in a pool of ``workers`` processes."""
    import pyarrow.parquet as pq

    # What a long-running process has imported after its first exposure: the in-process
    # (workers=1) rows time the extraction, not the imports. Worker subprocesses
    # (workers>1) still import all of it in every run: that is part of their cost.
    import skygrade.transforms.extract
    import skygrade.transforms.sextractor
    import skygrade.transforms.sinks  # noqa: F401
    from skygrade.ops.config import ExtractConfig
    from skygrade.streamer.pipelines import pipeline_options, run_extract

    options = pipeline_options("FnApiRunner", 1 if pool else workers)
    c0, t0 = _cpu_s(), time.monotonic()
    summary = run_extract(
        [path], out_dir, backend, ExtractConfig(), options, ccd_workers=workers if pool else 0
    )
    if pool:  # stop the pool inside the timed region, as Beam's workers stop inside theirs
        from skygrade.streamer.ccd_pool import shutdown_pool

        shutdown_pool()
    t1 = time.monotonic()
    cpu = _cpu_s() - c0
    sources = sum(pq.read_metadata(p).num_rows for p in summary["written"])
    quarantined = len(summary["quarantined"])
    return {"t0": t0, "t1": t1, "cpu_s": cpu, "sources": sources, "quarantined": quarantined}


def child_main(spec: dict) -> None:
    """Entry of a measurement child: run one measurement, print its result as one JSON line."""
    if spec["mode"] == "bare":
        result = bare_floor(spec["path"], spec["workers"])
    else:
        backend, _, pool = spec["mode"].partition("-")
        result = pipeline(spec["path"], spec["out_dir"], backend, spec["workers"], bool(pool))
    print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


def run_child(
    script: str, spec: dict, tmp: Path, what: str, prefix: str = RESULT_PREFIX, timeout=None
) -> tuple[dict, dict]:
    """Run ``python script --child SPEC`` in its own process group, sampling the RSS of its
    tree; returns its result (the last ``prefix`` line of its stdout, JSON) and the record
    fields every benchmark shares: the load before, the sampler's own cost, and the RSS over
    the result's ``t0``..``t1`` window. ``what`` names the run in the error of a failed one."""
    env = dict(os.environ, TMPDIR=str(tmp / "scratch"), PYTHONUNBUFFERED="1")
    cmd = [sys.executable, os.path.abspath(script), "--child", json.dumps(spec)]
    load_before = os.getloadavg()[0]
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,  # its own process group: killed as a whole on failure
    )
    sampler = TreeRssSampler(proc.pid)
    sampler.start()
    try:
        out, err = proc.communicate(timeout=timeout or CHILD_TIMEOUT_S)
    except BaseException:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise
    finally:
        sampler.stop()
    lines = [x for x in out.splitlines() if x.startswith(prefix)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{what} failed (exit {proc.returncode}):\n{err[-4000:]}")
    result = json.loads(lines[-1][len(prefix) :])
    shared = {
        "load_before": load_before,
        "sampler_cpu_s": sampler.cpu_s,
        "sampler_elapsed_s": sampler.elapsed_s,
        **sampler.window(result["t0"], result["t1"]),
    }
    return result, shared


def measure(spec: dict, tmp: Path) -> dict:
    """Run one measurement child, sampling its process tree; returns the merged record."""
    what = f"measurement {spec['mode']} workers={spec['workers']}"
    result, shared = run_child(__file__, spec, tmp, what)
    return {
        "mode": spec["mode"],
        "workers": spec["workers"],
        "wall_s": result["t1"] - result["t0"],
        "cpu_s": result["cpu_s"],
        "sources": result["sources"],
        "quarantined": result["quarantined"],
        **shared,
    }


def render_exposure(tmp: Path, geometry: str, label: str, seed: int) -> tuple[Path, float]:
    from skygrade.streamer.sky_fits import write_exposure
    from skygrade.streamer.sky_plan import GEOMETRIES, plan_night

    t0 = time.monotonic()
    plan = plan_night("2026-11-24", 1, seed, {label: 1.0})[0]
    path = write_exposure(plan, GEOMETRIES[geometry], tmp / plan.filename)
    return path, time.monotonic() - t0


def machine_info() -> dict:
    info = {
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
        "loadavg_start": os.getloadavg(),
        "python": platform.python_version(),
        "kernel": platform.release(),
    }
    try:
        with open("/proc/cpuinfo") as fh:
            info["cpu_model"] = next(
                (x.split(":", 1)[1].strip() for x in fh if x.startswith("model name")), "?"
            )
        with open("/proc/meminfo") as fh:
            info["mem_total_gb"] = int(fh.readline().split()[1]) / 2**20
    except OSError:
        pass
    for package in ("sep", "apache-beam", "numpy"):
        try:
            info[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            info[package] = None
    try:
        out = subprocess.run(
            ["source-extractor", "-v"], capture_output=True, text=True, timeout=10
        ).stdout
        info["source-extractor"] = out.strip() or None
    except (OSError, subprocess.SubprocessError):
        info["source-extractor"] = None
    return info


LABELS = {
    "bare": "bare floor",
    "sep": "sep",
    "sextractor": "sextractor",
    "sep-pool": "sep pool",
    "sextractor-pool": "sextr pool",
}


def summarize(records: list[dict]) -> list[dict]:
    """One row per (mode, workers): best wall time, max peak RSS, ratio to the bare floor."""
    rows: dict[tuple[str, int], dict] = {}
    for r in records:
        row = rows.setdefault(
            (r["mode"], r["workers"]),
            {
                "mode": r["mode"],
                "workers": r["workers"],
                "walls": [],
                "cpus": [],
                "peaks": [],
                "bases": [],
            },
        )
        row["walls"].append(r["wall_s"])
        row["cpus"].append(r["cpu_s"])
        row["peaks"].append(r["peak_mb"])
        row["bases"].append(r["base_mb"])
        row["sources"] = r["sources"]
        row["quarantined"] = r["quarantined"]
    for row in rows.values():
        row["wall_s"] = min(row["walls"])
        row["cpu_s"] = min(row["cpus"])
        row["peak_mb"] = max(row["peaks"])
        row["base_mb"] = min(row["bases"])
        bare = rows.get(("bare", row["workers"]))
        row["x_bare"] = row["wall_s"] / bare["wall_s"] if bare else None
        row["cpu_x_bare"] = row["cpu_s"] / bare["cpu_s"] if bare else None
    order = {mode: i for i, mode in enumerate(LABELS)}
    return sorted(rows.values(), key=lambda r: (order[r["mode"]], r["workers"]))


def targets(rows: list[dict], workers: list[int]) -> list[dict]:
    by = {(r["mode"], r["workers"]): r for r in rows}
    out = []

    bare2 = by.get(("bare", 2))
    sep2 = [r for r in (by.get(("sep", 2)), by.get(("sep-pool", 2))) if r]
    name = f"sep backend <= {TARGET_SEP_VS_BARE}x bare floor (2 processes, best mode)"
    if sep2 and bare2:
        best = min(sep2, key=lambda r: r["wall_s"])
        ratio = best["wall_s"] / bare2["wall_s"]
        value = f"{ratio:.2f}x ({LABELS[best['mode']]})"
        out.append({"target": name, "value": value, "ok": ratio <= TARGET_SEP_VS_BARE})
    else:
        out.append({"target": name, "value": "not measured", "ok": None})

    pipe = [r for r in rows if r["mode"] != "bare"]
    name = f"peak RSS < {TARGET_PEAK_MB / 1000:.1f} GB (every pipeline row)"
    if pipe:
        worst = max(pipe, key=lambda r: r["peak_mb"])
        value = f"max {worst['peak_mb']:.0f} MB ({LABELS[worst['mode']]}, {worst['workers']} w)"
        out.append({"target": name, "value": value, "ok": worst["peak_mb"] < TARGET_PEAK_MB})
    else:
        out.append({"target": name, "value": "not measured", "ok": None})

    # Each backend in its fastest mode at each worker count (as for the bare-floor target);
    # the ratio of every mode is printed beside it.
    name = f"sep >= {TARGET_SEP_VS_SEXTRACTOR}x faster than sextractor at the same workers"
    parts, every, oks = [], [], []
    for w in workers:
        seps = [r for r in (by.get(("sep", w)), by.get(("sep-pool", w))) if r]
        sexs = [r for r in (by.get(("sextractor", w)), by.get(("sextractor-pool", w))) if r]
        if seps and sexs:
            s = min(seps, key=lambda r: r["wall_s"])
            x = min(sexs, key=lambda r: r["wall_s"])
            ratio = x["wall_s"] / s["wall_s"]
            parts.append(f"{w} w: {ratio:.2f}x")
            oks.append(ratio >= TARGET_SEP_VS_SEXTRACTOR)
        for suffix in ("", "-pool"):
            s, x = by.get(("sep" + suffix, w)), by.get(("sextractor" + suffix, w))
            if s and x:
                every.append(f"{w} w{suffix.replace('-', ' ')} {x['wall_s'] / s['wall_s']:.2f}x")
    if oks:
        value = f"{', '.join(parts)} (best mode each; every mode: {', '.join(every)})"
        out.append({"target": name, "value": value, "ok": all(oks)})
    else:
        out.append({"target": name, "value": "not measured", "ok": None})
    return out


def print_report(
    info: dict,
    args,
    render_s: float,
    rows: list[dict],
    goals: list[dict],
    sampler_share: float | None = None,
    max_load: float | None = None,
) -> None:
    load = " ".join(f"{x:.2f}" for x in info["loadavg_start"])
    print()
    print(
        f"machine: {info['cpus_usable']}/{info['cpu_count']} cores usable, "
        f"{info.get('cpu_model', '?')}, {info.get('mem_total_gb', 0):.1f} GiB"
    )
    print(f"load average before start (1/5/15 min): {load}")
    print(
        f"python {info['python']}, sep {info['sep']}, apache-beam {info['apache-beam']}, "
        f"numpy {info['numpy']}, {info['source-extractor'] or 'source-extractor: not found'}"
    )
    print(
        f"exposure: geometry {args.geometry}, label {args.label}, seed {args.seed}, "
        f"rendered in {render_s:.1f} s; best of {args.repeats} run(s) per row"
    )
    print()
    header = (
        f"{'backend':<11} {'workers':>7} {'wall s':>7}  {'runs':<20} {'x bare':>6} "
        f"{'cpu s':>6} {'cpu x':>6} {'peak MB':>8} {'base MB':>8} {'sources':>8}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        runs = ", ".join(f"{w:.1f}" for w in r["walls"])
        ratio = f"{r['x_bare']:.2f}x" if r["x_bare"] is not None else "n/a"
        cpu_ratio = f"{r['cpu_x_bare']:.2f}x" if r["cpu_x_bare"] is not None else "n/a"
        q = f" ({r['quarantined']} quarantined)" if r["quarantined"] else ""
        runs = f"({runs})"
        print(
            f"{LABELS[r['mode']]:<11} {r['workers']:>7} {r['wall_s']:>7.2f}  {runs:<20} {ratio:>6} "
            f"{r['cpu_s']:>6.1f} {cpu_ratio:>6} {r['peak_mb']:>8.0f} {r['base_mb']:>8.0f} "
            f"{r['sources']:>8}{q}"
        )
    print()
    for g in goals:
        verdict = {True: "PASS", False: "FAIL", None: "SKIP"}[g["ok"]]
        print(f"{verdict}  {g['target']}: {g['value']}")
    end = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"\nload average at the end: {end}")
    if sampler_share is not None:
        print(f"RSS sampler thread: {100 * sampler_share:.1f}% of one core while sampling")
    if max_load is not None and max_load > 0.5 * info["cpus_usable"]:
        print(
            f"WARNING: the 1-min load average reached {max_load:.2f} before a run on "
            f"{info['cpus_usable']} cores: other jobs shared the machine, wall times and their "
            "ratios are unreliable; compare 'cpu x' and re-run on a quiet machine."
        )


def add_output_args(ap: argparse.ArgumentParser) -> None:
    """The options every benchmark has: keep the scratch directory, JSON out, strict exit."""
    ap.add_argument("--keep", action="store_true", help="keep the temporary directory")
    ap.add_argument("--json", metavar="OUT", help="also write the results as JSON to OUT")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a target fails")


def cleanup(tmp: Path, keep: bool) -> None:
    """Delete a benchmark's scratch directory (full-size exposures are ~680 MB), or say
    where it was kept."""
    if keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)


def finish(args, info: dict, render_s: float, results: dict, goals: list, total: float) -> int:
    """Write the ``--json`` document (machine, args, results, targets) and return the exit
    code: 1 under ``--strict`` when a target failed, else 0."""
    if args.json:
        doc = {
            "machine": info,
            "args": {k: v for k, v in vars(args).items() if k != "child"},
            "render_s": render_s,
            **results,
            "targets": goals,
            "loadavg_end": os.getloadavg(),
            "runtime_s": total,
        }
        Path(args.json).write_text(json.dumps(doc, indent=1, default=str) + "\n")
    return 1 if args.strict and any(g["ok"] is False for g in goals) else 0


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Extraction benchmark: sep and sextractor backends through the Beam "
        "pipeline vs. a bare sep + multiprocessing floor, on one simulated exposure.",
        epilog="A full-size run (default) takes several minutes; --geometry small is a smoke run.",
    )
    ap.add_argument("--geometry", choices=("full", "small"), default="full")
    ap.add_argument(
        "--repeats", type=int, default=2, help="runs per row; the best is kept (default 2)"
    )
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument(
        "--backends",
        default="sep,sextractor",
        help="comma-separated pipeline backends: sep, sextractor (default both)",
    )
    ap.add_argument(
        "--no-pool",
        action="store_true",
        help="skip the CCD-pool rows (run_extract with ccd_workers; workers > 1 only)",
    )
    ap.add_argument("--label", default="GOOD", help="class of the simulated exposure (GOOD)")
    ap.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    add_output_args(ap)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        return args
    if args.repeats < 1:
        ap.error(f"--repeats must be >= 1, got {args.repeats}")
    try:
        args.workers = sorted({int(w) for w in args.workers.split(",") if w.strip()})
    except ValueError:
        ap.error(f"--workers must be comma-separated integers, got {args.workers!r}")
    if not args.workers or min(args.workers) < 1:
        ap.error(f"--workers must be >= 1, got {args.workers}")
    args.backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    bad = [b for b in args.backends if b not in ("sep", "sextractor")]
    if bad:
        ap.error(f"unknown backend(s) {', '.join(bad)}; valid: sep, sextractor")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main(json.loads(args.child))
        return 0

    started = time.monotonic()
    info = machine_info()
    print(f"load average before start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    tmp = Path(tempfile.mkdtemp(prefix="skygrade-bench-extract-", dir="/tmp"))
    try:
        (tmp / "scratch").mkdir()
        print(f"rendering a {args.geometry} {args.label} exposure into {tmp} ...", flush=True)
        path, render_s = render_exposure(tmp, args.geometry, args.label, args.seed)
        print(f"rendered {path.name} ({path.stat().st_size / 1e6:.0f} MB) in {render_s:.1f} s")

        configs = [("bare", w) for w in args.workers]
        configs += [(b, w) for b in args.backends for w in args.workers]
        if not args.no_pool:
            configs += [(f"{b}-pool", w) for b in args.backends for w in args.workers if w > 1]
        records = []
        for rep in range(args.repeats):
            for mode, workers in configs:
                out_dir = tmp / f"out-{mode}-{workers}-{rep}"
                spec = {"mode": mode, "workers": workers, "path": str(path)}
                spec["out_dir"] = str(out_dir)
                r = measure(spec, tmp)
                records.append(r)
                print(
                    f"  run {rep + 1}/{args.repeats} {LABELS[mode]:<10} workers={workers}: "
                    f"{r['wall_s']:6.2f} s ({r['cpu_s']:.1f} CPU s), peak {r['peak_mb']:5.0f} MB "
                    f"({r['max_processes']} processes), {r['sources']} sources, "
                    f"load {r['load_before']:.2f}",
                    flush=True,
                )
                shutil.rmtree(out_dir, ignore_errors=True)

        rows = summarize(records)
        goals = targets(rows, args.workers)
        sampled = sum(r["sampler_elapsed_s"] for r in records)
        share = sum(r["sampler_cpu_s"] for r in records) / sampled if sampled else None
        max_load = max(r["load_before"] for r in records)
        print_report(info, args, render_s, rows, goals, share, max_load)
        total = time.monotonic() - started
        print(f"benchmark runtime: {total:.0f} s")
        results = {"runs": records, "rows": rows}
        return finish(args, info, render_s, results, goals, total)
    finally:
        cleanup(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
