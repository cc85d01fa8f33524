"""Versioned model bundle: everything grading needs, in one directory.

::

    bundle/
      manifest.json   format, version, created, training-data digest, classes, SOM features +
                      shape, CNN shapes + aux features, cutout size, metrics
      som.npz         SOM codebook, scaling, cluster map (no pickle)
      cnn.pt          state_dict of the CNN ensemble (``members.<i>.*``: one network per member),
                      loaded with ``torch.load(weights_only=True)``

The CNN is an :class:`~skygrade.models.cnn.EnsembleNet` of ``cnn.members`` networks trained with
different seeds; scoring averages their log-probabilities. Format ``skygrade-bundle/1`` (a single
network, before ensembles) still loads, as a one-member ensemble.

A bundle names the inputs it was trained on (``cnn.aux_features``): any distinct subset of this
code's :data:`~skygrade.models.cnn.AUX_FEATURES`, in any order. Scoring hands it those columns
(:meth:`ModelBundle.select_inputs`), so a statistic added to the code does not void the bundles
trained before it. A bundle whose manifest does not match this code otherwise (format, classes,
SOM features, an input this code does not compute) is refused with a message saying what
differs: grading with a mismatched model would be silently wrong.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from skygrade.models.classes import CLASSES
from skygrade.models.cnn import AUX_FEATURES, CnnShape, EnsembleNet, as_ensemble, input_columns
from skygrade.models.som import SOM_FEATURES, SourceSom

FORMAT = "skygrade-bundle/2"
LEGACY_FORMAT = "skygrade-bundle/1"
"""A single network (no ``cnn.members``, a plain DualInputNet state_dict): read as one member."""
COMBINE = "mean-log-probability"
"""How the members' outputs are combined (:class:`~skygrade.models.cnn.EnsembleNet`)."""
MANIFEST, SOM_FILE, CNN_FILE = "manifest.json", "som.npz", "cnn.pt"


class BundleError(ValueError):
    """A model bundle that is missing, incomplete or does not match this code."""


