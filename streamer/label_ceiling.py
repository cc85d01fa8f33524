"""How well any grader can do on the simulator's own labels: the Bayes accuracy along the class
edges its draws share.

The simulator draws a class first and then its conditions (:func:`skygrade.streamer.sky_plan.
_draw_conditions`), and the distributions overlap at the edges: a GOOD exposure's seeing runs up
to 1.02" and a B_SEEING one's down to 1.00"; a BT trail starts at 1.2 FWHM, where an elliptical
optics PSF already stretches GOOD stars. Near an edge the same sky carries either label, so a
grader that measures the seeing or the trail with some noise cannot be right on every exposure.
This module draws many conditions per class (the training mix), adds a measurement noise to the
seeing (dex) and to the trail length (FWHM), and reads the Bayes accuracy: the share of
exposures whose class is the most frequent one among draws with the same observables. Which
classes have a sky problem and which trails are erratic is taken as seen perfectly, so the
number bounds the seeing and trail edges only; the other ambiguities (a faint scattered-light
arc, a short exposure of a sparse field) lower the true ceiling further. The decision per bin is
learned on one half of the draws and scored on the other (no small-bin optimism)::

    python -m skygrade.streamer.label_ceiling

docs/model.md (item 19) has the table and the held-out seeds' errors beside it.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence

import numpy as np

from skygrade.models.classes import CLASSES
from skygrade.streamer.sky_plan import PIXEL_SCALE, _draw_conditions

TRAINING_MIX = {"GOOD": 0.28, "B_SEEING": 0.18, "BGP": 0.18, "BT": 0.18, "RBT": 0.18}
"""The class mix of ``models/training.yaml`` (and of the held-out archives drawn with it)."""

NOISE_LEVELS = ((0.0, 0.0), (0.01, 0.1), (0.02, 0.15), (0.03, 0.2), (0.04, 0.25))
"""(seeing noise in dex, trail-length noise in FWHM) pairs the table prints."""


def draw_observables(
    n: int, seed: int = 0, mix: Mapping[str, float] = TRAINING_MIX
) -> dict[str, np.ndarray]:
    """``n`` exposures' labels and true observables, drawn as the simulator draws them:
    ``label`` (index into CLASSES), ``seeing`` (arcsec), ``trail`` (trail length in FWHM),
    ``erratic`` (a random-walk trail) and ``sky_problem`` (a BGP draw)."""
    rng = np.random.default_rng(seed)
    weights = np.array([mix.get(c, 0.0) for c in CLASSES], dtype=np.float64)
    labels = rng.choice(len(CLASSES), size=n, p=weights / weights.sum())
    seeing, trail, erratic = np.empty(n), np.empty(n), np.zeros(n, dtype=bool)
    for i, k in enumerate(labels):
        c = _draw_conditions(rng, CLASSES[k])
        seeing[i] = c["seeing"]
        trail[i] = c["trail_length"] / (c["seeing"] / PIXEL_SCALE)
        erratic[i] = c["trail_mode"] != "linear"
    return {
        "label": labels,
        "seeing": seeing,
        "trail": trail,
        "erratic": erratic,
        "sky_problem": labels == CLASSES.index("BGP"),
    }


def bayes_accuracy(
    obs: Mapping[str, np.ndarray], seeing_dex: float, trail_fwhm: float, seed: int = 1
) -> float:
    """Accuracy of the best grader that sees the seeing to ``seeing_dex`` (rms, dex) and the
    trail to ``trail_fwhm`` (rms, FWHM): the decision per bin of observables (1/60 dex of
    seeing, 0.025 dex of 0.5 FWHM + trail, erratic or not, sky problem or not) is the
    majority class of the first half of the draws, scored on the second half.

    >>> obs = draw_observables(4000)
    >>> bayes_accuracy(obs, 0.0, 0.0) > bayes_accuracy(obs, 0.05, 0.3)
    True
    """
    rng = np.random.default_rng(seed)
    label = np.asarray(obs["label"])
    n = len(label)
    log_see = np.log10(obs["seeing"]) + rng.normal(0.0, seeing_dex, n)
    trail = np.asarray(obs["trail"]) + rng.normal(0.0, trail_fwhm, n)
    see_bin = np.digitize(log_see, np.arange(-0.5, 0.5, 1.0 / 60))
    trail_bin = np.digitize(np.log10(np.maximum(trail, 0.0) + 0.5), np.arange(-0.4, 1.6, 0.025))
    key = ((see_bin * 1000 + trail_bin) * 2 + obs["erratic"]) * 2 + obs["sky_problem"]
    fit, score = np.arange(n) % 2 == 0, np.arange(n) % 2 == 1
    counts: dict[int, np.ndarray] = {}
    for k, lab in zip(key[fit].tolist(), label[fit].tolist(), strict=True):
        counts.setdefault(k, np.zeros(len(CLASSES), dtype=np.int64))[lab] += 1
    fallback = int(np.bincount(label[fit], minlength=len(CLASSES)).argmax())
    guess = np.array([int(counts[k].argmax()) if k in counts else fallback for k in key[score]])
    return float(np.mean(guess == label[score]))


def ceiling_table(
    n: int = 400_000, seed: int = 0, levels: Sequence[tuple[float, float]] = NOISE_LEVELS
) -> str:
    """A markdown table of the Bayes accuracy at each noise level of ``levels``."""
    obs = draw_observables(n, seed)
    lines = [
        "| seeing noise (dex) | trail noise (FWHM) | Bayes accuracy |",
        "|---:|---:|---:|",
    ]
    for see, trail in levels:
        lines.append(f"| {see:.2f} | {trail:.2f} | {bayes_accuracy(obs, see, trail):.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skygrade.streamer.label_ceiling",
        description="Print the Bayes accuracy of the simulator's labels along its seeing and "
        "trail class edges, for several measurement noises (docs/model.md item 19).",
    )
    parser.add_argument("--n", type=int, default=400_000, help="exposures drawn (default 400000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    args = parser.parse_args(argv)
    if args.n < 100:
        parser.error(f"--n must be at least 100, got {args.n}")
    print(ceiling_table(args.n, args.seed))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
