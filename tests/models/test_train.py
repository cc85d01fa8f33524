import numpy as np
import pytest

from skygrade.models.classes import CLASSES
from skygrade.models.cnn import CnnShape
from skygrade.models.train import (
    Dataset,
    TrainSettings,
    classification_metrics,
    expected_calibration_error,
    exposure_probabilities,
    predict,
    split_exposures,
    train_cnn,
    train_ensemble,
)


def catalog(n_nights, per_night):
    return [
        (f"{n}{i:03d}", f"2026-11-{n + 1:02d}", CLASSES[(n + i) % len(CLASSES)])
        for n in range(n_nights)
        for i in range(per_night)
    ]


def test_split_holds_out_whole_nights_when_there_are_enough():
    exposures = catalog(10, 20)
    s = split_exposures(exposures, 0.15, 0.2, seed=1)
    assert s.by == "night"
    night = {e[0]: e[1] for e in exposures}
    test_nights = {night[e] for e in s.test}
    assert len(test_nights) == 2
    assert not test_nights & {night[e] for e in s.train + s.val}
    assert set(s.train) | set(s.val) | set(s.test) == {e[0] for e in exposures}
    assert not (set(s.train) & set(s.val)) and not (set(s.train) & set(s.test))
    assert s == split_exposures(exposures, 0.15, 0.2, seed=1)


def test_split_by_exposure_is_stratified_when_nights_are_few():
    s = split_exposures(catalog(2, 50), 0.2, 0.2, seed=0)
    assert s.by == "exposure"
    labels = {e[0]: e[2] for e in catalog(2, 50)}
    for c in CLASSES:
        assert sum(labels[e] == c for e in s.test) == 4
    with pytest.raises(ValueError, match="unique"):
        split_exposures([("a", "n", "GOOD"), ("a", "n", "BT")])


def test_metrics_on_a_hand_made_table():
    truth = np.array([0, 0, 1, 3])
    probs = np.eye(5)[[0, 1, 1, 3]] * 0.8 + 0.04
    m = classification_metrics(truth, probs)
    assert m["accuracy"] == 0.75
    assert m["recall"]["GOOD"] == 0.5 and m["precision"]["B_SEEING"] == 0.5
    assert m["recall"]["BGP"] is None
    assert m["confusion"][0][1] == 1
    assert m["macro_f1"] == pytest.approx(np.mean([2 / 3, 2 / 3, 1.0]))
    assert expected_calibration_error(truth, probs) == pytest.approx(abs(0.75 - 0.84))


def easy_dataset(n, rng, shape):
    """Each class lights one hit bin and has a distinctive image level."""
    label = rng.integers(0, 5, n)
    vector = rng.random((n, shape.n_clusters + shape.n_aux), dtype=np.float32) * 0.1
    vector[np.arange(n), label] += 1.0
    image = rng.random((n, 4 * shape.tile, 5 * shape.tile), dtype=np.float32) * 0.1
    image += label[:, None, None] * 0.2
    exposure = np.array([f"e{i // 4}" for i in range(n)], dtype=object)
    return Dataset(image, vector, np.ones(n, np.float32), label, exposure)


def test_train_cnn_learns_and_stops_early():
    shape = CnnShape(tile=8)
    rng = np.random.default_rng(0)
    train, val = easy_dataset(200, rng, shape), easy_dataset(100, rng, shape)
    seen = []
    model, history = train_cnn(
        train, val, shape, TrainSettings(epochs=8, patience=3, batch_size=32), seen.append
    )
    assert seen == history
    probs = predict(model, val)
    assert np.mean(probs.argmax(1) == val.label) > 0.9
    ids, truth, exp_probs = exposure_probabilities(val, probs)
    assert len(ids) == 25 and exp_probs.shape == (25, 5)
    np.testing.assert_allclose(exp_probs.sum(1), 1)


def test_train_ensemble_trains_members_with_consecutive_seeds():
    shape = CnnShape(tile=8)
    rng = np.random.default_rng(0)
    train, val = easy_dataset(120, rng, shape), easy_dataset(40, rng, shape)
    settings = TrainSettings(epochs=3, patience=3, batch_size=32, seed=5, ensemble=2)
    seen = []
    ensemble, histories = train_ensemble(train, val, shape, settings, seen.append)
    assert len(ensemble) == 2 and len(histories) == 2 and not ensemble.training
    assert [e["member"] for e in seen] == [0] * len(histories[0]) + [1] * len(histories[1])
    # member i is what a single run with seed + i trains
    single, _ = train_cnn(
        train, val, shape, TrainSettings(epochs=3, patience=3, batch_size=32, seed=6)
    )
    np.testing.assert_allclose(predict(ensemble.members[1], val), predict(single, val), atol=1e-6)
    geo = np.exp(np.mean([np.log(predict(m, val)) for m in ensemble.members], axis=0))
    np.testing.assert_allclose(predict(ensemble, val), geo / geo.sum(1, keepdims=True), atol=1e-6)
    with pytest.raises(ValueError, match="ensemble must be >= 1"):
        train_ensemble(train, val, shape, TrainSettings(ensemble=0))


def test_dataset_subset_keeps_whole_exposures():
    d = easy_dataset(12, np.random.default_rng(0), CnnShape(tile=8))
    sub = d.subset(["e0", "e2"])
    assert len(sub) == 8 and set(sub.exposure) == {"e0", "e2"}
