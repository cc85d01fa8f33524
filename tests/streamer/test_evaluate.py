"""`skygrade evaluate` end to end on tiny archives: a bundle trained on one, scored on it (test
exposures only) and on an independent archive (all exposures)."""

import argparse
import contextlib
import dataclasses
import io
import json
import shutil

import numpy as np
import pyarrow.parquet as pq
import pytest

from skygrade.models.bundle import load_bundle
from skygrade.ops.config import Config, SomConfig, TrainConfig
from skygrade.streamer.commands.evaluate import add_arguments, command
from skygrade.streamer.evaluate import mean_hits_vector, run_evaluate
from skygrade.streamer.sky_plan import Geometry
from skygrade.streamer.telescope import simulate_archive
from skygrade.streamer.training_job import run_train
from skygrade.transforms.dataset import find_archive, read_shard
from skygrade.transforms.extract import features_from_arrow

MIX = {"GOOD": 1.0, "B_SEEING": 1.0, "RBT": 1.0}
GEOMETRY = Geometry(2, 512, 1152)


@pytest.fixture(scope="module")
def cfg():
    return dataclasses.replace(
        Config(),
        som=SomConfig(grid=(4, 4), iterations=500, n_clusters=6),
        train=TrainConfig(
            tile=8, epochs=2, patience=2, batch_size=8, val_fraction=0.2, test_fraction=0.3
        ),
    )


@pytest.fixture(scope="module")
def trained(tmp_path_factory, cfg):
    root = tmp_path_factory.mktemp("evaluate")
    simulate_archive(root / "train", ["2026-10-01", "2026-10-02"], 6, GEOMETRY, 4, MIX)
    summary = run_train(root / "train", root / "bundle", cfg, work_dir=root / "work")
    return root, summary


@pytest.fixture(scope="module")
def independent(trained, cfg):
    """An archive of other nights and another seed, evaluated through the command line with
    the training's work directory (so the baseline finds the training exposures' features)."""
    root, _ = trained
    simulate_archive(root / "other", ["2026-12-01"], 6, GEOMETRY, 9, MIX)
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [str(root / "other"), "--out", str(root / "report2"), "--bundle", str(root / "bundle")]
        + ["--work", str(root / "work")]
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        code = command(args, cfg)
    return root, code, printed.getvalue()


def test_training_archive_is_evaluated_on_held_out_test_exposures_only(trained, cfg):
    root, summary = trained
    split = summary["split"]
    lines = []
    out = run_evaluate(
        root / "bundle",
        root / "train",
        root / "report",
        cfg,
        work_dir=root / "work",
        progress=lines.append,
    )
    assert out["evaluated"] == sorted(split.test)
    assert not set(out["evaluated"]) & (set(split.train) | set(split.val))
    assert "stage 1/5 features: " in lines[1] and "extracting 0" in lines[1]  # cache reused
    assert [line[:9] for line in lines if line.startswith("stage")] == [
        f"stage {i}/5" for i in range(1, 6)
    ]
    report = json.loads((root / "report" / "report.json").read_text())
    assert report["scope"]["kind"] == "held_out_test"
    assert report["scope"]["n_excluded_train"] == len(split.train)
    # the same test exposures, SOM and network as at training time: the same numbers
    recorded = summary["metrics"]["full"]["exposure"]
    assert report["cnn"]["full"]["exposure"]["accuracy"] == pytest.approx(recorded["accuracy"])
    assert report["cnn"]["full"]["exposure"]["n"] == len(split.test)
    assert report["baseline"]["fit_ids"] == sorted(split.train)
    for mode in ("full", "catalog", "image_only", "hits_only"):
        for level in ("ccd", "exposure"):
            m = report["cnn"][mode][level]
            assert {"accuracy", "macro_f1", "recall", "precision", "ece", "confusion", "n"} <= set(
                m
            )
    assert {"accuracy", "macro_f1", "ece"} <= set(report["baseline"]["metrics"])
    text = (root / "report" / "report.md").read_text()
    assert "only its" in text and "never reported on" in text
    assert "| threshold tree on catalog statistics |" in text
    assert "| CNN catalog mode (image flag 0: hits only) |" in text
    assert "not retrained models" in text
    assert all(f"`{rule}`" in text for rule in report["baseline"]["rules"])
    assert (root / "report" / "confusion.png").read_bytes()[:4] == b"\x89PNG"
    # the features-only hits vectors (image-only ablation) are the shards' vectors
    som = load_bundle(root / "bundle").som
    ccds = [
        c
        for e in split.test
        for c in features_from_arrow(pq.read_table(root / "work" / "features" / f"{e}.parquet"))
    ]
    shards = np.concatenate(
        [read_shard(root / "work" / "shards" / f"{e}.npz")["vector"] for e in split.test]
    )
    np.testing.assert_allclose(mean_hits_vector(ccds, som), shards.mean(0), rtol=1e-5)


