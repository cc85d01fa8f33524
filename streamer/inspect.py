"""``skygrade inspect``: a picture of what the model sees in one exposure, for a person.

For each CCD (or the one chosen with ``--ccd``) the exposure is extracted with the sep backend,
every clean source is mapped onto the bundle's SOM clusters, and the CCD's representative image
(one cutout per cluster, tiled in cluster order, Input-1 of the CNN) is drawn with the hit count
of each cluster (Input-2) printed under its tile. The panel title carries the exposure id, CCD
name, number of sources (all / clean), median elongation and, when the bundle has a CNN, the
CCD's class probabilities.

One CCD gives one large panel; several CCDs give a grid of small panels laid out like MegaCam's
focal plane (9 CCDs a row, ``ccd00`` top left). The PNG is drawn with matplotlib's Agg canvas
(no display needed) and written atomically.

Example
-------
::

    skygrade inspect archive/2026-11-24/2817001o.fits --png 2817001.png
    skygrade inspect 2817001o.fits --ccd 12 --png ccd12.png --bundle bundles/2026-11
"""

from __future__ import annotations

import io
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
from matplotlib import colormaps
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from skygrade.models.bundle import BundleError, load_bundle, read_manifest
from skygrade.models.classes import CLASSES
from skygrade.models.mosaic import split_tiles, tile_grid
from skygrade.models.som import SourceSom
from skygrade.ops.files import atomic_write_bytes
from skygrade.transforms.extract import CcdRejected, SepBackend
from skygrade.transforms.representative import ccd_inputs
from skygrade.transforms.som_hits import ccd_hits

if TYPE_CHECKING:  # pragma: no cover
    from skygrade.ops.config import Config
    from skygrade.transforms.representative import CcdInputs

log = logging.getLogger(__name__)

DISPLAY_RANGE = (-0.2, 1.5)
"""Fixed display range of the tiles: the range
:func:`~skygrade.transforms.representative.scale_stamp` clips to (source peak = 1), so all tiles and
all exposures are drawn alike."""

ASINH_SOFTENING = 0.2
"""Softening of the asinh stretch (in units of the source peak): linear below, logarithmic
above, so faint trails and wings show without saturating the cores."""

STRETCHES = ("asinh", "linear")
FOCAL_PLANE_COLUMNS = 9
"""Panels per row in the multi-CCD figure: MegaCam's 36 CCDs are 4 rows of 9."""


class InspectError(ValueError):
    """A request ``inspect_exposure`` cannot satisfy (bad CCD index, unknown stretch...)."""


@dataclass(frozen=True)
class CcdPanel:
    """What one panel shows: a CCD's model inputs and scores, or why it has none."""

    ccd: int
    name: str
    inputs: CcdInputs | None = None
    probs: np.ndarray | None = None
    reason: str | None = None


def inspect_exposure(
    path: str | os.PathLike,
    bundle_path: str | os.PathLike,
    png_path: str | os.PathLike,
    ccd: int | None = None,
    cfg: Config | None = None,
    stretch: str = "asinh",
) -> Path:
    """Extract, map and draw one exposure (or one of its CCDs) into a PNG.

    Parameters
    ----------
    path : path-like
        A MegaCam exposure (``.fits`` or ``.fits.fz``).
    bundle_path : path-like
        Model bundle directory: its ``som.npz`` maps sources to clusters, the tile size comes
        from the manifest (``cnn.shape.tile``), and its CNN (if the weights file is there)
        gives class probabilities.
    png_path : path-like
        Where to write the PNG (parent directories are created).
    ccd : int, optional
        0-based CCD index; all CCDs when None.
    cfg : Config, optional
        Configuration; its ``extract`` section sets the detection parameters. The backend is
        always sep (the representative image needs the pixels).
    stretch : {"asinh", "linear"}
        Grey scale of the tiles over the fixed range :data:`DISPLAY_RANGE`.

    Returns
    -------
    pathlib.Path
        ``png_path``.

    Raises
    ------
    FileNotFoundError
        ``path`` does not exist.
    InspectError
        ``ccd`` is not a CCD of the exposure, or ``stretch`` is unknown.
    skygrade.transforms.exposure_errors.ExposureError
        The file is not a readable exposure (the message names the file).
    skygrade.models.bundle.BundleError
        The bundle is missing or does not match this code.

    Examples
    --------
    >>> inspect_exposure("2817001o.fits", DEFAULT_BUNDLE, "out.png", ccd=3)  # doctest: +SKIP
    PosixPath('out.png')
    """
    if stretch not in STRETCHES:
        raise InspectError(f"stretch must be one of {', '.join(STRETCHES)}, got {stretch!r}")
    inspection = inspect_panels(path, bundle_path, ccd, cfg)
    return _draw(inspection, Path(png_path), stretch, single=ccd is not None)


class Inspection(NamedTuple):
    """Everything :func:`inspect_exposure` draws."""

    title: str
    """Figure title: exposure id, file, filter, exposure time, night, model version."""
    tile: int
    """Cutout side of the representative images, pixels."""
    panels: list[CcdPanel]
    """One per CCD drawn, in CCD order."""


