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

    python -m skygrade.streamer.label_ceiling [HELD-OUT-ARCHIVE ...]

With simulated archives named (held-out nights), it also prints the Bayes grader's expected
accuracy on their exposures, from their truth headers; with ``--report`` (a bundle's ``skygrade
evaluate`` report of each), the bundle's exposures right on the class edges and off them.
docs/model.md (item 19) has the table and the held-out seeds' errors beside it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from astropy.io import fits

from skygrade.models.classes import CLASSES
from skygrade.ops.config import load_config
from skygrade.streamer.compare_reports import read_report
from skygrade.streamer.sky_plan import PIXEL_SCALE, _draw_conditions
from skygrade.transforms.exposure import exposure_id_from_path

TRAINING_CONFIG = Path(__file__).resolve().parents[1] / "models" / "training.yaml"
"""The shipped bundle's recipe, whose ``telescope.class_mix`` the training and held-out
archives were drawn with."""


def training_mix(config: str | Path = TRAINING_CONFIG) -> dict[str, float]:
    """The ``telescope.class_mix`` of a configuration file (default: the shipped recipe's)."""
    return dict(load_config(config).telescope.class_mix)


NOISE_LEVELS = ((0.0, 0.0), (0.01, 0.1), (0.02, 0.15), (0.03, 0.2), (0.04, 0.25))
"""(seeing noise in dex, trail-length noise in FWHM) pairs the table prints."""


def draw_observables(
    n: int, seed: int = 0, mix: Mapping[str, float] | None = None
) -> dict[str, np.ndarray]:
    """``n`` exposures' labels and true observables, drawn as the simulator draws them in the
    class ``mix`` (default: :func:`training_mix`):
    ``label`` (index into CLASSES), ``seeing`` (arcsec), ``trail`` (trail length in FWHM),
    ``erratic`` (a random-walk trail) and ``sky_problem`` (a BGP draw)."""
    rng = np.random.default_rng(seed)
    mix = training_mix() if mix is None else mix
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


def _noisy_keys(
    obs: Mapping[str, np.ndarray], seeing_dex: float, trail_fwhm: float, rng: np.random.Generator
) -> np.ndarray:
    """Each exposure's bin of observables, measured with the given noise (1/60 dex of seeing,
    0.025 dex of 0.5 FWHM + trail, erratic or not, sky problem or not)."""
    n = len(obs["label"])
    log_see = np.log10(obs["seeing"]) + rng.normal(0.0, seeing_dex, n)
    trail = np.asarray(obs["trail"]) + rng.normal(0.0, trail_fwhm, n)
    see_bin = np.digitize(log_see, np.arange(-0.5, 0.5, 1.0 / 60))
    trail_bin = np.digitize(np.log10(np.maximum(trail, 0.0) + 0.5), np.arange(-0.4, 1.6, 0.025))
    erratic = np.asarray(obs["erratic"], dtype=np.int64)
    sky = np.asarray(obs["sky_problem"], dtype=np.int64)
    return ((see_bin * 1000 + trail_bin) * 2 + erratic) * 2 + sky


def _decisions(keys: np.ndarray, labels: np.ndarray) -> tuple[dict[int, int], int]:
    """The majority class of each bin, and the overall majority for a bin never seen."""
    counts: dict[int, np.ndarray] = {}
    for k, lab in zip(keys.tolist(), np.asarray(labels).tolist(), strict=True):
        counts.setdefault(k, np.zeros(len(CLASSES), dtype=np.int64))[lab] += 1
    fallback = int(np.bincount(labels, minlength=len(CLASSES)).argmax())
    return {k: int(c.argmax()) for k, c in counts.items()}, fallback


