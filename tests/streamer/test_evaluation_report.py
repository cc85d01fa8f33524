"""The evaluation report for people: the Markdown of a report and the confusion PNG."""

import numpy as np
import pytest

from skygrade.models.classes import CLASSES
from skygrade.models.evaluate import MODES, build_report, comparison_rows
from skygrade.models.train import classification_metrics
from skygrade.streamer.evaluation_report import plot_confusion, render_markdown


def _metrics(truth, pred):
    return classification_metrics(np.array(truth), np.eye(len(CLASSES))[pred])


def _report() -> dict:
    exact = {
        "exposure": _metrics([0, 1, 4], [0, 1, 4]),
        "ccd": _metrics([0, 0, 1, 4], [0, 0, 1, 4]),
    }
    cnn = {mode: exact for mode in MODES}
    base = _metrics([0, 1, 4], [0, 0, 4])
    return build_report(
        bundle={"path": "b", "version": "v1"},
        archive="arch",
        scope={"kind": "independent", "text": "All 3 exposures."},
        cnn=cnn,
        baseline={
            "fit_on": "the bundle's 9 training exposures",
            "n_fit": 9,
            "depth": 3,
            "min_leaf": 2,
            "rules": ["elongation > 1.7 -> RBT (4 training exposures: 4 RBT)"],
            "metrics": base,
        },
        comparison={"text": "Same 3 exposures.", "rows": comparison_rows(cnn, base)},
    )


def test_markdown_has_the_side_by_side_table_the_rules_and_the_notes():
    text = render_markdown(_report())
    assert "| method | exposures | exposure accuracy | macro-F1 | ECE | CCD accuracy |" in text
    for label in MODES.values():
        assert f"| {label} | 3 | 100.0% |" in text
    assert "| threshold tree on catalog statistics | 3 | 66.7% |" in text
    assert "`elongation > 1.7 -> RBT (4 training exposures: 4 RBT)`" in text
    assert "not retrained models" in text


def test_confusion_png_is_drawn_and_a_wrong_shape_refused(tmp_path):
    confusion = _report()["cnn"]["full"]["exposure"]["confusion"]
    png = plot_confusion(confusion, CLASSES, tmp_path / "c.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match=r"confusion must have shape \(5, 5\)"):
        plot_confusion(np.zeros((2, 2)), CLASSES, tmp_path / "bad.png")