def inspect_panels(
    path: str | os.PathLike,
    bundle_path: str | os.PathLike,
    ccd: int | None = None,
    cfg: Config | None = None,
) -> Inspection:
    """The model inputs (and class probabilities) of an exposure's CCDs, without drawing.

    Parameters and errors as :func:`inspect_exposure`.

    Returns
    -------
    Inspection
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"{path}: no such file")
    manifest = read_manifest(bundle_path)
    som, cnn_bundle = _load_models(Path(bundle_path), manifest)
    tile = int(manifest["cnn"]["shape"]["tile"])

    backend = SepBackend(cfg.extract if cfg is not None else None)
    meta = backend.open(str(path))
    ccds = _select_ccds(path, meta.n_ccd, ccd)
    panels = [_panel(backend, meta, k, som, tile) for k in ccds]
    if cnn_bundle is not None:
        panels = _score(cnn_bundle, panels)
    return Inspection(_figure_title(meta, manifest, bundle_path), tile, panels)


def _load_models(bundle_path: Path, manifest: dict):
    """The bundle's SOM, and the whole bundle when its CNN weights are present (else None)."""
    cnn_file = manifest.get("cnn", {}).get("file")
    if cnn_file and (bundle_path / cnn_file).is_file():
        bundle = load_bundle(bundle_path)
        return bundle.som, bundle
    try:
        som = SourceSom.load(bundle_path / manifest["som"]["file"])
    except (OSError, KeyError, ValueError) as exc:
        raise BundleError(f"{bundle_path}: cannot load the SOM: {exc}") from exc
    log.info("%s: no CNN weights; drawing without class probabilities", bundle_path)
    return som, None


def _select_ccds(path: Path, n_ccd: int, ccd: int | None) -> list[int]:
    if ccd is None:
        return list(range(n_ccd))
    if isinstance(ccd, bool) or not isinstance(ccd, int | np.integer) or not 0 <= ccd < n_ccd:
        raise InspectError(
            f"{path}: --ccd {ccd!r} is not a CCD of this exposure: it has {n_ccd} CCD(s), "
            f"indices 0..{n_ccd - 1}"
        )
    return [int(ccd)]


def _panel(backend, meta, ccd: int, som, tile: int) -> CcdPanel:
    """Extract one CCD and build its model inputs; a rejected CCD becomes a panel with a reason."""
    name = meta.ccd_names[ccd] if ccd < len(meta.ccd_names) else f"ccd{ccd:02d}"
    try:
        features = backend.features(meta, ccd, keep_pixels=True)
    except CcdRejected as exc:
        log.warning("%s", exc.detail)
        return CcdPanel(ccd, name, reason=f"rejected: {exc.reason}")
    inputs = ccd_inputs(ccd_hits(features, som), size=tile)
    log.info(
        "%s %s: %d sources, %d clean", meta.exposure_id, name, inputs.n_sources, inputs.n_clean
    )
    return CcdPanel(ccd, name, inputs=inputs, reason=inputs.reason)


def _score(bundle, panels: list[CcdPanel]) -> list[CcdPanel]:
    """Class probabilities of the CCDs that have clean sources (as the grading pipeline does)."""
    # skygrade.transforms.score imports Beam (RunInference), which only this scoring needs
    from skygrade.transforms.score import score_batch

    scorable = [p for p in panels if p.inputs is not None and p.inputs.reason is None]
    if not scorable:
        return panels
    probs, _ = score_batch(bundle, [p.inputs for p in scorable])
    by_ccd = {p.ccd: row for p, row in zip(scorable, probs, strict=True)}
    return [
        CcdPanel(p.ccd, p.name, p.inputs, by_ccd.get(p.ccd), p.reason) if p.ccd in by_ccd else p
        for p in panels
    ]


def _figure_title(meta, manifest: dict, bundle_path) -> str:
    parts = [f"exposure {meta.exposure_id}", Path(meta.path).name]
    if meta.filter:
        parts.append(meta.filter)
    parts.append(f"EXPTIME {meta.exptime:g} s")
    if meta.night:
        parts.append(f"night {meta.night}")
    parts.append(f"model {manifest.get('version', Path(bundle_path).name)}")
    return "  |  ".join(parts)


def _wrap_title(title: str, width: int) -> str:
    """Break a ``"a  |  b  |  c"`` title into lines of at most ~``width`` characters."""
    lines: list[str] = []
    for part in title.split("  |  "):
        if lines and len(lines[-1]) + 5 + len(part) <= width:
            lines[-1] += "  |  " + part
        else:
            lines.append(part)
    return "\n".join(lines)


# --------------------------------------------------------------------------- drawing


def _stretch(values: np.ndarray, stretch: str) -> tuple[np.ndarray, float, float]:
    """Display values and their (vmin, vmax) for the fixed range :data:`DISPLAY_RANGE`."""
    lo, hi = DISPLAY_RANGE
    values = np.clip(values, lo, hi)
    if stretch == "linear":
        return values, lo, hi

    def f(x):
        return np.arcsinh(np.asarray(x) / ASINH_SOFTENING)

    return f(values), float(f(lo)), float(f(hi))


