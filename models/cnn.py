"""The dual-input network: representative image (Input-1) + SOM hit counts (Input-2) -> 5 classes.

Plain torch, no Beam.

Image branch: the representative image is a mosaic of one cutout per SOM cluster, in cluster
order. A small convolutional encoder with shared weights reads each tile (so a trail or a fat
PSF looks the same in every cluster), and the tile embeddings are concatenated in cluster order
(so the network knows which kind of source each cutout represents).

Hits branch: hit fractions per cluster plus a few per-CCD scalars (:data:`AUX_FEATURES`: source
density, exposure time, clean fraction and robust summary statistics of the sources' size,
elongation and sky, :func:`skygrade.models.summary.ccd_summary`), through two dense layers.

Modality dropout: in training the whole image branch is zeroed for a fraction of CCDs and an
``image_present`` flag tells the head so; at inference a CCD without pixels (catalog mode:
archived nights with only SExtractor catalogs) is graded from its hits alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from skygrade.models.mosaic import tile_grid
from skygrade.models.summary import _SUMMARY_CENTRE, _SUMMARY_SCALE, SUMMARY_FEATURES, SUMMARY_FILL

AUX_FEATURES: tuple[str, ...] = (
    "log_clean_density",
    "log_exptime",
    "exptime_known",
    "shapes_measured",
    *SUMMARY_FEATURES,
)
"""Per-CCD scalars beside the hit fractions, chosen to transfer from the simulator and from
smaller training CCDs to real 2048x4612 CCDs: a source *density* (per megapixel, not a count
that depends on the CCD size) of the measured sources, the exposure time and the
:data:`SUMMARY_FEATURES`. Two flags say what could not be
measured, so that a filled-in value is not read as a measurement: ``exptime_known`` (0 for an
archive catalog without EXPTIME: the exposure time and the sky rate are then filled) and
``shapes_measured`` (0 when the catalog has no FLUX_RADIUS: the size and trail-shape statistics
are then filled). Neither the blended nor the clean fraction of the detections is an input: both
depend on the site's deblending settings (~0.9 of a real GOOD exposure's detections are
deblended pieces under DEBLEND_MINCONT 0, ~0.2 under stock settings) more than on the sky."""


def input_columns(n_clusters: int, names: Sequence[str]) -> np.ndarray:
    """Columns of a :func:`hit_vector` that a network reading ``names`` (some of
    :data:`AUX_FEATURES`, in its order) takes: every hit fraction, then those scalars.

    >>> input_columns(2, ["log_exptime", "log_clean_density"]).tolist()
    [0, 1, 3, 2]
    """
    where = {name: n_clusters + k for k, name in enumerate(AUX_FEATURES)}
    unknown = [name for name in names if name not in where]
    if unknown:
        raise ValueError(
            f"{', '.join(map(repr, unknown))}: not an input this code computes "
            f"(it computes {', '.join(AUX_FEATURES)})"
        )
    return np.array([*range(n_clusters), *(where[name] for name in names)], dtype=np.int64)


@dataclass(frozen=True)
class CnnShape:
    """Input and layer sizes; stored in the bundle manifest and checked at load."""

    n_clusters: int = 20
    tile: int = 32
    n_classes: int = 5
    n_aux: int = len(AUX_FEATURES)
    tile_embedding: int = 16
    hidden: int = 64

    def as_dict(self) -> dict:
        return asdict(self)


class TileEncoder(nn.Module):
    """tile x tile stamp -> embedding vector."""

    def __init__(self, tile: int, out: int) -> None:
        super().__init__()
        # Strided convolutions rather than pooling after full-resolution layers: 36 CCDs x 20
        # tiles score in tens of milliseconds on one core.
        self.net = nn.Sequential(
            nn.Conv2d(1, 8, 5, stride=2, padding=2),
            nn.ReLU(),
            nn.Conv2d(8, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.Conv2d(16, 16, 3, stride=2, padding=1),
            nn.ReLU(),
            nn.AdaptiveAvgPool2d(2),
            nn.Flatten(),
            nn.Linear(16 * 4, out),
            nn.ReLU(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def _tile_stack(image: torch.Tensor, s: CnnShape) -> torch.Tensor:
    """(B, rows*tile, cols*tile) mosaics -> (B*n_clusters, 1, tile, tile) tiles in cluster order."""
    b = image.shape[0]
    rows, cols = tile_grid(s.n_clusters)
    tiles = (
        image.reshape(b, rows, s.tile, cols, s.tile)
        .permute(0, 1, 3, 2, 4)
        .reshape(b, rows * cols, s.tile, s.tile)[:, : s.n_clusters]
    )
    return tiles.reshape(b * s.n_clusters, 1, s.tile, s.tile)


class DualInputNet(nn.Module):
    """Representative image + hit vector -> class logits.

    Inputs of :meth:`forward`: ``image`` (B, rows*tile, cols*tile) mosaics, ``vector``
    (B, n_clusters + n_aux) from :func:`hit_vector`, ``image_present`` (B,) 0/1 floats.

    Parameters
    ----------
    shape : CnnShape
        Sizes.
    modality_dropout : float
        Training-time probability of hiding the image of a CCD.
    """

    def __init__(self, shape: CnnShape | None = None, modality_dropout: float = 0.3) -> None:
        super().__init__()
        shape = shape or CnnShape()
        if not 0 <= modality_dropout < 1:
            raise ValueError(f"modality_dropout must be in [0, 1), got {modality_dropout}")
        self.shape = shape
        self.modality_dropout = modality_dropout
        self.tiles = TileEncoder(shape.tile, shape.tile_embedding)
        self.image_head = nn.Sequential(
            nn.Linear(shape.n_clusters * shape.tile_embedding, shape.hidden), nn.ReLU()
        )
        self.hits_head = nn.Sequential(
            nn.Linear(shape.n_clusters + shape.n_aux, shape.hidden),
            nn.ReLU(),
            nn.Linear(shape.hidden, shape.hidden),
            nn.ReLU(),
        )
        self.head = nn.Sequential(
            nn.Linear(2 * shape.hidden + 1, shape.hidden),
            nn.ReLU(),
            nn.Dropout(0.1),
            nn.Linear(shape.hidden, shape.n_classes),
        )

    def forward(
        self, image: torch.Tensor, vector: torch.Tensor, image_present: torch.Tensor
    ) -> torch.Tensor:
        s = self.shape
        b = image.shape[0]
        emb = self.tiles(_tile_stack(image, s))
        img = self.image_head(emb.reshape(b, s.n_clusters * s.tile_embedding))
        present = image_present.reshape(b, 1).to(img.dtype)
        if self.training and self.modality_dropout > 0:
            keep = (torch.rand(b, 1, device=img.device) >= self.modality_dropout).to(img.dtype)
            present = present * keep
        img = img * present
        hits = self.hits_head(vector)
        return self.head(torch.cat([img, hits, present], dim=1))


class EnsembleNet(nn.Module):
    """Several :class:`DualInputNet` of one shape, trained alike with different seeds.

    :meth:`forward` takes the inputs of :meth:`DualInputNet.forward` and returns the members'
    *mean log-probability*, so ``softmax`` of it (as in :func:`predict_proba`) is their
    normalised geometric mean and every caller of a single network works unchanged. The
    geometric rather than the arithmetic mean of the members' probabilities: on the validation
    split of the shipped bundle it gave the (slightly) lower log-loss and calibration error
    (docs/model.md), and it is the rule by which the CCDs of an exposure are already combined
    (:func:`skygrade.models.aggregate.combine`).

    Parameters
    ----------
    members : sequence of DualInputNet
        At least one; all of the same :class:`CnnShape`.
    """

    def __init__(self, members: Sequence[DualInputNet]) -> None:
        super().__init__()
        members = list(members)
        if not members:
            raise ValueError("members must hold at least one network, got none")
        shapes = {m.shape for m in members}
        if len(shapes) != 1:
            raise ValueError(f"members must share one CnnShape, got {sorted(map(str, shapes))}")
        self.shape = members[0].shape
        self.members = nn.ModuleList(members)

    @classmethod
    def empty(cls, shape: CnnShape, n_members: int) -> EnsembleNet:
        """``n_members`` freshly initialised networks of ``shape`` (to load weights into)."""
        if n_members < 1:
            raise ValueError(f"n_members must be >= 1, got {n_members!r}")
        return cls([DualInputNet(shape) for _ in range(n_members)])

    def __len__(self) -> int:
        return len(self.members)

    def forward(
        self, image: torch.Tensor, vector: torch.Tensor, image_present: torch.Tensor
    ) -> torch.Tensor:
        if self.training:
            logits = torch.stack([m(image, vector, image_present) for m in self.members])
        else:
            logits = self._fused_logits(image, vector, image_present)
        return torch.log_softmax(logits, dim=2).mean(dim=0)

    def _fused_logits(
        self, image: torch.Tensor, vector: torch.Tensor, image_present: torch.Tensor
    ) -> torch.Tensor:
        """(K, B, n_classes) logits of all members in one pass (inference only, the same
        numbers as running the members one by one): the members' convolutions run as one
        convolution with K groups (the first shares its input) in channels-last layout, their
        dense layers as batched matrix products. 36 CCDs x 20 tiles of small convolutions are
        dominated by memory layout conversions and per-call overhead, which this avoids."""
        s, k, b = self.shape, len(self.members), image.shape[0]
        x = _tile_stack(image, s).contiguous(memory_format=torch.channels_last)
        convs = [[layer for layer in m.tiles.net if isinstance(layer, nn.Conv2d)] for m in self]
        for depth, first in enumerate(convs[0]):
            weight = torch.cat([c[depth].weight for c in convs])
            bias = torch.cat([c[depth].bias for c in convs])
            groups = 1 if depth == 0 else k
            x = torch.relu(
                nn.functional.conv2d(
                    x,
                    weight.contiguous(memory_format=torch.channels_last),
                    bias,
                    first.stride,
                    first.padding,
                    groups=groups,
                )
            )
        x = nn.functional.adaptive_avg_pool2d(x, 2).contiguous()
        x = x.reshape(x.shape[0], k, -1).transpose(0, 1)
        emb = self._dense(x, [m.tiles.net[-2] for m in self], relu=True)  # (K, B*n_clusters, e)
        img = self._dense(
            emb.reshape(k, b, s.n_clusters * s.tile_embedding),
            [m.image_head[0] for m in self],
            relu=True,
        )
        present = image_present.reshape(1, b, 1).to(img.dtype).expand(k, b, 1)
        hits = vector.unsqueeze(0).expand(k, *vector.shape)
        for i in (0, 2):
            hits = self._dense(hits, [m.hits_head[i] for m in self], relu=True)
        h = self._dense(
            torch.cat([img * present, hits, present], dim=2), [m.head[0] for m in self], relu=True
        )
        return self._dense(h, [m.head[3] for m in self], relu=False)

    def __iter__(self):
        return iter(self.members)

    @staticmethod
    def _dense(x: torch.Tensor, layers: Sequence[nn.Linear], relu: bool) -> torch.Tensor:
        """Member ``i``'s linear layer on ``x[i]``: (K, N, in) -> (K, N, out)."""
        weight = torch.stack([layer.weight for layer in layers]).transpose(1, 2)
        bias = torch.stack([layer.bias for layer in layers]).unsqueeze(1)
        y = torch.baddbmm(bias, x, weight)
        return torch.relu(y) if relu else y