def test_independent_archive_is_evaluated_entirely(independent):
    root, code, printed = independent
    assert code == 0
    report = json.loads((root / "report2" / "report.json").read_text())
    ids = sorted(i.exposure_id for i in find_archive(root / "other"))
    assert report["scope"]["kind"] == "independent"
    assert report["scope"]["exposure_ids"] == ids
    assert report["comparison"]["exposure_ids"] == ids
    assert "training exposures" in report["baseline"]["fit_on"]
    assert not set(report["baseline"]["fit_ids"]) & set(ids)
    assert "threshold tree on catalog statistics" in printed and "report.md" in printed


def test_independent_archive_without_training_features_fits_the_baseline_on_a_half(
    independent, cfg
):
    root, _, _ = independent
    ids = sorted(i.exposure_id for i in find_archive(root / "other"))
    fresh = root / "fresh" / "features"
    fresh.mkdir(parents=True)
    for e in ids:  # this archive's features only: the bundle's training ones are not there
        shutil.copy(root / "work" / "features" / f"{e}.parquet", fresh)
    out = run_evaluate(
        root / "bundle", root / "other", root / "report3", cfg, work_dir=root / "fresh"
    )
    report = out["report"]
    assert out["evaluated"] == ids
    assert "seeded half" in report["baseline"]["fit_on"]
    fit, compared = set(report["baseline"]["fit_ids"]), set(report["comparison"]["exposure_ids"])
    assert fit and compared and not fit & compared and fit | compared == set(ids)
    assert all(r["n_exposures"] == len(compared) for r in report["comparison"]["rows"])


def test_archive_of_sextractor_catalogs_is_evaluated_in_catalog_mode(trained, cfg):
    """Real archived nights are SExtractor catalogs, not pixels: the catalogs of an archive,
    made as an archive makes them (stock default.sex), are evaluated with the catalog backend;
    every CCD enters with image flag 0 and no pixel file is opened."""
    from skygrade.streamer.archive_catalogs import catalog_archive

    root, summary = trained
    done = catalog_archive(root / "train", root / "catalogs", sky="mixed", workers=2)
    assert len(done) == len(find_archive(root / "train"))
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [str(root / "catalogs"), "--out", str(root / "report-cat"), "--backend", "catalog"]
        + ["--bundle", str(root / "bundle"), "--work", str(root / "cwork")]
    )
    with contextlib.redirect_stdout(io.StringIO()):
        assert command(args, cfg) == 0
    assert not (root / "cwork" / "features").exists()  # never mixed with pixel features
    report = json.loads((root / "report-cat" / "report.json").read_text())
    assert report["scope"]["exposure_ids"] == sorted(summary["split"].test)
    assert "holds SExtractor catalogs" in (root / "report-cat" / "report.md").read_text()
    assert report["cnn"]["full"]["exposure"]["n"] == len(summary["split"].test)
    flags = np.concatenate(
        [read_shard(p)["flag"] for p in sorted((root / "cwork" / "catalog-shards").glob("*.npz"))]
    )
    assert len(flags) and not flags.any()