def _spaced_mosaic(
    image: np.ndarray, hits: np.ndarray, tile: int, gap: int, label_band: int
) -> np.ndarray:
    """The representative image re-laid with ``gap`` pixels between tiles and a ``label_band``
    under each tile row for the hit counts. Gaps, bands and the tiles of empty clusters are NaN,
    drawn as the background, so an empty cluster is not mistaken for a dark cutout."""
    n_clusters = len(hits)
    rows, cols = tile_grid(n_clusters)
    step_x, step_y = tile + gap, tile + label_band
    out = np.full((rows * step_y, cols * step_x - gap), np.nan, dtype=np.float32)
    tiles = split_tiles(image[None], n_clusters, tile)[0]
    for k in np.flatnonzero(hits):
        r, c = divmod(int(k), cols)
        out[r * step_y : r * step_y + tile, c * step_x : c * step_x + tile] = tiles[k]
    return out


def _probs_text(probs: np.ndarray, per_line: int) -> str:
    items = [f"{c} {p:.2f}" for c, p in zip(CLASSES, probs, strict=True)]
    return "\n".join("  ".join(items[i : i + per_line]) for i in range(0, len(items), per_line))


def _panel_title(panel: CcdPanel, single: bool) -> str:
    x = panel.inputs
    head = f"{x.exposure_id if x is not None else ''} {panel.name}".strip()
    if x is None:
        return f"{head}\n{panel.reason}"
    elong = "-" if math.isnan(x.median_elongation) else f"{x.median_elongation:.2f}"
    lines = [head, f"{x.n_sources} sources / {x.n_clean} clean, median elongation {elong}"]
    if panel.probs is not None:
        lines.append(_probs_text(panel.probs, per_line=5 if single else 3))
    elif panel.reason:
        lines.append(panel.reason)
    return "\n".join(lines)


def _draw(inspection: Inspection, png_path: Path, stretch: str, single: bool) -> Path:
    atomic_write_bytes(png_path, render_png(inspection, stretch, single))
    log.info("wrote %s (%d CCD panel(s))", png_path, len(inspection.panels))
    return png_path


def render_png(inspection: Inspection, stretch: str = "asinh", single: bool = True) -> bytes:
    """The PNG :func:`inspect_exposure` writes, as bytes: one large panel (``single``) or the
    focal-plane grid of small ones. The observer page draws a CCD's SOM hit grid with it."""
    if stretch not in STRETCHES:
        raise InspectError(f"stretch must be one of {', '.join(STRETCHES)}, got {stretch!r}")
    title, tile, panels = inspection
    gap = max(1, tile // 16)
    band = max(6, int(round(tile * 0.4)))
    n = len(panels)
    cols = 1 if single else min(FOCAL_PLANE_COLUMNS, n)
    rows = math.ceil(n / cols)
    n_clusters = next((len(p.inputs.hits) for p in panels if p.inputs is not None), 20)
    t_rows, t_cols = tile_grid(n_clusters)
    aspect = (t_rows * (tile + band)) / (t_cols * (tile + gap))  # height / width of a mosaic
    panel_w = 6.4 if single else 2.3
    title_h = 1.1 if single else 0.75
    fig_w = cols * panel_w
    fig_h = rows * (panel_w * aspect + title_h) + (0.7 if single else 0.5)
    fig = Figure(figsize=(fig_w, fig_h), dpi=110 if single else 90, facecolor="white")
    FigureCanvasAgg(fig)
    fig.suptitle(_wrap_title(title, 70 if single else 40 * cols), fontsize=11 if single else 12)
    axes = fig.subplots(rows, cols, squeeze=False)
    cmap = _grey()
    text_size = 9 if single else 5.5
    title_size = 9 if single else 6
    for ax in axes.flat:
        ax.set_axis_off()
    for panel, ax in zip(panels, axes.flat, strict=False):
        ax.set_title(_panel_title(panel, single), fontsize=title_size, loc="center")
        if panel.inputs is None:
            ax.text(0.5, 0.5, panel.reason or "", ha="center", va="center", fontsize=title_size)
            continue
        hits = panel.inputs.hits
        mosaic = _spaced_mosaic(panel.inputs.image, hits, tile, gap, band)
        shown, vmin, vmax = _stretch(mosaic, stretch)
        ax.imshow(shown, cmap=cmap, vmin=vmin, vmax=vmax, interpolation="nearest")
        cols_k = tile_grid(len(hits))[1]
        for k, count in enumerate(hits):
            r, c = divmod(k, cols_k)
            label = f"#{k}: {count}" if single else f"{count}"
            ax.text(
                c * (tile + gap) + tile / 2 - 0.5,
                r * (tile + band) + tile + band / 2 - 0.5,
                label,
                ha="center",
                va="center",
                fontsize=text_size,
                color="black" if count else "0.6",
            )
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.45 / fig_h))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def _grey():
    """Greyscale colour map with NaN (gaps, label bands) drawn as the white background."""
    return colormaps["gray"].with_extremes(bad="white")
