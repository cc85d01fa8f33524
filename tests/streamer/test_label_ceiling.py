"""The Bayes ceiling of the simulator's labels (docs/model.md item 19)."""

import pytest

from skygrade.models.classes import CLASSES
from skygrade.streamer.label_ceiling import bayes_accuracy, draw_observables, main


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