def test_real_archive_catalogs_gz_eight_columns_dead_ccd_and_other_grades(trained, cfg, tmp_path):
    """Catalogs as the real graded ones come: ``NNNNNNNp.fits.ldac.gz``, FITS_1.0 with only
    the eight columns, no header (no EXPTIME, DATE-OBS or size), an empty table for a dead CCD,
    and ``labels.csv`` with an ``also`` column. Evaluate finds, grades and reports them."""
    import gzip

    from astropy.io import fits

    from skygrade.streamer.archive_catalogs import ARCHIVE, sextract_exposure
    from skygrade.transforms.catalog_files import REQUIRED_COLUMNS

    root, summary = trained
    items = find_archive(root / "train")
    test = [i for i in items if i.exposure_id in set(summary["split"].test)][:3]
    out = tmp_path / "real"
    out.mkdir()
    for n, it in enumerate(test):
        ldac = sextract_exposure(it.path, tmp_path / f"{it.exposure_id}.ldac", ARCHIVE)
        with fits.open(ldac) as hdul:
            tables = [h.data for h in hdul if h.name == "LDAC_OBJECTS"]
        hdus = [fits.PrimaryHDU()]
        for k, data in enumerate(tables):
            rows = data[:0] if (n == 0 and k == 0) else data
            cols = [fits.Column(c, data.columns[c].format, array=rows[c]) for c in REQUIRED_COLUMNS]
            hdus.append(fits.BinTableHDU.from_columns(cols, name="OBJECTS"))
        raw = tmp_path / "raw.fits"
        fits.HDUList(hdus).writeto(raw, overwrite=True)
        (out / f"{it.exposure_id}p.fits.ldac.gz").write_bytes(gzip.compress(raw.read_bytes()))
    others = {"GOOD": "B_SEEING", "B_SEEING": "GOOD", "RBT": "BT"}
    (out / "labels.csv").write_text(
        "exposure_id,label,also\n"
        + "".join(f"{i.exposure_id},{i.label},{others[i.label]}\n" for i in test)
    )
    small = dataclasses.replace(
        cfg, extract=dataclasses.replace(cfg.extract, catalog_ccd_shape=(512, 1152))
    )
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(
        [str(out), "--out", str(tmp_path / "rep"), "--backend", "catalog"]
        + ["--bundle", str(root / "bundle"), "--work", str(tmp_path / "work")]
    )
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        assert command(args, small) == 0
    report = json.loads((tmp_path / "rep" / "report.json").read_text())
    assert report["scope"]["n_evaluated"] == 3 and report["agreement"]["n"] == 3
    assert report["agreement"]["n_also"] == 3
    exact = sum(r["grade"] == r["label"] for r in report["agreement"]["rows"])
    assert report["agreement"]["n_exact"] == exact <= report["agreement"]["n_agree"]
    assert "agreement with the person (label or also)" in printed.getvalue()
    assert "Agreement with the person" in (tmp_path / "rep" / "report.md").read_text()
    records = [q.read_text() for q in (tmp_path / "work").rglob("_quarantine/*.json")]
    assert sum("empty_ccd" in r for r in records) == 1  # the dead CCD, not a crash


def test_pipeline_metrics_apply_the_saturated_sky_rule(tmp_path):
    """Exposures with half or more CCDs quarantined as saturated count as BGP, as the grading
    pipeline grades them, whether or not some of their CCDs reached the network."""
    from types import SimpleNamespace

    from skygrade.models.classes import CLASSES
    from skygrade.models.train import Dataset
    from skygrade.streamer.evaluation_tables import pipeline_metrics

    def record(exposure_id, ccd, reason):
        q = tmp_path / "_quarantine"
        q.mkdir(exist_ok=True)
        body = {
            "exposure_id": exposure_id,
            "path": f"{exposure_id}o.fits",
            "ccd": ccd,
            "stage": "extract",
            "reason": reason,
            "detail": f"{exposure_id}o.fits: CCD {ccd}: {reason}: ...",
        }
        (q / f"{exposure_id}.ccd{ccd:02d}.json").write_text(json.dumps(body))

    for ccd in range(6):
        record("B", ccd, "saturated")  # 6 of B's 8 CCDs (2 reached the network)
    for ccd in range(8):
        record("D", ccd, "saturated")  # no CCD for the network
        record("E", ccd, "constant")  # dead CCDs: quarantined, not BGP
    good, bgp = CLASSES.index("GOOD"), CLASSES.index("BGP")
    n = 4
    data = Dataset(
        np.zeros((n, 4, 4), np.float32),
        np.zeros((n, 3), np.float32),
        np.ones(n, np.float32),
        np.array([good, good, bgp, bgp]),
        np.array(["A", "A", "B", "B"]),
    )
    probs = np.full((n, len(CLASSES)), 0.05)
    probs[:, good] = 0.8  # the network reads B as GOOD
    labels = {"A": "GOOD", "B": "BGP", "D": "BGP", "E": "GOOD"}
    evaluated = [SimpleNamespace(exposure_id=e, label=lab) for e, lab in labels.items()]
    out = pipeline_metrics(data, probs, evaluated, tmp_path)
    assert (out["n_rule"], out["n_rule_only"]) == (2, 1)
    assert out["exposure"]["n"] == 3 and out["exposure"]["accuracy"] == 1.0
    # without the records the network's mistake on B stands
    shutil.rmtree(tmp_path / "_quarantine")
    out = pipeline_metrics(data, probs, evaluated, tmp_path)
    assert out["n_rule"] == 0 and out["exposure"]["accuracy"] == 0.5
