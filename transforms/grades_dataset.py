"""The grades dataset: its layout, its file format, and reading and writing it.

One folder holds three trees, each partitioned by night (hive style, ``night=YYYY-MM-DD``)::

    exposures/night=N/<exposure_id>.<version_tag>.parquet   one row: the exposure's grade
    ccds/night=N/<exposure_id>.<version_tag>.parquet        one row per CCD
    images/night=N/<exposure_id>.<version_tag>.npz          the CCDs' representative images

one file per exposure per model version (:func:`exposure_file_name`). The exposure file is the
commit mark: it is written last, so its presence means the CCD rows and images it refers to are
in place. :class:`GradesDataset` is the one place that knows this layout: the sinks, the
daemon, backfill, the report and the observer page all go through it. Every file is written
atomically (:func:`skygrade.ops.files.write_parquet_atomic`), so a reader (or a crash) never sees
half a file. Plain pyarrow and numpy: no Beam here (the Beam sink is
:mod:`skygrade.transforms.sinks`).
"""

from __future__ import annotations

import contextlib
import glob
import hashlib
import io
import os
import re
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from skygrade.models.classes import CLASSES
from skygrade.ops.files import atomic_write_bytes, write_parquet_atomic
from skygrade.ops.text import escape_controls

TREES = ("exposures", "ccds", "images")
"""The dataset's three trees, each partitioned by night."""

_PARTITION = "night="


def night_of(partition: str | os.PathLike) -> str:
    """The night of a partition folder: ``.../night=2026-03-01`` -> ``2026-03-01``."""
    return Path(partition).name.removeprefix(_PARTITION)


PHYSICS_FIELDS: tuple[tuple[str, pa.DataType], ...] = (
    ("seeing_arcsec", pa.float64()),
    ("seeing_minor_arcsec", pa.float64()),
    ("seeing_zenith_arcsec", pa.float64()),
    ("n_psf_stars", pa.int32()),
    ("psf_ellipticity", pa.float64()),
    ("psf_pa_deg", pa.float64()),
    ("sky_adu_s", pa.float64()),
    ("sky_mag_arcsec2", pa.float64()),
    ("source_count_ratio", pa.float64()),
    ("seeing_method", pa.string()),
)
"""What observers read (:mod:`skygrade.transforms.psf_measure`), in the exposure and CCD rows, null
where not measured: ``seeing_arcsec`` the median PSF FWHM of the stars (equivalent circle),
``seeing_minor_arcsec`` along the minor axis (robust to a linear trail),
``seeing_zenith_arcsec`` times airmass^-0.6, ``n_psf_stars`` the stars used,
``psf_ellipticity`` and ``psf_pa_deg`` (degrees from +x towards +y), ``sky_adu_s`` (ADU/s per
pixel, bias removed), ``sky_mag_arcsec2`` (nominal or PHOTZP zero point),
``source_count_ratio`` (clean detections over the expectation for the filter and exposure
time: a transparency proxy, not a photometric zero point) and ``seeing_method``
(``moffat_fit``, ``catalog_flux_radius`` or ``none``). The exposure rows also have
``airmass`` (the header's)."""

EXPOSURE_SCHEMA = pa.schema(
    [
        ("exposure_id", pa.string()),
        ("night", pa.string()),
        ("path", pa.string()),
        ("grade", pa.string()),
        *[(f"p_{c}", pa.float64()) for c in CLASSES],
        ("confidence", pa.float64()),
        ("ood_score", pa.float64()),
        ("n_ccd", pa.int32()),
        ("n_ccd_graded", pa.int32()),
        ("n_sources", pa.int64()),
        ("median_elongation", pa.float64()),
        ("median_iso0", pa.float64()),
        ("median_background", pa.float64()),
        *PHYSICS_FIELDS,
        ("airmass", pa.float64()),
        ("exptime", pa.float64()),
        ("filter", pa.string()),
        ("object", pa.string()),
        ("date_obs", pa.string()),
        ("model_version", pa.string()),
        ("config_digest", pa.string()),
        ("arrived_at", pa.timestamp("ms", tz="UTC")),
        ("graded_at", pa.timestamp("ms", tz="UTC")),
        ("latency_s", pa.float64()),
        *[(f"{stage}_s", pa.float64()) for stage in ("extract", "som", "representative", "score")],
        ("status", pa.string()),
        ("reason", pa.string()),
    ]
)
"""One row per exposure: ``exposures/night=YYYY-MM-DD/<exposure_id>.<version_tag>.parquet``.
The ``*_s`` columns are seconds of work per stage summed over the CCDs (CPU time, not wall time)."""