def as_ensemble(model: DualInputNet | EnsembleNet) -> EnsembleNet:
    """``model`` itself if it is an :class:`EnsembleNet`, else a one-member ensemble of it."""
    return model if isinstance(model, EnsembleNet) else EnsembleNet([model])


def hit_vector(
    hits: np.ndarray,
    n_sources: np.ndarray,
    exptime: np.ndarray,
    area_mpx: np.ndarray,
    summary: np.ndarray | None = None,
) -> np.ndarray:
    """Input-2 of a batch of CCDs: hit fractions + :data:`AUX_FEATURES`.

    Hits are normalised by the CCD's clean-source count, so CCDs with 100 or 5000 sources
    (cloudy or crowded fields, short or long exposures) are compared on their mix of sources.

    Parameters
    ----------
    hits : np.ndarray
        (B, n_clusters) counts.
    n_sources : np.ndarray
        (B,) all detections of each CCD (clean or not).
    exptime : np.ndarray
        (B,) seconds; NaN where unknown (a catalog without EXPTIME: filled with 100 s and
        ``exptime_known`` 0).
    area_mpx : np.ndarray
        (B,) CCD area in megapixels (a full MegaCam CCD is 9.45).
    summary : np.ndarray, optional
        (B, len(SUMMARY_FEATURES)) raw :func:`skygrade.models.summary.ccd_summary` values
        (:func:`skygrade.models.summary.stack_summaries`);
        None or NaN entries take :data:`SUMMARY_FILL`.

    Returns
    -------
    np.ndarray
        float32 (B, n_clusters + len(AUX_FEATURES)).
    """
    hits = np.asarray(hits, dtype=np.float64)
    n_clean = hits.sum(axis=1)
    frac = hits / np.maximum(n_clean, 1.0)[:, None]
    n_sources = np.asarray(n_sources, dtype=np.float64)
    area = np.maximum(np.asarray(area_mpx, dtype=np.float64), 1e-3)
    if summary is None:
        summary = np.full((len(hits), len(SUMMARY_FEATURES)), np.nan)
    summary = np.asarray(summary, dtype=np.float64).reshape(len(hits), len(SUMMARY_FEATURES))
    shapes = np.isfinite(summary[:, SUMMARY_FEATURES.index("log_flux_radius")])
    summary = np.where(np.isfinite(summary), summary, SUMMARY_FILL)
    scaled = np.clip((summary - _SUMMARY_CENTRE) / _SUMMARY_SCALE, -10.0, 10.0)
    exptime = np.asarray(exptime, dtype=np.float64)
    known = np.isfinite(exptime) & (exptime > 0)
    aux = np.column_stack(
        [
            np.log10(n_clean / area + 1.0) / 3.0,
            np.where(known, np.log10(np.maximum(np.where(known, exptime, 1.0), 1.0)), 2.0) / 3.0,
            known.astype(np.float64),
            shapes.astype(np.float64),
            scaled,
        ]
    )
    return np.hstack([frac, aux]).astype(np.float32)


def predict_proba(
    model: DualInputNet | EnsembleNet,
    image: np.ndarray,
    vector: np.ndarray,
    image_present: np.ndarray,
) -> np.ndarray:
    """Class probabilities (B, n_classes) in eval mode, without gradients (an
    :class:`EnsembleNet` gives the normalised geometric mean of its members')."""
    model.eval()
    with torch.inference_mode():
        logits = model(
            torch.as_tensor(image, dtype=torch.float32),
            torch.as_tensor(vector, dtype=torch.float32),
            torch.as_tensor(image_present, dtype=torch.float32),
        )
        return torch.softmax(logits, dim=1).numpy()
