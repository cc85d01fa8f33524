"""Benchmark: server time of the observer page and its JSON with 1,000 exposures in the night.

Run ``.venv/bin/python benchmarks/observer_page.py`` (``--help`` for options; ``--exposures 200``
is a quick smoke run). A night of exposure rows is synthesised with the sink's own functions
(:func:`skygrade.transforms.sinks.write_grade_rows`: one exposure file, one CCD file of 36 rows and
one representative-image file per exposure, as the daemon writes them) into a temporary directory
under /tmp, which is deleted at the end (unless ``--keep``).

What is measured
----------------
Server time: the route handlers of :class:`skygrade.streamer.observer.Observer` called in this
process with a :class:`skygrade.ops.http.Request` (what :class:`skygrade.ops.http.HttpServer` calls
per request; socket and HTTP parsing not included), median and max of ``--repeats`` calls:

cold
    The first request of the night page after start-up: the night's index is built from every
    exposure file (one multi-threaded parquet scan); then the first ``/api/night`` (every row
    serialised once). Once per daemon start and night.
warm
    The live page ``/``, ``/night?date=N``, ``/api/night?date=N`` (the full document), the
    poll that finds nothing new (``/api/night?date=N&rev=R``), ``/api/now``,
    ``/api/exposure`` of the latest exposure and one CCD thumbnail; each called once before
    it is timed.
after a new exposure
    One more exposure is written, then the first ``/`` and the first ``/api/night`` after it
    (re-list the directory, read the one new file, re-render and re-serialise): what the
    page costs every time the daemon grades an exposure.

Targets (PASS/FAIL on this run only; exit status 0 unless ``--strict``): every warm and
after-a-new-exposure request of the night page and of ``/api/night`` under 100 ms. The load
average is printed before and after: on a shared machine re-run when it is high.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from extract import add_output_args, cleanup, finish, machine_info  # noqa: E402

NIGHT = "2026-11-24"
START = dt.datetime(2026, 11, 25, 4, 30, tzinfo=dt.UTC)
TARGET_MS = 100.0


def synthesise(out: Path, n: int, n_ccd: int, first: int = 0) -> float:
    """Write graded exposures ``first`` .. ``first + n - 1`` of ``n_ccd`` CCDs (rows + images),
    45 s apart; returns the seconds taken."""
    from skygrade.models.classes import CLASSES
    from skygrade.transforms.grades_dataset import GradesDataset

    rng = np.random.default_rng(first)
    yy, xx = np.mgrid[0:32, 0:32]
    star = np.exp(-((xx - 16) ** 2 + (yy - 16) ** 2) / 8.0).astype(np.float32)
    tiles = np.tile(star, (4, 5))  # a 20-tile representative image of round stars
    t0 = time.monotonic()
    for i in range(first, first + n):
        when = START + dt.timedelta(seconds=45 * i)
        grade = CLASSES[int(rng.integers(len(CLASSES)))]
        row = {
            "exposure_id": str(3000000 + i),
            "night": NIGHT,
            "path": f"/data/drop/{NIGHT}/{3000000 + i}o.fits",
            "grade": grade,
            "confidence": float(rng.uniform(0.4, 1.0)),
            "n_ccd": n_ccd,
            "n_ccd_graded": n_ccd,
            "n_sources": int(rng.integers(20000, 80000)),
            "median_elongation": float(rng.uniform(1.1, 2.5)),
            "median_iso0": float(rng.uniform(8, 60)),
            "median_background": float(rng.uniform(10, 2000)),
            "exptime": float(rng.choice([30.0, 120.0, 300.0, 600.0])),
            "filter": str(rng.choice(["u.MP9302", "g.MP9401", "r.MP9601", "i.MP9703"])),
            "object": f"D{i % 4 + 1}",
            "date_obs": when.isoformat(),
            "model_version": "bench-1",
            "config_digest": "bench",
            "arrived_at": when.timestamp() + 40,
            "graded_at": when.timestamp() + 55,
            "latency_s": 15.0,
            "status": "graded",
            "reason": f"{grade}: {n_ccd}/{n_ccd} CCDs",
        }
        row.update({f"p_{c}": (row["confidence"] if c == grade else 0.0) for c in CLASSES})
        ccds = []
        for k in range(n_ccd):
            c = {
                "exposure_id": row["exposure_id"],
                "night": NIGHT,
                "ccd": k,
                "grade": grade,
                "hits": [int(h) for h in rng.integers(0, 300, 20)],
                "n_sources": 1500,
                "median_elongation": 1.3,
                "median_iso0": 20.0,
                "median_background": 900.0,
                "status": "graded",
                "reason": None,
                "model_version": "bench-1",
                "image": tiles + rng.normal(0, 0.02, tiles.shape).astype(np.float32),
            }
            c.update({f"p_{x}": (0.8 if x == grade else 0.05) for x in CLASSES})
            ccds.append(c)
        GradesDataset(out).write(row, ccds)
    return time.monotonic() - t0


def time_call(fn, request, repeats: int) -> dict:
    times = []
    status = size = None
    for _ in range(repeats):
        t0 = time.perf_counter()
        response = fn(request)
        times.append(1000 * (time.perf_counter() - t0))
        status, size = response.status, len(response.body)
    return {
        "median_ms": statistics.median(times),
        "max_ms": max(times),
        "status": status,
        "bytes": size,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exposures", type=int, default=1000, help="exposures in the night (1000)")
    ap.add_argument("--n-ccd", type=int, default=36, help="CCDs per exposure (36)")
    ap.add_argument("--repeats", type=int, default=20, help="calls per warm request (20)")
    ap.add_argument(
        "--dataset",
        type=Path,
        help="time an existing grades dataset of this benchmark (a --keep run's grades/) "
        "instead of writing one; it gains the new exposures",
    )
    add_output_args(ap)
    args = ap.parse_args(argv)
    if args.exposures < 1 or args.n_ccd < 1 or args.repeats < 1:
        ap.error("--exposures, --n-ccd and --repeats must be >= 1")

    from skygrade.ops.http import Request
    from skygrade.streamer.observer import Observer

    started = time.monotonic()
    info = machine_info()
    print(f"load average before start: {' '.join(f'{x:.2f}' for x in info['loadavg_start'])}")
    tmp = Path(tempfile.mkdtemp(prefix="skygrade-bench-observer-", dir="/tmp"))
    try:
        out = tmp / "grades"
        if args.dataset is not None:
            out, build_s = args.dataset, 0.0
        else:
            print(f"writing {args.exposures} exposures x {args.n_ccd} CCDs into {out} ...")
            build_s = synthesise(out, args.exposures, args.n_ccd)
        disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
        images = sum(p.stat().st_size for p in (out / "images").rglob("*.npz"))
        print(
            f"written in {build_s:.1f} s: {disk / 1e6:.1f} MB on disk, representative images "
            f"{images / args.exposures / 1e3:.1f} kB per exposure"
        )
        observer = Observer(out, status=lambda: {"ok": True, "backlog": 0, "alerts": []})
        routes = observer.routes()

        def req(path, **query):
            return Request("GET", path, {k: [str(v)] for k, v in query.items()})

        results: dict[str, dict] = {}
        results["cold /"] = time_call(routes["/"], req("/"), 1)
        results["cold /api/night"] = time_call(
            routes["/api/night"], req("/api/night", date=NIGHT), 1
        )
        index = observer.index.night(NIGHT)
        rev, latest = index.rev, index.rows[-1]["exposure_id"]
        print(f"night {NIGHT}: {len(index.rows)} exposures")
        warm = {
            "/": req("/"),
            "/night": req("/night", date=NIGHT),
            "/api/night": req("/api/night", date=NIGHT),
            "/api/night?rev (poll, unchanged)": req("/api/night", date=NIGHT, rev=rev),
            "/api/now": req("/api/now"),
            "/api/exposure": req("/api/exposure", night=NIGHT, id=latest),
            "/thumb": req("/thumb", night=NIGHT, id=latest, ccd=0),
        }
        for name, request in warm.items():
            path = name.split("?")[0].split(" ")[0]
            routes[path](request)  # warm-up: the first call of each is not counted
            results[f"warm {name}"] = time_call(routes[path], request, args.repeats)
        after_page, after_json = [], []
        for j in range(5):  # new exposures one at a time, as the daemon grades them
            synthesise(out, 1, args.n_ccd, first=args.exposures + 2 * j)
            after_page.append(time_call(routes["/"], req("/"), 1)["median_ms"])
            synthesise(out, 1, args.n_ccd, first=args.exposures + 2 * j + 1)
            after_json.append(time_call(routes["/api/night"], req("/api/night", date=NIGHT), 1))
        results["after a new exposure /"] = {
            "median_ms": statistics.median(after_page),
            "max_ms": max(after_page),
        }
        results["after a new exposure /api/night"] = {
            "median_ms": statistics.median(r["median_ms"] for r in after_json),
            "max_ms": max(r["median_ms"] for r in after_json),
            "bytes": after_json[-1]["bytes"],
        }

        print()
        print(f"{'request':<40} {'median ms':>10} {'max ms':>8} {'bytes':>9}")
        for name, r in results.items():
            size = r.get("bytes")
            print(
                f"{name:<40} {r['median_ms']:>10.2f} {r['max_ms']:>8.2f} "
                f"{'' if size is None else size:>9}"
            )
        goals = []
        for name in (
            "warm /",
            "warm /night",
            "warm /api/night",
            "warm /api/night?rev (poll, unchanged)",
            "after a new exposure /",
            "after a new exposure /api/night",
        ):
            worst = results[name]["max_ms"]
            goals.append(
                {
                    "target": f"{name} < {TARGET_MS:.0f} ms (max of the calls)",
                    "value": f"{worst:.1f} ms",
                    "ok": worst < TARGET_MS,
                }
            )
        print()
        for g in goals:
            print(f"{'PASS' if g['ok'] else 'FAIL'}  {g['target']}: {g['value']}")
        print(
            f"(not a target) cold, once per start-up and night: first page (the index built "
            f"from every file) {results['cold /']['median_ms']:.0f} ms, first /api/night "
            f"(every row serialised) {results['cold /api/night']['median_ms']:.0f} ms"
        )
        print(f"\nload average at the end: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
        total = time.monotonic() - started
        print(f"benchmark runtime: {total:.0f} s")
        return finish(args, info, build_s, {"requests": results}, goals, total)
    finally:
        cleanup(tmp, args.keep)


if __name__ == "__main__":
    sys.exit(main())