CCD_SCHEMA = pa.schema(
    [
        ("exposure_id", pa.string()),
        ("night", pa.string()),
        ("ccd", pa.int16()),
        ("grade", pa.string()),
        *[(f"p_{c}", pa.float64()) for c in CLASSES],
        ("ood_score", pa.float64()),
        ("hits", pa.list_(pa.int32())),
        ("n_sources", pa.int32()),
        ("median_elongation", pa.float64()),
        ("median_iso0", pa.float64()),
        ("median_background", pa.float64()),
        *PHYSICS_FIELDS,
        ("status", pa.string()),
        ("reason", pa.string()),
        ("model_version", pa.string()),
    ]
)
"""One row per CCD: ``ccds/night=YYYY-MM-DD/<exposure_id>.<version_tag>.parquet``."""


def rows_table(rows: list[dict], schema: pa.Schema) -> pa.Table:
    """Rows (dicts) as an Arrow table of ``schema``, without the ``night`` partition column."""
    columns = {}
    for f in schema:
        values = [r.get(f.name) for r in rows]
        if pa.types.is_timestamp(f.type):
            values = [None if v is None else int(v * 1000) for v in values]
        columns[f.name] = pa.array(values, type=f.type)
    # the night is the partition key (a directory), not a column of the files
    return pa.table(columns, schema=schema).drop_columns(["night"])


def stored_row(row: dict) -> dict:
    """An exposure row as reading its file back gives it: the schema's columns, timestamps as
    aware datetimes (ms), and ``night``. What the pipeline hands on, so that a caller sees the
    same row whether it got it from the pipeline or from the dataset."""
    return {**rows_table([row], EXPOSURE_SCHEMA).to_pylist()[0], "night": row["night"]}


_UNSAFE = re.compile(r"[^A-Za-z0-9._-]")


def version_tag(model_version: str) -> str:
    """``model_version`` made safe for a file name (characters other than ``A-Za-z0-9._-``
    become ``_``).

    Examples
    --------
    >>> version_tag("2026.11.24-101500")
    '2026.11.24-101500'
    >>> version_tag("exp/1 a")
    'exp_1_a'
    """
    if not model_version:
        raise ValueError(f"model_version must be a non-empty string, got {model_version!r}")
    return _UNSAFE.sub("_", model_version)


#: Longest exposure id (UTF-8 bytes) that goes into a file name as it is; see
#: :func:`exposure_file_name`.
MAX_NAME_ID_BYTES = 96
#: Longest model version tag (bytes) that goes into a file name as it is.
MAX_NAME_TAG_BYTES = 64
_NAME_SAFE = re.compile(r"[^A-Za-z0-9_-]")


def _bounded(text: str, limit: int) -> str:
    raw = text.encode("utf-8", "surrogateescape")
    if len(raw) <= limit and not text.startswith(".") and "/" not in text and "\0" not in text:
        return text
    digest = hashlib.sha256(raw).hexdigest()[:16]
    return f"{_NAME_SAFE.sub('_', text)[:40]}~{digest}"