@dataclass
class ModelBundle:
    """A loaded bundle: SOM, CNN ensemble (in eval mode) and manifest.

    ``cnn`` may be given as a single :class:`~skygrade.models.cnn.DualInputNet`; it is kept as a
    one-member :class:`~skygrade.models.cnn.EnsembleNet`.
    """

    som: SourceSom
    cnn: EnsembleNet
    manifest: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.cnn = as_ensemble(self.cnn)

    @property
    def n_members(self) -> int:
        return len(self.cnn)

    @property
    def version(self) -> str:
        return str(self.manifest.get("version", "unknown"))

    @property
    def ood(self) -> dict | None:
        """The out-of-distribution reference (:func:`skygrade.models.ood.fit_reference`), or None
        for a bundle trained before it existed."""
        return self.manifest.get("ood")

    @property
    def aux_features(self) -> tuple[str, ...]:
        """The per-CCD scalars this bundle's CNN reads, in its order (all of
        :data:`~skygrade.models.cnn.AUX_FEATURES` for a bundle not yet saved)."""
        return tuple(self.manifest.get("cnn", {}).get("aux_features", AUX_FEATURES))

    @property
    def input_columns(self) -> np.ndarray:
        """Columns of a :func:`~skygrade.models.cnn.hit_vector` (hit fractions, then this code's
        AUX_FEATURES) that this bundle's CNN reads, in its order."""
        return input_columns(self.cnn.shape.n_clusters, self.aux_features)

    def select_inputs(self, vector: np.ndarray) -> np.ndarray:
        """The columns of ``vector`` (B, n_clusters + len(AUX_FEATURES)) this bundle reads."""
        return np.asarray(vector)[:, self.input_columns]

    @property
    def tile(self) -> int:
        return int(self.manifest["cnn"]["shape"]["tile"])

    def save(self, path: str | os.PathLike, metrics: dict | None = None) -> Path:
        """Write the bundle to directory ``path`` atomically (built aside, then renamed)."""
        path = Path(path)
        manifest = dict(self.manifest)
        manifest.update(
            format=FORMAT,
            classes=list(CLASSES),
            som={
                "file": SOM_FILE,
                "features": list(self.som.features),
                "grid": [self.som.rows, self.som.cols],
                "n_clusters": self.som.n_clusters,
                **{k: v for k, v in self.som.meta.items() if k != "features"},
            },
            cnn={
                "file": CNN_FILE,
                "shape": self.cnn.shape.as_dict(),
                "aux_features": list(self.aux_features),
                "members": len(self.cnn),
                "combine": COMBINE,
            },
        )
        manifest.setdefault("version", dt.datetime.now(dt.UTC).strftime("%Y%m%dT%H%M%SZ"))
        manifest.setdefault("created", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
        if metrics is not None:
            manifest["metrics"] = metrics
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent))
        tmp.chmod(0o755)
        try:
            self.som.save(tmp / SOM_FILE)
            torch.save(self.cnn.state_dict(), tmp / CNN_FILE)
            (tmp / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
            if path.exists():
                shutil.rmtree(path)
            os.replace(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        self.manifest = manifest
        return path


def read_manifest(path: str | os.PathLike) -> dict:
    """The manifest of the bundle at ``path``, checked against this code."""
    path = Path(path)
    file = path / MANIFEST
    if not file.is_file():
        raise BundleError(f"{path}: not a model bundle (no {MANIFEST})")
    try:
        manifest = json.loads(file.read_text())
    except json.JSONDecodeError as exc:
        raise BundleError(f"{file}: not valid JSON: {exc}") from None
    problems = []

    def expect(key: str, got, want) -> None:
        if got != want:
            problems.append(f"{key} is {got!r}, this code needs {want!r}")

    fmt = manifest.get("format")
    if fmt not in (FORMAT, LEGACY_FORMAT):
        problems.append(f"format is {fmt!r}, this code reads {FORMAT!r} (or {LEGACY_FORMAT!r})")
    expect("classes", manifest.get("classes"), list(CLASSES))
    som, cnn = manifest.get("som", {}), manifest.get("cnn", {})
    expect("som.features", som.get("features"), list(SOM_FEATURES))
    aux = cnn.get("aux_features")
    if not isinstance(aux, list) or not all(isinstance(a, str) for a in aux):
        problems.append(f"cnn.aux_features is {aux!r}, it must list the CNN's input names")
        aux = list(AUX_FEATURES)
    unknown = [a for a in aux if a not in AUX_FEATURES]
    if unknown:
        problems.append(
            f"cnn.aux_features names {', '.join(map(repr, unknown))}, which this code does not "
            f"compute (it computes {', '.join(AUX_FEATURES)})"
        )
    repeated = sorted({a for a in aux if aux.count(a) > 1})
    if repeated:
        problems.append(f"cnn.aux_features names {', '.join(map(repr, repeated))} twice")
    shape = cnn.get("shape", {})
    expect("cnn.shape.n_clusters", shape.get("n_clusters"), som.get("n_clusters"))
    expect("cnn.shape.n_classes", shape.get("n_classes"), len(CLASSES))
    expect("cnn.shape.n_aux", shape.get("n_aux"), len(aux))
    if fmt == FORMAT:
        members = cnn.get("members")
        if not isinstance(members, int) or isinstance(members, bool) or members < 1:
            problems.append(f"cnn.members is {members!r}, this code needs an integer >= 1")
        expect("cnn.combine", cnn.get("combine"), COMBINE)
    ood = manifest.get("ood")
    if ood is not None:
        n_inputs = (shape.get("n_clusters") or 0) + len(aux)
        for key in ("names", "center", "scale"):
            if not isinstance(ood.get(key), list) or len(ood[key]) != n_inputs:
                problems.append(f"ood.{key} must list {n_inputs} values (one per CNN input)")
        if not isinstance(ood.get("threshold"), (int, float)) or not ood["threshold"] > 0:
            problems.append(f"ood.threshold is {ood.get('threshold')!r}, it must be > 0")
    if problems:
        raise BundleError(
            f"{path}: model bundle does not match this skygrade: " + "; ".join(problems)
        )
    return manifest


def load_bundle(path: str | os.PathLike) -> ModelBundle:
    """Load and check the bundle at ``path`` (weights with ``weights_only=True``).

    The number of networks in ``cnn.pt`` must be the manifest's ``cnn.members``.
    """
    path = Path(path)
    manifest = read_manifest(path)
    legacy = manifest["format"] == LEGACY_FORMAT
    n_members = 1 if legacy else manifest["cnn"]["members"]
    try:
        som = SourceSom.load(path / manifest["som"]["file"])
        shape = CnnShape(**manifest["cnn"]["shape"])
        state = torch.load(path / manifest["cnn"]["file"], map_location="cpu", weights_only=True)
        if legacy:
            state = {f"members.0.{k}": v for k, v in state.items()}
        held = len({k.split(".")[1] for k in state if k.startswith("members.")})
        if held == n_members:
            cnn = EnsembleNet.empty(shape, n_members)
            cnn.load_state_dict(state)
    except (
        OSError,
        AttributeError,
        KeyError,
        TypeError,
        RuntimeError,
        ValueError,
        pickle.UnpicklingError,
    ) as exc:
        raise BundleError(f"{path}: cannot load model bundle: {exc}") from exc
    if held != n_members:
        raise BundleError(
            f"{path}: the manifest says cnn.members is {n_members} but "
            f"{manifest['cnn']['file']} holds {held} networks"
        )
    if som.n_clusters != shape.n_clusters:
        raise BundleError(
            f"{path}: SOM has {som.n_clusters} clusters but the CNN expects {shape.n_clusters}"
        )
    cnn.eval()
    return ModelBundle(som, cnn, manifest)


def check_bundle(path: str | os.PathLike) -> ModelBundle:
    """Load the whole bundle at ``path`` and check it, weights included; returns it.

    :func:`load_bundle` (manifest, SOM, every network's state_dict, which must fit the
    manifest's shapes), then every number in it must be finite: a bundle with NaN weights would
    load and grade every exposure the same. What the daemon runs on a bundle before it grades
    with it, at start and before a swap.

    Raises
    ------
    BundleError
        Saying what is wrong.
    """
    bundle = load_bundle(path)
    arrays = {
        "som.codebook": bundle.som.codebook,
        "som.scaling.center": bundle.som.scaling.center,
        "som.scaling.scale": bundle.som.scaling.scale,
    }
    bad = [name for name, a in arrays.items() if not np.isfinite(np.asarray(a, float)).all()]
    bad += [
        f"cnn {name}"
        for name, t in bundle.cnn.state_dict().items()
        if t.is_floating_point() and not bool(torch.isfinite(t).all())
    ]
    if bad:
        raise BundleError(
            f"{path}: model bundle holds values that are not finite in {len(bad)} array(s): "
            + ", ".join(bad[:3])
            + (" ..." if len(bad) > 3 else "")
        )
    return bundle


DEFAULT_BUNDLE = Path(__file__).resolve().parent / "default"
"""The shipped pretrained bundle."""