def bayes_accuracy(
    obs: Mapping[str, np.ndarray], seeing_dex: float, trail_fwhm: float, seed: int = 1
) -> float:
    """Accuracy of the best grader that sees the seeing to ``seeing_dex`` (rms, dex) and the
    trail to ``trail_fwhm`` (rms, FWHM): the decision per bin of observables is the majority
    class of the first half of the draws, scored on the second half.

    >>> obs = draw_observables(4000)
    >>> bayes_accuracy(obs, 0.0, 0.0) > bayes_accuracy(obs, 0.05, 0.3)
    True
    """
    rng = np.random.default_rng(seed)
    label = np.asarray(obs["label"])
    key = _noisy_keys(obs, seeing_dex, trail_fwhm, rng)
    fit, score = np.arange(len(label)) % 2 == 0, np.arange(len(label)) % 2 == 1
    decide, fallback = _decisions(key[fit], label[fit])
    guess = np.array([decide.get(k, fallback) for k in key[score].tolist()])
    return float(np.mean(guess == label[score]))


def archive_observables(root: str | Path) -> dict[str, np.ndarray]:
    """The true observables of a simulated archive's exposures, from their truth headers
    (SIMCLASS, SIMSEEIN, SIMTRAIL, SIMTRMOD; ``*.fits`` and ``*.fits.fz`` under ``root``), and
    their ``exposure_id`` (EXPNUM)."""
    rows = []
    for path in sorted(Path(root).rglob("*.fits*")):
        if not path.name.endswith((".fits", ".fits.fz")):
            continue
        h = fits.getheader(path, 0)
        if "SIMCLASS" not in h:
            raise ValueError(f"{path}: no SIMCLASS truth header (not drawn by the simulator)")
        fwhm_px = float(h["SIMSEEIN"]) / PIXEL_SCALE
        rows.append(
            (
                str(h.get("EXPNUM", exposure_id_from_path(path))),
                CLASSES.index(str(h["SIMCLASS"]).strip()),
                float(h["SIMSEEIN"]),
                float(h["SIMTRAIL"]) / fwhm_px,
                str(h["SIMTRMOD"]).strip() != "linear",
            )
        )
    if not rows:
        raise ValueError(f"{root}: no simulated exposure (*.fits, *.fits.fz) found")
    ids, label, seeing, trail, erratic = (np.array(c) for c in zip(*rows, strict=True))
    return {
        "exposure_id": ids,
        "label": label,
        "seeing": seeing,
        "trail": trail,
        "erratic": erratic.astype(bool),
        "sky_problem": label == CLASSES.index("BGP"),
    }


def best_grader_right(
    reference: Mapping[str, np.ndarray],
    exposures: Mapping[str, np.ndarray],
    seeing_dex: float,
    trail_fwhm: float,
    repeats: int = 100,
    seed: int = 2,
) -> np.ndarray:
    """Per exposure of ``exposures`` (e.g. a held-out archive), the share of ``repeats`` noisy
    measurements on which the best grader (its decisions learned from the ``reference`` draws)
    names the exposure's label: near 1 away from every edge, near 0 where another class's
    draws outnumber its own."""
    rng = np.random.default_rng(seed)
    decide, fallback = _decisions(
        _noisy_keys(reference, seeing_dex, trail_fwhm, rng), np.asarray(reference["label"])
    )
    fields = ("label", "seeing", "trail", "erratic", "sky_problem")
    tiled = {k: np.repeat(np.asarray(exposures[k]), repeats) for k in fields}
    keys = _noisy_keys(tiled, seeing_dex, trail_fwhm, rng)
    guess = np.array([decide.get(k, fallback) for k in keys.tolist()])
    return (guess == tiled["label"]).reshape(-1, repeats).mean(axis=1)


AMBIGUOUS = 0.9
"""An exposure the best grader gets right less often than this is on a class edge."""