def exposure_file_name(exposure_id: str, model_version: str) -> str:
    """The file name of an exposure's rows: ``<exposure_id>.<version_tag>.parquet``, bounded.

    An exposure id comes from the header (EXPNUM: 7 digits) or, without one, from the file
    name, which may be up to 255 bytes long: as it was, it made a name the file system
    refuses (``ENAMETOOLONG``, issue 21 item 3). An id longer than
    :data:`MAX_NAME_ID_BYTES` bytes (or one that could not be a name) becomes its first 40
    characters, made safe, then ``~`` and 16 hex digits of its SHA-256; a version tag longer
    than :data:`MAX_NAME_TAG_BYTES` the same way. The name stays under 200 bytes, which leaves
    room for the temporary name of an atomic write (:func:`skygrade.ops.files.atomic_path`).

    Examples
    --------
    >>> exposure_file_name("2817001", "v1")
    '2817001.v1.parquet'
    >>> len(exposure_file_name("x" * 250, "v1").encode()) < 200
    True
    """
    tag = _bounded(version_tag(model_version), MAX_NAME_TAG_BYTES)
    return f"{_bounded(exposure_id, MAX_NAME_ID_BYTES)}.{tag}.parquet"


IMAGE_RANGE = (-0.2, 1.5)
"""Value range of a representative image: :func:`skygrade.transforms.representative.scale_stamp`
puts a source's peak at 1 and clips to this range. Stored images map it linearly onto 0..255."""


def quantize_image(image: np.ndarray) -> np.ndarray:
    """A representative image as uint8: :data:`IMAGE_RANGE` mapped linearly onto 0..255."""
    lo, hi = IMAGE_RANGE
    scaled = (np.asarray(image, dtype=np.float32) - lo) * (255.0 / (hi - lo))
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


def write_images(path: str | os.PathLike, images: Mapping[int, np.ndarray]) -> Path:
    """Write the representative images of one exposure's CCDs atomically, small.

    One compressed ``.npz`` (no pickle): ``ccd`` (int16, n), ``image`` (uint8, n x H x W, see
    :func:`quantize_image`) and ``range`` (the float range 0..255 stands for). ~10-30 kB per
    CCD of 32-pixel tiles; CCDs whose images differ in shape are not expected (one bundle).
    """
    ccds = sorted(images)
    stack = (
        np.stack([quantize_image(images[c]) for c in ccds])
        if ccds
        else np.zeros((0, 0, 0), np.uint8)
    )
    buf = io.BytesIO()
    np.savez_compressed(
        buf,
        ccd=np.asarray(ccds, dtype=np.int16),
        image=stack,
        range=np.asarray(IMAGE_RANGE, dtype=np.float32),
    )
    return atomic_write_bytes(path, buf.getvalue())


def read_images(path: str | os.PathLike) -> dict[int, np.ndarray]:
    """The uint8 representative images of :func:`write_images` as {ccd: image}."""
    with np.load(path, allow_pickle=False) as z:
        return {int(c): img for c, img in zip(z["ccd"], z["image"], strict=True)}


