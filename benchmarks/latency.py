"""Benchmark: live grading latency of one exposure, per-exposure overhead and RSS drift.

Run ``.venv/bin/python benchmarks/latency.py`` (``--help`` for options; ``--geometry small
--n-small 20`` is a quick smoke run). Exposures are rendered with :mod:`skygrade.streamer.sky_fits`
into a temporary directory under /tmp, which is deleted at the end (unless ``--keep``).

What is measured
----------------
1. End-to-end latency of one exposure (``--geometry full``: 36 CCDs of 2048 x 4612), from "file
   complete" (the ``arrivals`` time handed to ``run_grade``, taken just before the call) to
   "parquet row written" (mtime of the exposure's parquet file, the sink's commit mark):

   (a) the daemon's ``GradingSession(out, DEFAULT_BUNDLE, Config(), ccd_workers=2).grade``
       on a warm pool: the same session graded another exposure of the same geometry first, so
       the graph, the pool, the SOM and the model are ready, as in the daemon;
   (b) the same with ``ccd_workers=0``, in process (one core; warmed on a tiny exposure);
   (c) the bare sep floor of ``benchmarks/extract.py`` (``bare_floor``: read + sep background,
       extract, flux_radius over all CCDs with a 2-process ``multiprocessing.Pool``), run by
       ``extract.measure`` in its own child process.

   Runs are interleaved (a, b, c, then again), best of ``--repeats``.
2. Per-exposure pipeline overhead: one bounded FnApiRunner pipeline ``Create([path]) -> Map ->
   Map(write a file)`` (as built by ``skygrade.streamer.pipelines.make_pipeline``), and the grading
   of a tiny exposure (1 CCD of 64 x 64) minus its CCD work (the row's extract + som +
   representative + score seconds): by the daemon's session (the target), by ``run_grade`` on the
   warm pool (graph built per call) and in process; median of ``--n-overhead`` runs.
3. RSS over ``--n-small`` exposures of 2 CCDs of 256 x 320: the daemon's session with a warm
   pool, one exposure at a time (as the daemon does); after each, the RSS summed over the grading
   process and its pool workers (``extract.tree_rss_kb``). The slope (MB per exposure) is a
   least-squares line over the second half.

Every grading process is a fresh child (``latency.py --child``) driven over stdin, so that one
section's heap does not inflate the next one's RSS; section 1 runs in one child, sections 2 and 3
in another. Its process tree is also sampled every 50 ms by this (otherwise idle) parent
(``extract.TreeRssSampler``) for the peak RSS of each run. CPU seconds are summed over the tree
from ``/proc/<pid>/stat`` (the pool workers live on, so ``getrusage`` would miss them).

Targets (PASS/FAIL on this run only; exit status 0 unless ``--strict``):
``end-to-end <= 1.25x bare floor`` (a / c), ``per-exposure overhead < 0.2 s`` and
``RSS slope < 0.1 MB/exposure``. The load average is printed before and after, and a warning
when it passed half the core count: then wall times and their ratios are unreliable.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from extract import (
    TreeRssSampler,
    _rss_kb,
    add_output_args,
    cleanup,
    finish,
    machine_info,
    measure,
    tree_pids,
    tree_rss_kb,
)

NIGHT = "2026-11-24"
TINY = (1, 64, 64)
SERIES = (2, 256, 320)
RESULT_PREFIX = "LATENCY-RESULT "
CLK_TCK = os.sysconf("SC_CLK_TCK")

TARGET_E2E_VS_BARE = 1.25
TARGET_OVERHEAD_S = 0.2
TARGET_SLOPE_MB = 0.1


def tree_cpu_s(root: int) -> float:
    """CPU seconds (user + system) of ``root``'s live tree plus every child each has reaped."""
    total = 0
    for pid in tree_pids(root):
        try:
            with open(f"/proc/{pid}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return total / CLK_TCK


# --------------------------------------------------------------------------- child


def _sink(value: str, out_dir: str) -> str:
    path = Path(out_dir) / "trivial.txt"
    path.write_text(value)
    return str(path)


def trivial_pipeline(path: str, out_dir: str) -> float:
    """Wall seconds of one bounded pipeline: Create one path -> a trivial Map -> a file sink."""
    import apache_beam as beam

    from skygrade.streamer.pipelines import make_pipeline, pipeline_options

    t0 = time.monotonic()
    with make_pipeline(pipeline_options()) as p:
        _ = (
            p
            | "Paths" >> beam.Create([path])
            | "Upper" >> beam.Map(str.upper)
            | "Sink" >> beam.Map(_sink, out_dir)
        )
    return time.monotonic() - t0


_SESSIONS: dict = {}


def grade(
    path: str, out_dir: str, workers: int, profile: str | None = None, session: bool = False
) -> dict:
    """One grading of ``path``, timed from "file complete" to the parquet row: ``run_grade``
    (graph built per call), or with ``session`` the daemon's ``GradingSession`` (graph built
    once per output directory, reused by every later call)."""
    from skygrade.models.bundle import DEFAULT_BUNDLE
    from skygrade.ops.config import Config
    from skygrade.streamer.pipelines import run_grade
    from skygrade.streamer.session import GradingSession

    cfg = Config()
    if session and (out_dir, workers) not in _SESSIONS:
        _SESSIONS[out_dir, workers] = GradingSession(out_dir, DEFAULT_BUNDLE, cfg, workers)
    prof = None
    if profile:
        import cProfile

        prof = cProfile.Profile()
    me = os.getpid()
    c0 = tree_cpu_s(me)
    arrived = time.time()
    t0 = time.monotonic()
    if prof:
        prof.enable()
    if session:
        rows = _SESSIONS[out_dir, workers].grade([path], {path: arrived})
    else:
        rows = run_grade(
            [path], out_dir, DEFAULT_BUNDLE, cfg, arrivals={path: arrived}, ccd_workers=workers
        )
    if prof:
        prof.disable()
        prof.dump_stats(profile)
    t1 = time.monotonic()
    cpu = tree_cpu_s(me) - c0
    if len(rows) != 1:
        raise RuntimeError(f"grading {path} returned {len(rows)} rows")
    row = rows[0]
    # The sink's commit mark: the exposure file, written after the CCD file (its name may
    # carry a model-version tag: take the newest file of this exposure in its night).
    files = Path(out_dir, "exposures", f"night={row['night']}").glob(f"{row['exposure_id']}.*")
    exp_file = max(files, key=lambda f: f.stat().st_mtime_ns)
    work = sum(row.get(f"{s}_s") or 0.0 for s in ("extract", "som", "representative", "score"))
    return {
        "t0": t0,
        "t1": t1,
        "wall_s": t1 - t0,
        "e2e_s": exp_file.stat().st_mtime_ns / 1e9 - arrived,
        "row_latency_s": row["latency_s"],
        "cpu_s": cpu,
        "ccd_work_s": work,
        "status": row["status"],
        "grade": row["grade"],
        "n_sources": row["n_sources"],
        "n_ccd_graded": row["n_ccd_graded"],
    }


def series(paths: list[str], out_dir: str, workers: int) -> dict:
    """Grade ``paths`` one at a time through a session (as the daemon does); the tree's RSS
    (and the main process's) after each."""
    me = os.getpid()
    t0 = time.monotonic()
    points = []
    for path in paths:
        r = grade(path, out_dir, workers, session=True)
        kb, n = tree_rss_kb(me)
        points.append(
            {
                "wall_s": r["wall_s"],
                "rss_mb": kb / 1024,
                "main_mb": _rss_kb(me) / 1024,
                "processes": n,
                "status": r["status"],
            }
        )
    return {"t0": t0, "t1": time.monotonic(), "points": points}


def child_main() -> None:
    """Serve JSON commands from stdin (one per line); answer each with one result line."""
    # What the daemon has imported before its first exposure.
    import apache_beam  # noqa: F401

    import skygrade.transforms.grading
    import skygrade.transforms.sinks  # noqa: F401

    for line in sys.stdin:
        cmd = json.loads(line)
        op = cmd.pop("op")
        try:
            if op == "ready":
                result = {"pid": os.getpid()}
            elif op == "grade":
                result = grade(**cmd)
            elif op == "trivial":
                result = {"walls": [trivial_pipeline(**cmd) for _ in range(cmd.pop("n", 1))]}
            elif op == "series":
                result = series(**cmd)
            else:
                raise ValueError(f"unknown op {op!r}")
        except Exception as exc:  # reported to the parent, which fails the benchmark
            import traceback

            result = {"error": f"{type(exc).__name__}: {exc}", "trace": traceback.format_exc()}
        print(RESULT_PREFIX + json.dumps(result), flush=True)


# --------------------------------------------------------------------------- parent


class Child:
    """A grading process (``latency.py --child``) driven over stdin, its tree RSS sampled."""

    def __init__(self, tmp: Path, name: str) -> None:
        self.name = name
        self.err_path = tmp / f"{name}.stderr"
        self.err = open(self.err_path, "w")  # noqa: SIM115 - closed in close()
        env = dict(os.environ, TMPDIR=str(tmp / "scratch"), PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, os.path.abspath(__file__), "--child"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.err,
            text=True,
            env=env,
            start_new_session=True,  # its own process group: killed as a whole on failure
        )
        self.sampler = TreeRssSampler(self.proc.pid)
        self.sampler.start()
        self.call({"op": "ready"})

    def call(self, cmd: dict) -> dict:
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        for line in self.proc.stdout:
            if line.startswith(RESULT_PREFIX):
                result = json.loads(line[len(RESULT_PREFIX) :])
                if "error" in result:
                    raise RuntimeError(f"{self.name}: {cmd['op']} failed:\n{result['trace']}")
                if "t0" in result:
                    result.update(self.sampler.window(result["t0"], result["t1"]))
                return result
        tail = self.err_path.read_text()[-4000:]
        raise RuntimeError(f"{self.name} exited ({self.proc.wait()}):\n{tail}")

    def close(self, kill: bool = False) -> None:
        if not kill:
            self.proc.stdin.close()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                kill = True
        if kill and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.sampler.stop()
        self.err.close()


def _render(plan, geometry, path: str) -> str:
    from skygrade.streamer.sky_fits import write_exposure

    return str(write_exposure(plan, geometry, path))


def render_all(tmp: Path, args) -> tuple[dict, float]:
    """All exposures the run needs, rendered on 2 processes; (paths by role, seconds)."""
    from skygrade.streamer.sky_plan import GEOMETRIES, Geometry, plan_night

    mix = {args.label: 1.0}
    main, warm = plan_night(NIGHT, 2, args.seed, mix)  # main is plan_night(...)[0]
    tiny = plan_night("2026-11-25", args.n_overhead + 2, args.seed, mix)
    small = plan_night("2026-11-26", args.n_small + 1, args.seed, mix)
    geometry = GEOMETRIES[args.geometry]
    jobs = {"tiny": [(p, Geometry(*TINY), "tiny") for p in tiny]}
    if 1 in args.sections:
        jobs["main"] = [(main, geometry, "big")]
        jobs["warm"] = [(warm, geometry, "big")]
    if 3 in args.sections:
        jobs["small"] = [(p, Geometry(*SERIES), "small") for p in small]
    t0 = time.monotonic()
    with ProcessPoolExecutor(2) as pool:
        futures = {
            role: [pool.submit(_render, p, g, str(tmp / sub / p.filename)) for p, g, sub in js]
            for role, js in jobs.items()
        }
        paths = {role: [f.result() for f in fs] for role, fs in futures.items()}
    return paths, time.monotonic() - t0


def section_latency(child: Child, tmp: Path, paths: dict, args, log) -> dict:
    main = paths["main"][0]
    out = str(tmp / "grades-e2e")
    log("  warming: run_grade of a tiny exposure in process, then the daemon's session on the pool")
    child.call({"op": "grade", "path": paths["tiny"][0], "out_dir": out, "workers": 0})
    warm = child.call(
        {"op": "grade", "path": paths["warm"][0], "out_dir": out, "workers": 2, "session": True}
    )
    log(f"  warm-up on the pool (pool start + loads): {warm['wall_s']:.2f} s")
    runs: dict[str, list] = {"pool": [], "inproc": [], "bare": []}
    for rep in range(args.repeats):
        for mode, workers in (("pool", 2), ("inproc", 0)):
            prof = None
            if args.profile and rep == 0:
                prof = str(tmp / f"profile-{mode}.prof")
            cmd = {"op": "grade", "path": main, "out_dir": out, "workers": workers}
            cmd["session"] = mode == "pool"  # the daemon's way: session on the warm pool
            load = os.getloadavg()[0]
            r = child.call(cmd | {"profile": prof})
            r["load_before"] = load
            runs[mode].append(r)
            log(
                f"  run {rep + 1}/{args.repeats} {'session' if workers else 'run_grade'} "
                f"ccd_workers={workers}: "
                f"e2e {r['e2e_s']:.2f} s (call {r['wall_s']:.2f} s, {r['cpu_s']:.1f} CPU s), "
                f"peak {r['peak_mb']:.0f} MB, {r['status']} {r['grade']}"
            )
        b = measure({"mode": "bare", "workers": 2, "path": main}, tmp)
        runs["bare"].append(b)
        log(
            f"  run {rep + 1}/{args.repeats} bare floor Pool(2): {b['wall_s']:.2f} s "
            f"({b['cpu_s']:.1f} CPU s), peak {b['peak_mb']:.0f} MB, {b['sources']} sources"
        )
    return {"warm": warm, "runs": runs, "profiles": bool(args.profile)}


def section_overhead(child: Child, tmp: Path, paths: dict, args, log) -> dict:
    out = str(tmp / "grades-overhead")
    tiny = paths["tiny"]
    child.call({"op": "grade", "path": tiny[0], "out_dir": out, "workers": 2})  # pool start
    child.call({"op": "grade", "path": tiny[1], "out_dir": out, "workers": 0})
    child.call({"op": "grade", "path": tiny[1], "out_dir": out, "workers": 2, "session": True})
    trivial = child.call({"op": "trivial", "path": tiny[0], "out_dir": out, "n": args.n_overhead})
    res = {"trivial": trivial["walls"], "session": [], "pool": [], "inproc": []}
    modes = (("session", 2, True), ("pool", 2, False), ("inproc", 0, False))
    for i, path in enumerate(tiny[2:]):
        for mode, workers, session in modes:
            prof = None
            if args.profile and i == 0:
                prof = str(tmp / f"profile-tiny-{mode}.prof")
            cmd = {"op": "grade", "path": path, "out_dir": out, "workers": workers}
            res[mode].append(child.call(cmd | {"profile": prof, "session": session}))
    log(
        f"  trivial pipeline median {statistics.median(res['trivial']):.3f} s; tiny exposure "
        f"median {statistics.median(r['wall_s'] for r in res['session']):.3f} s (session), "
        f"{statistics.median(r['wall_s'] for r in res['pool']):.3f} s (run_grade, pool), "
        f"{statistics.median(r['wall_s'] for r in res['inproc']):.3f} s (in process)"
    )
    return res


def section_rss(child: Child, tmp: Path, paths: dict, args, log) -> dict:
    out = str(tmp / "grades-series")
    small = paths["small"]
    child.call({"op": "grade", "path": small[0], "out_dir": out, "workers": 2})  # warm
    r = child.call({"op": "series", "paths": small[1:], "out_dir": out, "workers": 2})
    pts = r["points"]
    rss = [p["rss_mb"] for p in pts]
    half = pts[len(pts) // 2 :]
    x = list(range(len(pts) // 2, len(pts)))
    fit = statistics.linear_regression(x, [p["rss_mb"] for p in half]) if len(x) > 1 else None
    fit_main = statistics.linear_regression(x, [p["main_mb"] for p in half]) if fit else None
    res = {
        "points": pts,
        "first_mb": rss[0],
        "last_mb": rss[-1],
        "max_mb": max(rss),
        "slope_mb": fit.slope if fit else None,
        "slope_main_mb": fit_main.slope if fit_main else None,
        "wall_median_s": statistics.median(p["wall_s"] for p in pts),
        "peak_sampled_mb": r["peak_mb"],
        "elapsed_s": r["t1"] - r["t0"],
    }
    log(
        f"  {len(pts)} exposures in {res['elapsed_s']:.0f} s: RSS {res['first_mb']:.0f} -> "
        f"{res['last_mb']:.0f} MB (max {res['max_mb']:.0f})"
    )
    return res


def _best(runs: list[dict], key: str) -> dict:
    return min(runs, key=lambda r: r[key])


def report(info: dict, args, render_s: float, sizes: dict, lat: dict, ovh: dict, rss: dict):
    """Print the tables and target lines of the sections that ran; returns the targets."""
    goals: list[tuple] = []
    load = " ".join(f"{x:.2f}" for x in info["loadavg_start"])
    print()
    print(
        f"machine: {info['cpus_usable']}/{info['cpu_count']} cores usable, "
        f"{info.get('cpu_model', '?')}, {info.get('mem_total_gb', 0):.1f} GiB; python "
        f"{info['python']}, sep {info['sep']}, apache-beam {info['apache-beam']}, "
        f"numpy {info['numpy']}"
    )
    print(f"load average before start (1/5/15 min): {load}")
    print(
        f"exposures: {args.geometry} {sizes['main']} ({sizes['main_mb']:.0f} MB), tiny {TINY}, "
        f"series {SERIES}; label {args.label}, seed {args.seed}; rendered in {render_s:.0f} s"
    )
    loads = [os.getloadavg()[0]]
    if lat:
        loads += report_latency(args, lat, goals)
    if ovh:
        report_overhead(args, ovh, goals)
    if rss:
        report_rss(rss, goals)
    print()
    verdicts = {True: "PASS", False: "FAIL", None: "SKIP"}
    for name, value, ok in goals:
        print(f"{verdicts[ok]}  {name}: {value}")
    end = os.getloadavg()
    print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in end)}")
    if max(loads) > 0.5 * info["cpus_usable"]:
        print(
            f"WARNING: the 1-min load average reached {max(loads):.2f} on "
            f"{info['cpus_usable']} cores: other jobs may have shared the machine (this "
            "benchmark itself keeps ~2 cores busy in section 1); compare 'cpu s' too."
        )
    return [{"target": n_, "value": v, "ok": ok} for n_, v, ok in goals]


def report_latency(args, lat: dict, goals: list) -> list[float]:
    """Section 1's table; returns the load averages seen before its runs."""
    runs = lat["runs"]
    a, b = _best(runs["pool"], "e2e_s"), _best(runs["inproc"], "e2e_s")
    c = _best(runs["bare"], "wall_s")
    print(f"\n1. end-to-end latency, one {args.geometry} exposure (best of {args.repeats})")
    header = (
        f"{'':<34} {'e2e s':>7}  {'runs':<16} {'call s':>7} {'cpu s':>6} {'x bare':>7} "
        f"{'peak MB':>8}"
    )
    print(header)
    print("-" * len(header))
    for name, r, key, all_runs in (
        ("(a) daemon session ccd_workers=2, warm", a, "e2e_s", runs["pool"]),
        ("(b) run_grade ccd_workers=0", b, "e2e_s", runs["inproc"]),
        ("(c) bare sep floor, Pool(2)", c, "wall_s", runs["bare"]),
    ):
        listed = "(" + ", ".join(f"{x[key]:.2f}" for x in all_runs) + ")"
        call = r.get("wall_s", 0.0)
        print(
            f"{name:<34} {r[key]:>7.2f}  {listed:<16} {call:>7.2f} {r['cpu_s']:>6.1f} "
            f"{r[key] / c['wall_s']:>6.2f}x {r['peak_mb']:>8.0f}"
        )
    w = lat["warm"]
    print(
        f"warm-up run on the pool (pool start, SOM/model loads): {w['wall_s']:.2f} s; "
        f"status {a['status']}, grade {a['grade']}, {a['n_sources']} sources; bare floor "
        f"{c['sources']} sources"
    )
    ratio = a["e2e_s"] / c["wall_s"]
    goals.append(
        (
            f"end-to-end <= {TARGET_E2E_VS_BARE}x bare floor",
            f"{ratio:.2f}x ({a['e2e_s']:.2f} s vs {c['wall_s']:.2f} s)",
            ratio <= TARGET_E2E_VS_BARE,
        )
    )
    return [r["load_before"] for rs in runs.values() for r in rs]


def report_overhead(args, ovh: dict, goals: list) -> None:
    print(f"\n2. per-exposure pipeline overhead (median of {args.n_overhead})")
    triv = ovh["trivial"]
    header = f"{'':<44} {'wall s':>7} {'ccd work s':>10} {'overhead s':>10}  {'min-max wall':<12}"
    print(header)
    print("-" * len(header))
    print(
        f"{'FnApiRunner Create -> Map -> sink':<44} {statistics.median(triv):>7.3f} "
        f"{0.0:>10.3f} {statistics.median(triv):>10.3f}  {min(triv):.3f}-{max(triv):.3f}"
    )
    overheads = {}
    names = (
        ("session", "daemon session tiny, ccd_workers=2 warm"),
        ("pool", "run_grade tiny, ccd_workers=2 warm"),
        ("inproc", "run_grade tiny, ccd_workers=0"),
    )
    for mode, name in names:
        rs = ovh[mode]
        walls = [r["wall_s"] for r in rs]
        overheads[mode] = statistics.median(r["wall_s"] - r["ccd_work_s"] for r in rs)
        print(
            f"{name:<44} {statistics.median(walls):>7.3f} "
            f"{statistics.median(r['ccd_work_s'] for r in rs):>10.3f} {overheads[mode]:>10.3f}  "
            f"{min(walls):.3f}-{max(walls):.3f}"
        )
    t = statistics.median(triv)
    goals.append(
        (f"trivial bounded pipeline < {TARGET_OVERHEAD_S} s", f"{t:.3f} s", t < TARGET_OVERHEAD_S)
    )
    o = overheads["session"]
    goals.append(
        (
            f"daemon session overhead (tiny exposure, warm pool) < {TARGET_OVERHEAD_S} s",
            f"{o:.3f} s",
            o < TARGET_OVERHEAD_S,
        )
    )


def report_rss(rss: dict, goals: list) -> None:
    n = len(rss["points"])
    print(f"\n3. RSS of the grading process tree over {n} exposures {SERIES}, warm pool")
    main = [p["main_mb"] for p in rss["points"]]
    print(
        f"tree RSS first {rss['first_mb']:.0f} MB, last {rss['last_mb']:.0f} MB, max "
        f"{rss['max_mb']:.0f} MB (50 ms samples: peak {rss['peak_sampled_mb']:.0f} MB); main "
        f"process {main[0]:.0f} -> {main[-1]:.0f} MB"
    )
    slope = rss["slope_mb"]
    if slope is None:
        goals.append((f"RSS slope < {TARGET_SLOPE_MB} MB/exposure", "too few exposures", None))
    else:
        print(
            f"slope over the second half: {slope:+.3f} MB/exposure (main process "
            f"{rss['slope_main_mb']:+.3f}); median run_grade {rss['wall_median_s']:.3f} s"
        )
        goals.append(
            (
                f"RSS slope ~0 (< {TARGET_SLOPE_MB} MB/exposure)",
                f"{slope:+.3f} MB/exposure",
                slope < TARGET_SLOPE_MB,
            )
        )


def print_profiles(tmp: Path) -> None:
    import pstats

    for prof in sorted(tmp.glob("profile-*.prof")):
        print(f"\n--- {prof.name}: top 25 by cumulative time")
        pstats.Stats(str(prof)).sort_stats("cumulative").print_stats(25)


def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(
        description="Latency benchmark: end-to-end grading of one exposure vs. the bare sep "
        "floor, per-exposure pipeline overhead, and RSS over many small exposures.",
        epilog="A full-size run (default) takes ~5 minutes; '--geometry small --n-small 20' is a "
        "smoke run of about a minute.",
    )
    ap.add_argument("--geometry", choices=("full", "small"), default="full")
    ap.add_argument(
        "--n-small", type=int, default=200, help="exposures in the RSS series (default 200)"
    )
    ap.add_argument("--n-overhead", type=int, default=10, help="runs per overhead row (default 10)")
    ap.add_argument(
        "--repeats", type=int, default=2, help="runs per latency row; best kept (default 2)"
    )
    ap.add_argument("--label", default="GOOD", help="class of the simulated exposures (GOOD)")
    ap.add_argument("--seed", type=int, default=1, help="simulation seed (default 1)")
    ap.add_argument(
        "--sections", default="1,2,3", help="comma-separated sections to run (default 1,2,3)"
    )
    ap.add_argument(
        "--profile",
        action="store_true",
        help="cProfile the grading process for one run of each kind; print the top functions",
    )
    add_output_args(ap)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    for name in ("n_small", "n_overhead", "repeats"):
        if getattr(args, name) < 1:
            ap.error(f"--{name.replace('_', '-')} must be >= 1")
    try:
        args.sections = sorted({int(x) for x in args.sections.split(",") if x.strip()})
    except ValueError:
        ap.error(f"--sections must be comma-separated numbers, got {args.sections!r}")
    if not args.sections or not set(args.sections) <= {1, 2, 3}:
        ap.error(f"--sections must name some of 1, 2, 3, got {args.sections}")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        child_main()
        return 0

    started = time.monotonic()
    info = machine_info()
    print(f"load average before start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    tmp = Path(tempfile.mkdtemp(prefix="skygrade-bench-latency-", dir="/tmp"))
    children: list[Child] = []

    def log(text: str) -> None:
        print(text, flush=True)

    try:
        (tmp / "scratch").mkdir()
        log(f"rendering exposures into {tmp} ...")
        paths, render_s = render_all(tmp, args)
        from skygrade.streamer.sky_plan import GEOMETRIES

        g = GEOMETRIES[args.geometry]
        sizes = {"main": (g.n_ccd, g.width, g.height), "main_mb": 0.0}
        if "main" in paths:
            sizes["main_mb"] = Path(paths["main"][0]).stat().st_size / 1e6
        log(f"rendered {sum(len(v) for v in paths.values())} exposures in {render_s:.0f} s")

        lat = ovh = rss = {}
        if 1 in args.sections:
            log("1. end-to-end latency")
            children.append(Child(tmp, "child-latency"))
            lat = section_latency(children[-1], tmp, paths, args, log)
            children.pop().close()
        if 2 in args.sections or 3 in args.sections:
            log("2. per-exposure overhead / 3. RSS series")
            children.append(Child(tmp, "child-series"))
            if 2 in args.sections:
                ovh = section_overhead(children[-1], tmp, paths, args, log)
            if 3 in args.sections:
                rss = section_rss(children[-1], tmp, paths, args, log)
            children.pop().close()

        goals = report(info, args, render_s, sizes, lat, ovh, rss)
        if args.profile:
            print_profiles(tmp)
        total = time.monotonic() - started
        print(f"benchmark runtime: {total:.0f} s")
        results = {"latency": lat, "overhead": ovh, "rss": rss}
        return finish(args, info, render_s, results, goals, total)
    finally:
        for child in children:
            child.close(kill=True)
        cleanup(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
