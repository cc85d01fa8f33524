"""Bad model bundles, for the tests of their refusal (issue 21, item 8)."""

from __future__ import annotations

import shutil
from pathlib import Path


def bad_copies(bundle: Path, where: Path) -> tuple[Path, Path]:
    """Two bad copies of ``bundle`` in ``where``: weights that are not a torch file
    (``garbled``), and NaN weights (``nan``)."""
    import torch

    from skygrade.models.bundle import ModelBundle, load_bundle

    garbled = Path(shutil.copytree(bundle, where / "garbled"))
    (garbled / "cnn.pt").write_bytes(b"not a torch file " * 64)
    good = load_bundle(bundle)
    with torch.no_grad():
        next(good.cnn.parameters()).fill_(float("nan"))
    nan = ModelBundle(good.som, good.cnn, {"version": "nan-weights"}).save(where / "nan")
    return garbled, nan
