"""The evaluation report for people: Markdown (``report.md``) and the confusion PNG.

What is measured, and the JSON-ready report itself, are :mod:`skygrade.models.evaluate`'s
(:func:`~skygrade.models.evaluate.build_report`); this module only lays that out for a reader.
``skygrade evaluate`` (:mod:`skygrade.streamer.evaluate`) writes both files.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from skygrade.models.evaluate import MODES
from skygrade.ops.files import atomic_path


def _pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}%"


def _f(x, digits: int = 3) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def render_markdown(report: dict) -> str:
    """The report as Markdown: scope, side-by-side table, per-mode metrics, baseline rules.

    Parameters
    ----------
    report : dict
        From :func:`skygrade.models.evaluate.build_report`.
    """
    classes = report["classes"]
    b = report["bundle"]
    lines = [
        "# skygrade evaluation",
        "",
        f"Bundle `{b.get('path')}` (version {b.get('version')}"
        + (f", an ensemble of {b['members']} networks" if b.get("members", 1) > 1 else "")
        + f") on archive `{report['archive']}`.",
        "",
        f"**Exposures evaluated.** {report['scope']['text']}",
        "",
        *_recorded_line(report),
        "## Side by side",
        "",
        report["comparison"]["text"],
        "",
        "| method | exposures | exposure accuracy | macro-F1 | ECE | CCD accuracy |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["comparison"]["rows"]:
        lines.append(
            f"| {r['label']} | {r['n_exposures']} | {_pct(r['exposure_accuracy'])} | "
            f"{_f(r['exposure_macro_f1'])} | {_f(r['exposure_ece'])} | {_pct(r['ccd_accuracy'])} |"
        )
    lines += ["", *(f"- {n}" for n in report["notes"]), ""]
    a = report.get("agreement")
    if a and a["n_also"]:
        lines += [
            "## Agreement with the person",
            "",
            f"{a['n_agree']} of {a['n']} exposures agree (a grade in `label` or `also`); "
            f"{a['n_exact']} with `label` alone.",
            "",
            "| exposure | label | also | graded | confidence | agrees |",
            "|---|---|---|---|---:|---|",
            *(
                f"| {r['exposure_id']} | {r['label']} | {'/'.join(r['also']) or '-'} | "
                f"{r['grade']} | {r['confidence']:.2f} | {'yes' if r['agree'] else 'no'} |"
                for r in a["rows"]
            ),
            "",
        ]
    for mode, m in report["cnn"].items():
        if mode == "hits_only":
            continue  # the same numbers as catalog mode
        lines += [f"## {MODES[mode]}", ""]
        if mode == "full":
            lines += ["Exposure-level confusion matrix: `confusion.png`.", ""]
        lines += _metrics_table(m, classes)
    base = report["baseline"]
    lines += [
        "## Traditional baseline: threshold tree",
        "",
        f"Fitted on {base['fit_on']}: greedy Gini splits, depth <= {base['depth']}, at least "
        f"{base['min_leaf']} exposure(s) per leaf, classes weighted by inverse frequency. "
        "Statistics per exposure:",
        "",
        *(f"- `{name}`: {text}" for name, text in report["statistics"].items()),
        "",
        "Learned rules (one per leaf, disjoint; a missing statistic takes the training median):",
        "",
        *(f"{i}. `{rule}`" for i, rule in enumerate(base["rules"], start=1)),
        "",
    ]
    if base.get("metrics"):
        lines += _metrics_table({"exposure": base["metrics"]}, classes)
    return "\n".join(lines).rstrip() + "\n"


def _recorded_line(report: dict) -> list[str]:
    recorded = report["bundle"].get("recorded", {}).get("full", {}).get("exposure")
    if not recorded or report["scope"].get("kind") != "held_out_test":
        return []
    here = report["cnn"]["full"]["exposure"]
    return [
        f"Cross-check: at training time the bundle recorded a held-out exposure accuracy of "
        f"{_pct(recorded['accuracy'])} on {recorded['n']} exposures; this evaluation finds "
        f"{_pct(here['accuracy'])} on {here['n']}.",
        "",
    ]


def _metrics_table(m: Mapping[str, dict], classes: Sequence[str]) -> list[str]:
    lines = [
        "| level | n | accuracy | macro-F1 | ECE |",
        "|---|---:|---:|---:|---:|",
    ]
    for level in ("exposure", "ccd"):
        if level in m:
            x = m[level]
            lines.append(
                f"| {level} | {x['n']} | {_pct(x['accuracy'])} | {_f(x['macro_f1'])} | "
                f"{_f(x['ece'])} |"
            )
    lines += [
        "",
        "| class | true exposures | recall | precision |"
        + (" CCD recall | CCD precision |" if "ccd" in m else ""),
        "|---|---:|---:|---:|" + ("---:|---:|" if "ccd" in m else ""),
    ]
    e = m["exposure"]
    for i, c in enumerate(classes):
        n_true = sum(e["confusion"][i])
        row = f"| {c} | {n_true} | {_pct(e['recall'][c])} | {_pct(e['precision'][c])} |"
        if "ccd" in m:
            row += f" {_pct(m['ccd']['recall'][c])} | {_pct(m['ccd']['precision'][c])} |"
        lines.append(row)
    return [*lines, ""]


def plot_confusion(
    confusion, classes: Sequence[str], path: str | os.PathLike, title: str = ""
) -> Path:
    """Draw a confusion matrix (rows: truth, columns: prediction) to a PNG.

    Uses matplotlib's Agg canvas directly (no pyplot, no global backend switch).

    Parameters
    ----------
    confusion : array-like
        (k, k) counts.
    classes : sequence of str
        The k class names.
    path : path-like
        PNG to write.
    title : str
        Figure title.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    cm = np.asarray(confusion, dtype=float)
    k = len(classes)
    if cm.shape != (k, k):
        raise ValueError(f"confusion must have shape ({k}, {k}), got {cm.shape}")
    rows = cm.sum(1, keepdims=True)
    frac = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    fig = Figure(figsize=(1.2 * k + 1.5, 1.1 * k + 1.2))
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    im = ax.imshow(frac, cmap="Blues", vmin=0, vmax=1)
    for i in range(k):
        for j in range(k):
            ax.text(
                j,
                i,
                f"{int(cm[i, j])}",
                ha="center",
                va="center",
                color="white" if frac[i, j] > 0.5 else "black",
            )
    ax.set_xticks(range(k), classes, rotation=30, ha="right")
    ax.set_yticks(range(k), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="fraction of true class")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    return path
