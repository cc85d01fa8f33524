"""Benchmark: CNN scoring of one full exposure (36 CCDs) on one CPU core.

Run ``.venv/bin/python benchmarks/score.py`` (``--help`` for options; a few seconds).

The shipped bundle's ensemble scores 36 CCDs (a representative image and a hit vector each,
image present) with ``torch.set_num_threads(1)``: the issue's budget is 50 ms. Side by side in
one run it also times the members one by one (what the fused pass replaces) and one member
alone, so the fused pass's ratio and the per-member cost are printed from the same run.

Inputs are the bundle's shapes filled with seeded noise: the network's cost does not depend on
the values.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import torch

from skygrade.models.bundle import load_bundle
from skygrade.models.cnn import predict_proba
from skygrade.models.mosaic import tile_grid

DEFAULT_BUNDLE = Path(__file__).resolve().parents[1] / "models" / "default"
BUDGET_MS = 50.0


def _time(fn, repeats: int) -> tuple[float, float]:
    fn()  # warm-up: first-call allocations
    runs = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        runs.append((time.perf_counter() - start) * 1e3)
    runs.sort()
    return statistics.median(runs), runs[int(0.9 * (len(runs) - 1))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, default=DEFAULT_BUNDLE, help="model bundle")
    parser.add_argument("--ccds", type=int, default=36, help="CCDs per exposure (default 36)")
    parser.add_argument("--repeats", type=int, default=50, help="timed runs per variant")
    args = parser.parse_args(argv)

    torch.set_num_threads(1)
    bundle = load_bundle(args.bundle)
    shape = bundle.manifest["cnn"]["shape"]
    rows, cols = tile_grid(shape["n_clusters"])
    rng = np.random.default_rng(0)
    image = rng.random((args.ccds, rows * shape["tile"], cols * shape["tile"]), np.float32)
    vector = rng.random((args.ccds, shape["n_clusters"] + shape["n_aux"]), np.float32)
    present = np.ones(args.ccds, np.float32)

    model = bundle.cnn
    members = list(model) if hasattr(model, "__iter__") else [model]

    def fused():
        predict_proba(model, image, vector, present)

    def one_by_one():
        for m in members:
            predict_proba(m, image, vector, present)

    def one_member():
        predict_proba(members[0], image, vector, present)

    print(
        f"bundle {args.bundle} ({len(members)} member(s)), {args.ccds} CCDs, 1 thread, "
        f"{args.repeats} runs each"
    )
    results = {}
    for name, fn in (("fused", fused), ("one by one", one_by_one), ("one member", one_member)):
        results[name] = _time(fn, args.repeats)
        median, p90 = results[name]
        print(f"  {name:11s} median {median:6.1f} ms  p90 {p90:6.1f} ms")
    median = results["fused"][0]
    print(
        f"fused / one-by-one: {median / results['one by one'][0]:.2f}x; "
        f"fused / budget {BUDGET_MS:.0f} ms: {median / BUDGET_MS:.2f}x "
        f"({'within' if median < BUDGET_MS else 'OVER'} budget)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