class GradesDataset:
    """The grades dataset under ``root`` (see the module docstring for the layout).

    Parameters
    ----------
    root : path-like
        The dataset's folder (``skygrade grade --out``, the daemon's ``output.dir``).

    Examples
    --------
    >>> import tempfile
    >>> data = GradesDataset(tempfile.mkdtemp())
    >>> data.nights()
    []
    >>> data.paths("2026-03-01", "2817001", "v1")[0].relative_to(data.root).as_posix()
    'exposures/night=2026-03-01/2817001.v1.parquet'
    """

    def __init__(self, root: str | os.PathLike) -> None:
        self.root = Path(root)

    def __repr__(self) -> str:
        return f"GradesDataset({str(self.root)!r})"

    # ------------------------------------------------------------------ layout

    def partition(self, night: str, tree: str = "exposures") -> Path:
        """The folder of ``night`` in ``tree`` (one of :data:`TREES`)."""
        if tree not in TREES:
            raise ValueError(f"tree must be one of {TREES}, got {tree!r}")
        return self.root / tree / f"{_PARTITION}{night}"

    def paths(self, night: str, exposure_id: str, model_version: str) -> tuple[Path, Path]:
        """Where an exposure's rows go: (exposures file, ccds file).

        One file per exposure per model version. Regrading with the same model replaces the
        file (exactly one row per exposure and version, whatever crashed in between); a new
        model writes its rows beside the old ones. The exposure id is the part of the file
        name before the first dot, unless it is too long for a file name
        (:func:`exposure_file_name`: then a hash stands for it; the rows hold it in full).
        """
        name = exposure_file_name(exposure_id, model_version)
        return self.partition(night) / name, self.partition(night, "ccds") / name

    def ccds_file(self, exposures_file: str | os.PathLike) -> Path:
        """The CCD rows written with the exposure file ``exposures_file``."""
        path = Path(exposures_file)
        return self.root / "ccds" / path.parent.name / path.name

    def images_file(self, exposures_file: str | os.PathLike) -> Path:
        """The representative images written with the exposure file ``exposures_file``
        (``.npz`` beside, not inside, the parquet trees, so that those stay pure parquet)."""
        path = Path(exposures_file)
        return self.root / "images" / path.parent.name / f"{path.stem}.npz"

    # ------------------------------------------------------------------ reading

    def has_exposures(self) -> bool:
        """Whether the ``exposures`` tree exists (an empty dataset has none)."""
        return (self.root / "exposures").is_dir()

    def nights(self) -> list[str]:
        """The nights that have an exposure partition, sorted."""
        try:
            with os.scandir(self.root / "exposures") as entries:
                found = [
                    night_of(e.name)
                    for e in entries
                    if e.name.startswith(_PARTITION) and e.is_dir(follow_symlinks=False)
                ]
        except (FileNotFoundError, NotADirectoryError):
            return []
        return sorted(found)

    def exposure_files(self, night: str | None = None, name: str = "*.parquet") -> list[Path]:
        """The exposure files of ``night`` (default: every night) matching ``name`` (a glob
        pattern), sorted; temporary and hidden files (``.``/``_``) left out."""
        pattern = f"{_PARTITION}{glob.escape(night) if night else '*'}/{name}"
        return [
            f
            for f in sorted((self.root / "exposures").glob(pattern))
            if not f.name.startswith((".", "_"))
        ]

    def read_file(self, exposures_file: str | os.PathLike, columns=None) -> list[dict]:
        """The rows of one exposure file, each with its ``night`` (the partition key)."""
        path = Path(exposures_file)
        rows = pq.read_table(path, columns=columns).to_pylist()
        for row in rows:
            row["night"] = night_of(path.parent)
        return rows

    def night_rows(self, night: str) -> list[dict]:
        """Every exposure row of ``night`` (all model versions), with ``night`` set."""
        return [row for f in self.exposure_files(night) for row in self.read_file(f)]

    def rows_of(self, exposure_id: str, model_version: str) -> list[dict]:
        """The rows of one exposure graded with ``model_version``, in whichever nights they
        were filed: read by file name, not by scanning the dataset (which grows all night)."""
        name = glob.escape(exposure_file_name(exposure_id, model_version))
        return [row for f in self.exposure_files(name=name) for row in self.read_file(f)]

    def read(self, tree: str = "exposures") -> pa.Table:
        """The whole ``exposures`` or ``ccds`` tree as one table (``night`` a column).

        Read with the current schema, so that files written before a column was added (the
        physical columns of issue 22) give nulls there instead of hiding the column from the
        whole table (pyarrow otherwise takes the schema of the first file it finds); a dataset
        whose files disagree with the schema on a column's type is read as its files say.
        """
        if tree not in ("exposures", "ccds"):
            raise ValueError(f"tree must be 'exposures' or 'ccds', got {tree!r}")
        root = self.root / tree
        schema = EXPOSURE_SCHEMA if tree == "exposures" else CCD_SCHEMA
        if not root.exists():
            return schema.empty_table()
        try:
            dataset = ds.dataset(
                root,
                format="parquet",
                partitioning="hive",
                exclude_invalid_files=True,
                schema=schema,
            )
            return dataset.to_table()
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            dataset = ds.dataset(
                root, format="parquet", partitioning="hive", exclude_invalid_files=True
            )
            return dataset.to_table()

    # ------------------------------------------------------------------ writing

    def write(self, row: dict, ccd_rows: list[dict], file_name: str | None = None) -> Path:
        """Write one exposure's rows: the CCD images, then the CCD file, then the exposure
        file, each atomically; returns the exposure file.

        The exposure file is the commit mark: its presence means the exposure is done, and the
        images and CCD rows it refers to are already in place. Writing the same exposure with
        the same model again (a regrade after a crash) replaces the files, so the dataset
        holds each exposure exactly once per model version; an earlier outcome in another
        night's partition (a quarantine row filed under the night of arrival, then the graded
        row under the night of DATE-OBS: issue 21 item 5) is removed once the new one is in
        place (:meth:`remove_other_nights`). CCD rows may carry an ``image`` (the CCD's
        representative image, not a parquet column): those go to :meth:`images_file`, as
        uint8 (:func:`write_images`). Reasons are written with their control characters
        escaped (:func:`skygrade.ops.text.escape_controls`). ``file_name``: an existing file that
        holds this version's row (backfill) is replaced under its own name.
        """
        # A reason names the file: no control character of its name reaches the dataset (and
        # the page). Escaped in place, so that the rows handed on (ledger, log) are the same.
        for r in (row, *ccd_rows):
            if r.get("reason"):
                r["reason"] = escape_controls(r["reason"])
        exp_path, ccd_path = self.paths(row["night"], row["exposure_id"], row["model_version"])
        if file_name is not None:
            exp_path, ccd_path = exp_path.with_name(file_name), ccd_path.with_name(file_name)
        images = {int(r["ccd"]): r["image"] for r in ccd_rows if r.get("image") is not None}
        if images:
            write_images(self.images_file(exp_path), images)
        write_parquet_atomic(rows_table(ccd_rows, CCD_SCHEMA), ccd_path)
        written = write_parquet_atomic(rows_table([row], EXPOSURE_SCHEMA), exp_path)
        names = {exp_path.name, exposure_file_name(row["exposure_id"], row["model_version"])}
        self.remove_other_nights(row["night"], names)
        return written

    def remove_other_nights(self, night: str, names: set[str]) -> int:
        """Remove the files named ``names`` (an exposure's files for one model version) from
        every night partition but ``night``; returns how many exposure files went.

        One exposure, one row per model version, whichever night its outcomes were filed
        under: a file quarantined as truncated has no readable DATE-OBS and goes under the
        night of its arrival; completed later, it is graded under the night of its DATE-OBS.
        The later outcome replaces the earlier one, as it does within a night. Called once the
        new exposure file is in place, so a crash in between leaves two rows, never none; and
        the daemon commits an exposure to its ledger only after its rows are written, so after
        such a crash it writes the exposure again and this removal is finished then. In each
        old night the exposure file (the commit mark) goes first, then the CCD file and the
        images; a partition left empty is removed, so that no empty night is listed (the
        observer's live night is the latest).
        """
        keep = f"{_PARTITION}{night}"
        removed = 0
        for tree in TREES:
            root = self.root / tree
            try:
                with os.scandir(root) as entries:
                    folders = [
                        e.name
                        for e in entries
                        if e.name.startswith(_PARTITION)
                        and e.name != keep
                        and e.is_dir(follow_symlinks=False)
                    ]
            except (FileNotFoundError, NotADirectoryError):
                continue
            for folder in folders:
                gone = 0
                for name in names:
                    file = root / folder / (name if tree != "images" else f"{Path(name).stem}.npz")
                    try:
                        os.unlink(file)
                    except FileNotFoundError:
                        continue
                    gone += 1
                if gone:
                    removed += gone if tree == "exposures" else 0
                    with contextlib.suppress(OSError):  # only if empty: a writer keeps it
                        os.rmdir(root / folder)
        return removed
