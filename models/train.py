"""Training the CNN and measuring it: leakage-free splits, the training loop, metrics.

Plain numpy + torch. The samples are CCDs, the labels are the exposures' grades; every split
is made over exposures (and, when there are enough nights, over whole nights), never over CCDs,
so no exposure and no night sits on both sides (a reported 0.999 accuracy on this task
elsewhere came from CCDs of one exposure on both sides of a split).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

import numpy as np
import torch
from torch import nn

from skygrade.models.aggregate import combine
from skygrade.models.classes import CLASSES
from skygrade.models.cnn import CnnShape, DualInputNet, EnsembleNet, predict_proba

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- splits


@dataclass(frozen=True)
class Split:
    train: tuple[str, ...]
    val: tuple[str, ...]
    test: tuple[str, ...]
    by: str
    """"night" when whole nights were held out, else "exposure"."""


def split_exposures(
    exposures: Sequence[tuple[str, str, str]],
    val_fraction: float = 0.15,
    test_fraction: float = 0.2,
    seed: int = 0,
) -> Split:
    """Assign exposures to train / validation / test without leakage.

    Parameters
    ----------
    exposures : sequence of (exposure_id, night, label)
        One entry per exposure.
    val_fraction, test_fraction : float
        Approximate shares of the held-out parts.
    seed : int
        Seeds the assignment (the same inputs and seed give the same split).

    With at least 5 distinct nights, whole nights go to the test part (other nights, other
    conditions: the honest estimate of how a new night will be graded); validation is then
    drawn per exposure from the remaining nights, stratified by label. With fewer nights
    both held-out parts are drawn per exposure, stratified by label.
    """
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1:
        raise ValueError("val_fraction and test_fraction must be in [0, 1)")
    ids = [e[0] for e in exposures]
    if len(set(ids)) != len(ids):
        raise ValueError("exposure ids must be unique")
    rng = np.random.default_rng(seed)
    nights = sorted({e[1] for e in exposures})
    test: set[str] = set()
    by = "exposure"
    if len(nights) >= 5 and test_fraction > 0:
        n_test = max(1, round(test_fraction * len(nights)))
        test_nights = set(rng.choice(nights, n_test, replace=False).tolist())
        test = {e[0] for e in exposures if e[1] in test_nights}
        by = "night"
    rest = [e for e in exposures if e[0] not in test]
    val: set[str] = set()
    for label in CLASSES:
        group = sorted(e[0] for e in rest if e[2] == label)
        rng.shuffle(group)
        n_val = int(round(val_fraction * len(group)))
        n_test = 0 if by == "night" else int(round(test_fraction * len(group)))
        val.update(group[:n_val])
        test.update(group[n_val : n_val + n_test])
    train = [i for i in ids if i not in val and i not in test]
    return Split(tuple(sorted(train)), tuple(sorted(val)), tuple(sorted(test)), by)


# --------------------------------------------------------------------------- data


@dataclass
class Dataset:
    """CCD samples: representative images, hit vectors, image flags, labels and groups."""

    image: np.ndarray  # (n, H, W) float32
    vector: np.ndarray  # (n, n_clusters + n_aux) float32
    present: np.ndarray  # (n,) float32
    label: np.ndarray  # (n,) int64 index into CLASSES
    exposure: np.ndarray  # (n,) str exposure id

    def __len__(self) -> int:
        return len(self.label)

    def subset(self, exposures: Sequence[str]) -> Dataset:
        keep = np.isin(self.exposure, np.asarray(exposures))
        return Dataset(*(a[keep] for a in self.arrays()))

    def arrays(self) -> tuple[np.ndarray, ...]:
        return self.image, self.vector, self.present, self.label, self.exposure

    @staticmethod
    def concat(parts: Sequence[Dataset]) -> Dataset:
        return Dataset(*(np.concatenate(a) for a in zip(*(p.arrays() for p in parts), strict=True)))


def _augment(image: torch.Tensor, shape: CnnShape, gen: torch.Generator) -> torch.Tensor:
    """Flip / transpose every tile of a sample the same way (trail directions are arbitrary;
    cluster order, i.e. tile order, is kept)."""
    b = image.shape[0]
    rows = image.shape[1] // shape.tile
    cols = image.shape[2] // shape.tile
    t = image.reshape(b, rows, shape.tile, cols, shape.tile)
    flip_y, flip_x, swap = (torch.rand(3, b, generator=gen) < 0.5).unbind(0)
    t = torch.where(flip_y[:, None, None, None, None], t.flip(2), t)
    t = torch.where(flip_x[:, None, None, None, None], t.flip(4), t)
    t = torch.where(swap[:, None, None, None, None], t.transpose(2, 4), t)
    return t.reshape(b, rows * shape.tile, cols * shape.tile)


# --------------------------------------------------------------------------- training


@dataclass(frozen=True)
class TrainSettings:
    epochs: int = 40
    batch_size: int = 64
    learning_rate: float = 2e-3
    weight_decay: float = 1e-4
    patience: int = 6
    modality_dropout: float = 0.3
    seed: int = 0
    ensemble: int = 1
    """Members of :func:`train_ensemble`; member ``i`` is trained with seed ``seed + i``."""


def train_cnn(
    train: Dataset,
    val: Dataset,
    shape: CnnShape,
    settings: TrainSettings | None = None,
    progress: Callable[[dict], None] | None = None,
) -> tuple[DualInputNet, list[dict]]:
    """Train with Adam and class-balanced cross-entropy; stop early on validation loss.

    Returns the model with the weights of the best validation epoch, and the per-epoch history
    (train loss, val loss, val accuracy). ``progress`` gets each epoch's history entry.
    """
    settings = settings or TrainSettings()
    if len(train) == 0:
        raise ValueError("no training samples")
    torch.manual_seed(settings.seed)
    gen = torch.Generator().manual_seed(settings.seed)
    model = DualInputNet(shape, modality_dropout=settings.modality_dropout)
    counts = np.bincount(train.label, minlength=len(CLASSES)).astype(np.float64)
    weights = np.where(counts > 0, counts.sum() / np.maximum(counts, 1) / len(CLASSES), 0.0)
    loss_fn = nn.CrossEntropyLoss(weight=torch.as_tensor(weights, dtype=torch.float32))
    opt = torch.optim.AdamW(
        model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay
    )
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=settings.epochs)
    tensors = [torch.as_tensor(a) for a in (train.image, train.vector, train.present)]
    labels = torch.as_tensor(train.label)
    best, best_loss, stale, history = None, math.inf, 0, []
    for epoch in range(settings.epochs):
        model.train()
        order = torch.randperm(len(train), generator=gen)
        total = 0.0
        for start in range(0, len(train), settings.batch_size):
            idx = order[start : start + settings.batch_size]
            image = _augment(tensors[0][idx], shape, gen)
            logits = model(image, tensors[1][idx], tensors[2][idx])
            loss = loss_fn(logits, labels[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            total += loss.item() * len(idx)
        sched.step()
        entry = {"epoch": epoch + 1, "train_loss": total / len(train)}
        if len(val):
            probs = predict(model, val)
            entry["val_loss"] = float(
                -np.mean(np.log(np.clip(probs[np.arange(len(val)), val.label], 1e-9, 1)))
            )
            entry["val_accuracy"] = float(np.mean(probs.argmax(1) == val.label))
        history.append(entry)
        if progress:
            progress(entry)
        score = entry.get("val_loss", entry["train_loss"])
        if score < best_loss - 1e-4:
            best_loss, stale = score, 0
            best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.patience:
                log.info("early stop after epoch %d (best val loss %.4f)", epoch + 1, best_loss)
                break
    if best is not None:
        model.load_state_dict(best)
    model.eval()
    return model, history


def train_ensemble(
    train: Dataset,
    val: Dataset,
    shape: CnnShape,
    settings: TrainSettings | None = None,
    progress: Callable[[dict], None] | None = None,
) -> tuple[EnsembleNet, list[list[dict]]]:
    """Train ``settings.ensemble`` networks with :func:`train_cnn` on the same data, member
    ``i`` with seed ``settings.seed + i`` (its initialisation, batch order, augmentation and
    modality dropout), each stopped early on its own validation loss.

    Members differ only by seed, so the ensemble removes the run-to-run variance of a single
    network without another split or SOM. Member 0 is the network a one-member run trains.

    Returns
    -------
    (EnsembleNet, list of list of dict)
        The ensemble (eval mode) and each member's per-epoch history. ``progress`` gets each
        epoch's entry with a ``"member"`` index added.
    """
    settings = settings or TrainSettings()
    if settings.ensemble < 1:
        raise ValueError(f"settings.ensemble must be >= 1, got {settings.ensemble!r}")
    members, histories = [], []
    for i in range(settings.ensemble):
        member_settings = replace(settings, seed=settings.seed + i, ensemble=1)
        say = None if progress is None else (lambda e, i=i: progress({"member": i, **e}))
        model, history = train_cnn(train, val, shape, member_settings, say)
        members.append(model)
        histories.append(history)
    ensemble = EnsembleNet(members)
    ensemble.eval()
    return ensemble, histories


def predict(
    model: DualInputNet | EnsembleNet, data: Dataset, present: np.ndarray | None = None
) -> np.ndarray:
    """Class probabilities of every sample (``present`` overrides the image flags)."""
    flags = data.present if present is None else present
    out = [
        predict_proba(model, data.image[s : s + 256], data.vector[s : s + 256], flags[s : s + 256])
        for s in range(0, len(data), 256)
    ]
    return np.concatenate(out) if out else np.zeros((0, len(CLASSES)), np.float32)


# --------------------------------------------------------------------------- metrics


def classification_metrics(truth: np.ndarray, probs: np.ndarray) -> dict:
    """Accuracy, macro-F1, per-class recall/precision, confusion matrix and ECE."""
    truth = np.asarray(truth)
    pred = probs.argmax(1) if len(probs) else np.zeros(0, int)
    k = len(CLASSES)
    confusion = np.zeros((k, k), dtype=int)
    np.add.at(confusion, (truth, pred), 1)
    tp = np.diag(confusion).astype(float)
    recall = np.divide(tp, confusion.sum(1), out=np.full(k, np.nan), where=confusion.sum(1) > 0)
    precision = np.divide(tp, confusion.sum(0), out=np.full(k, np.nan), where=confusion.sum(0) > 0)
    f1 = np.where(
        (recall + precision) > 0, 2 * recall * precision / np.maximum(recall + precision, 1e-12), 0
    )
    present = confusion.sum(1) > 0
    return {
        "n": int(len(truth)),
        "accuracy": float(np.mean(pred == truth)) if len(truth) else float("nan"),
        "macro_f1": float(np.nanmean(np.where(present, f1, np.nan))) if present.any() else 0.0,
        "recall": {c: _num(recall[i]) for i, c in enumerate(CLASSES)},
        "precision": {c: _num(precision[i]) for i, c in enumerate(CLASSES)},
        "confusion": confusion.tolist(),
        "ece": expected_calibration_error(truth, probs),
    }


def _num(x: float) -> float | None:
    return None if np.isnan(x) else float(x)


def expected_calibration_error(truth: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """Mean |accuracy - confidence| over equal-width confidence bins, weighted by bin size."""
    if len(probs) == 0:
        return float("nan")
    conf = probs.max(1)
    correct = probs.argmax(1) == np.asarray(truth)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(conf, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        m = which == b
        if m.any():
            ece += m.mean() * abs(correct[m].mean() - conf[m].mean())
    return float(ece)


def exposure_probabilities(
    data: Dataset, probs: np.ndarray
) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Per-exposure (ids, true label, probabilities) with the grading rule of
    :mod:`skygrade.transforms.grade` (normalised geometric mean over CCDs)."""
    ids = sorted(set(data.exposure.tolist()))
    truth, out = [], []
    for e in ids:
        m = data.exposure == e
        out.append(combine(probs[m]))
        truth.append(int(np.bincount(data.label[m]).argmax()))
    return ids, np.array(truth, dtype=int), np.array(out).reshape(-1, len(CLASSES))
