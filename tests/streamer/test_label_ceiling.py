"""The Bayes ceiling of the simulator's labels (docs/model.md item 19)."""

import json

import pytest
from astropy.io import fits

from skygrade.models.classes import CLASSES
from skygrade.streamer.label_ceiling import (
    archive_observables,
    bayes_accuracy,
    best_grader_right,
    draw_observables,
    main,
)


@pytest.fixture(scope="module")
def obs():
    return draw_observables(30_000, seed=3)


def test_the_draws_follow_the_class_edges(obs):
    label, seeing, trail = obs["label"], obs["seeing"], obs["trail"]
    good, bad = label == CLASSES.index("GOOD"), label == CLASSES.index("B_SEEING")
    assert seeing[good].max() <= 1.02 and seeing[bad].min() >= 1.0
    assert trail[label == CLASSES.index("BT")].min() >= 1.2
    assert obs["erratic"][label == CLASSES.index("RBT")].all()
    assert not obs["erratic"][label != CLASSES.index("RBT")].any()


def test_the_ceiling_falls_with_the_measurement_noise(obs):
    exact = bayes_accuracy(obs, 0.0, 0.0)
    levels = [bayes_accuracy(obs, s, t) for s, t in ((0.01, 0.1), (0.03, 0.2), (0.06, 0.4))]
    assert 0.98 < exact <= 1.0
    assert exact >= levels[0] > levels[1] > levels[2] > 0.8
    # only the seeing edge is noisy: the GOOD / B_SEEING confusion is what is lost
    assert bayes_accuracy(obs, 0.06, 0.0) < exact - 0.01


def test_main_prints_the_table_and_refuses_a_tiny_draw(capsys):
    assert main(["--n", "2000"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("| seeing noise (dex)") and out.count("\n") == 7
    with pytest.raises(SystemExit):
        main(["--n", "10"])
    assert "--n must be at least 100" in capsys.readouterr().err


def _exposure(path, label, seeing, trail_px, mode="linear"):
    h = fits.Header()
    h["SIMCLASS"], h["SIMSEEIN"], h["SIMTRAIL"], h["SIMTRMOD"] = label, seeing, trail_px, mode
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(header=h).writeto(path)


def test_held_out_exposures_at_an_edge_cost_what_the_edge_costs(obs, tmp_path, capsys):
    """A GOOD exposure at 0.7" is always right; one at 1.02", where B_SEEING draws pile up at
    1.00", is wrong for the Bayes grader even without noise; a 4-FWHM linear trail is BT."""
    night = tmp_path / "archive" / "2026-10-10"
    _exposure(night / "1000001o.fits", "GOOD", 0.70, 0.5)
    _exposure(night / "1000002o.fits", "GOOD", 1.02, 0.5)
    _exposure(night / "1000003o.fits", "BT", 0.70, 4.0 * 0.70 / 0.187)
    held = archive_observables(tmp_path / "archive")
    assert held["label"].tolist() == [0, 0, CLASSES.index("BT")]
    assert held["trail"][2] == pytest.approx(4.0)
    one = {k: v[:1] for k, v in held.items()}
    edge = {k: v[1:2] for k, v in held.items()}
    trail = {k: v[2:] for k, v in held.items()}
    assert best_grader_right(obs, one, 0.02, 0.15).mean() == 1.0
    assert best_grader_right(obs, edge, 0.0, 0.0).mean() == 0.0
    assert best_grader_right(obs, trail, 0.02, 0.15).mean() == 1.0
    assert main(["--n", "3000", str(tmp_path / "archive")]) == 0
    assert "archive (3)" in capsys.readouterr().out.splitlines()[0]


def test_an_archive_without_truth_headers_is_refused_with_its_path(tmp_path, capsys):
    fits.PrimaryHDU().writeto(tmp_path / "2000001o.fits")
    assert main(["--n", "500", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "2000001o.fits" in err and "SIMCLASS" in err
    assert main(["--n", "500", str(tmp_path / "none")]) == 2
    assert "no simulated exposure" in capsys.readouterr().err


def test_a_bundles_grades_are_split_on_and_off_the_class_edges(tmp_path, capsys):
    night = tmp_path / "held" / "2026-10-10"
    _exposure(night / "1000001o.fits", "GOOD", 0.70, 0.5)  # clear
    _exposure(night / "1000002o.fits", "GOOD", 1.02, 0.5)  # on the seeing edge
    _exposure(night / "1000003o.fits", "B_SEEING", 1.60, 1.0)  # clear
    rows = [
        {"exposure_id": "1000001", "label": "GOOD", "grade": "GOOD"},
        {"exposure_id": "1000002", "label": "GOOD", "grade": "B_SEEING"},
        {"exposure_id": "1000003", "label": "B_SEEING", "grade": "GOOD"},
    ]
    report = tmp_path / "r-held"
    report.mkdir()
    (report / "report.json").write_text(json.dumps({"agreement": {"rows": rows}}))
    args = ["--n", "20000", str(tmp_path / "held"), "--report", str(tmp_path / "r-{archive}")]
    assert main(args) == 0
    assert "| held | 0 / 1 | 1 / 2 |" in capsys.readouterr().out
    with pytest.raises(SystemExit):
        main(["--report", str(tmp_path / "r-{archive}")])
    assert "--report needs the archives" in capsys.readouterr().err
    assert main(["--n", "500", str(tmp_path / "held"), "--report", str(tmp_path / "x")]) == 2
    assert "x" in capsys.readouterr().err


def test_the_class_mix_comes_from_the_recipe_and_a_bad_one_is_refused(tmp_path, capsys):
    one = tmp_path / "good-only.yaml"
    one.write_text("telescope:\n  class_mix: {GOOD: 1.0}\n")
    assert main(["--n", "2000", "--config", str(one)]) == 0
    assert "| 0.04 | 0.25 | 1.000 |" in capsys.readouterr().out  # one class: nothing to confuse
    bad = tmp_path / "bad.yaml"
    bad.write_text("telescope:\n  class_mix: {GOD: 1.0}\n")
    assert main(["--n", "2000", "--config", str(bad)]) == 2
    assert "bad.yaml" in capsys.readouterr().err