def split_by_edge(
    reference: Mapping[str, np.ndarray],
    exposures: Mapping[str, np.ndarray],
    right: Mapping[str, bool],
    seeing_dex: float = 0.024,
    trail_fwhm: float = 0.15,
) -> dict[str, tuple[int, int]]:
    """A bundle's exposures right (``right``: exposure id -> graded right, from its evaluation
    report) on the exposures of an archive that sit on a class edge (the best grader right less
    than :data:`AMBIGUOUS` of the time) and on the others: ``{"edge": (right, n), "clear": ...}``.
    The default noise is the stellar-locus statistic's (docs/model.md item 19)."""
    ok = best_grader_right(reference, exposures, seeing_dex, trail_fwhm, repeats=200)
    out = {"edge": [0, 0], "clear": [0, 0]}
    for eid, p in zip(np.asarray(exposures["exposure_id"]).tolist(), ok.tolist(), strict=True):
        if eid in right:
            cell = out["edge" if p < AMBIGUOUS else "clear"]
            cell[0] += int(right[eid])
            cell[1] += 1
    return {k: (v[0], v[1]) for k, v in out.items()}


def ceiling_table(
    n: int = 400_000,
    seed: int = 0,
    levels: Sequence[tuple[float, float]] = NOISE_LEVELS,
    archives: Sequence[str | Path] = (),
    mix: Mapping[str, float] | None = None,
) -> str:
    """A markdown table of the Bayes accuracy at each noise level of ``levels``: over the
    simulator's draws (in the class ``mix``), and expected on each simulated archive of
    ``archives``."""
    obs = draw_observables(n, seed, mix)
    held = {Path(a).name: archive_observables(a) for a in archives}
    head = "| seeing noise (dex) | trail noise (FWHM) | Bayes accuracy |"
    rule = "|---:|---:|---:|"
    for name, o in held.items():
        head += f" {name} ({len(o['label'])}) |"
        rule += "---:|"
    lines = [head, rule]
    for see, trail in levels:
        row = f"| {see:.2f} | {trail:.2f} | {bayes_accuracy(obs, see, trail):.3f} |"
        for o in held.values():
            row += f" {best_grader_right(obs, o, see, trail).mean():.3f} |"
        lines.append(row)
    return "\n".join(lines)


def edge_table(
    template: str,
    archives: Sequence[str | Path],
    n: int = 400_000,
    seed: int = 0,
    mix: Mapping[str, float] | None = None,
) -> str:
    """A markdown table of a bundle's exposures right on and off the class edges, per archive
    (its report at ``template`` with ``{archive}`` replaced by the archive's folder name)."""
    obs = draw_observables(n, seed, mix)
    lines = [
        "| archive | on an edge: right / exposures | elsewhere: right / exposures |",
        "|---|---:|---:|",
    ]
    for root in archives:
        right = read_report(template.replace("{archive}", Path(root).name))
        cells = split_by_edge(obs, archive_observables(root), right)
        (a, m), (b, k) = cells["edge"], cells["clear"]
        lines.append(f"| {Path(root).name} | {a} / {m} | {b} / {k} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m skygrade.streamer.label_ceiling",
        description="Print the Bayes accuracy of the simulator's labels along its seeing and "
        "trail class edges, for several measurement noises (docs/model.md item 19).",
    )
    parser.add_argument("--n", type=int, default=400_000, help="exposures drawn (default 400000)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    parser.add_argument(
        "--config",
        default=str(TRAINING_CONFIG),
        help="configuration whose telescope.class_mix the archives were drawn with (default: "
        "models/training.yaml, the shipped recipe)",
    )
    parser.add_argument(
        "archives",
        nargs="*",
        help="simulated archives (e.g. held-out nights) to give the expected Bayes accuracy on",
    )
    parser.add_argument(
        "--report",
        metavar="TEMPLATE",
        help="a bundle's skygrade evaluate report directory per archive, {archive} standing for "
        "each archive's folder name: prints the bundle's exposures right on and off the class "
        "edges",
    )
    args = parser.parse_args(argv)
    if args.report and not args.archives:
        parser.error("--report needs the archives it reports on")
    if args.n < 100:
        parser.error(f"--n must be at least 100, got {args.n}")
    try:
        mix = training_mix(args.config)
        print(ceiling_table(args.n, args.seed, archives=args.archives, mix=mix))
        if args.report:
            print()
            print(edge_table(args.report, args.archives, args.n, args.seed, mix))
    except (OSError, ValueError) as exc:
        print(f"label_ceiling: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
