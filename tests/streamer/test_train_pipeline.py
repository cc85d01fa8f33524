"""A tiny end-to-end training run: simulate -> extract -> SOM -> shards -> CNN -> bundle."""

import dataclasses

import numpy as np
import pytest

from skygrade.models.bundle import load_bundle
from skygrade.models.cnn import AUX_FEATURES
from skygrade.ops.config import TRAIN_INPUTS, Config, SomConfig, TrainConfig
from skygrade.streamer.sky_plan import Geometry
from skygrade.streamer.telescope import simulate_archive
from skygrade.streamer.training_job import run_train
from skygrade.transforms.dataset import find_archive, read_labels


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("archive")
    mix = {"GOOD": 1.0, "B_SEEING": 1.0, "RBT": 1.0}
    simulate_archive(root, ["2026-10-01", "2026-10-02"], 15, Geometry(4, 512, 1152), 4, mix)
    return root


def test_find_archive_reads_labels_and_nights(archive):
    items = find_archive(archive)
    assert len(items) == 30 and {i.night for i in items} == {"2026-10-01", "2026-10-02"}
    assert all(i.label == read_labels(archive)[i.exposure_id] for i in items)


def test_labels_file_errors_name_the_line(tmp_path):
    (tmp_path / "labels.csv").write_text("exposure_id,label\n1,GOOD\n2,MEH\n")
    with pytest.raises(ValueError, match="line 3: label 'MEH'"):
        read_labels(tmp_path)
    with pytest.raises(FileNotFoundError, match="labels.csv"):
        read_labels(tmp_path / "nowhere")


def test_tiny_training_learns_and_writes_a_loadable_bundle(archive, tmp_path):
    cfg = dataclasses.replace(
        Config(),
        som=SomConfig(grid=(8, 8), iterations=3000),
        train=TrainConfig(
            tile=16,
            epochs=25,
            patience=8,
            batch_size=8,
            learning_rate=3e-3,
            val_fraction=0.2,
            test_fraction=0.3,
            ensemble=2,
        ),
    )
    lines = []
    summary = run_train(
        archive, tmp_path / "bundle", cfg, work_dir=tmp_path / "work", progress=lines.append
    )
    assert any(line.startswith("stage 4/4") for line in lines)
    split = summary["split"]
    assert split.by == "exposure" and len(split.test) >= 6
    assert not set(split.test) & set(split.train)
    acc = summary["metrics"]["full"]["exposure"]["accuracy"]
    print(f"tiny training: held-out exposure accuracy {acc:.2f} on {len(split.test)} exposures")
    assert acc > 0.5  # three classes: chance is 1/3
    bundle = load_bundle(summary["bundle"])
    assert bundle.manifest["training"]["n_exposures"] == 30
    assert len(bundle.manifest["training"]["data_digest"]) == 16
    assert bundle.tile == 16
    assert bundle.n_members == 2 and bundle.manifest["cnn"]["members"] == 2
    assert len(summary["metrics"]["history"]) == 2
    # the network reads train.inputs (the default: the shipped bundle's), and the bundle says so
    assert bundle.aux_features == TRAIN_INPUTS == Config().train.inputs
    assert bundle.cnn.shape.n_aux == len(TRAIN_INPUTS)
    assert len(bundle.ood["names"]) == bundle.cnn.shape.n_clusters + len(TRAIN_INPUTS)
    # a retrain reuses the cached features: stage 1 extracts nothing; one more input is a setting
    lines.clear()
    more = (*TRAIN_INPUTS, "log_sky_spread_adu")
    cfg2 = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, inputs=more))
    second = run_train(
        archive, tmp_path / "bundle2", cfg2, work_dir=tmp_path / "work", progress=lines.append
    )
    assert "30 cached, extracting 0" in " ".join(lines)
    assert np.isfinite(summary["metrics"]["catalog"]["exposure"]["accuracy"])
    bundle2 = load_bundle(second["bundle"])
    assert bundle2.aux_features == more and bundle2.cnn.shape.n_aux == len(more)
    assert set(AUX_FEATURES) == set(more)  # the code computes nothing else


def test_exposures_quarantined_ccd_by_ccd_are_not_extracted_again(tmp_path):
    from types import SimpleNamespace

    from skygrade.streamer.pipelines import cache_features

    quarantine = tmp_path / "_quarantine"
    quarantine.mkdir()
    for ccd in range(2):  # every CCD of exposure 1234 was quarantined: no parquet file
        (quarantine / f"1234.ccd{ccd:02d}.json").write_text("{}")
    (quarantine / "99.json").write_text("{}")  # a whole-exposure record
    items = [SimpleNamespace(exposure_id=e, path=f"/nowhere/{e}o.fits") for e in ("1234", "99")]
    lines = []
    assert cache_features(items, tmp_path, cfg=None, options=None, say=lines.append) == []
    assert lines == ["features: 2 cached, extracting 0"]


def test_training_with_sextractor_catalogs_of_the_same_exposures(archive, tmp_path):
    """`train --catalogs`: SExtractor catalogs of a third of the exposures are trained on beside
    the pixels (image flag 0), each on its exposure's side of the split, and the held-out
    catalogs are scored."""
    from skygrade.streamer.archive_catalogs import catalog_archive
    from skygrade.transforms.dataset import read_shard

    catalogs = tmp_path / "catalogs"
    catalog_archive(archive, catalogs, sky="mixed", workers=2, every=3)
    assert len(find_archive(catalogs)) == 10
    cfg = dataclasses.replace(
        Config(),
        som=SomConfig(grid=(6, 6), iterations=1000, n_clusters=8),
        train=TrainConfig(
            tile=8, epochs=3, patience=3, batch_size=8, val_fraction=0.2, test_fraction=0.3
        ),
    )
    lines = []
    summary = run_train(
        archive,
        tmp_path / "bundle",
        cfg,
        work_dir=tmp_path / "work",
        progress=lines.append,
        catalogs=catalogs,
    )
    assert any("catalog CCD samples from 10 catalogs" in line for line in lines)
    flags = [read_shard(p)["flag"] for p in (tmp_path / "work" / "catalog-shards").glob("*.npz")]
    assert len(flags) == 10 and all(len(f) and not f.any() for f in flags)
    pixel_flags = [read_shard(p)["flag"] for p in (tmp_path / "work" / "shards").glob("*.npz")]
    assert all(f.all() for f in pixel_flags)
    test_ids = set(summary["split"].test)
    held = summary["metrics"].get("catalog_files")
    cat_test = test_ids & {i.exposure_id for i in find_archive(catalogs)}
    if cat_test:
        assert held["exposure"]["n"] == len(cat_test)
    manifest = load_bundle(summary["bundle"]).manifest
    assert manifest["training"]["catalogs"]["n_exposures"] == 10
    assert manifest["training"]["n_exposures"] == 30


def test_catalogs_that_disagree_with_the_archive_are_refused_before_any_work(archive, tmp_path):
    catalogs = tmp_path / "catalogs"
    (catalogs / "2026-10-01").mkdir(parents=True)
    first = find_archive(archive)[0]
    other = "GOOD" if first.label != "GOOD" else "RBT"
    (catalogs / "labels.csv").write_text(f"exposure_id,label\n{first.exposure_id},{other}\n")
    (catalogs / "2026-10-01" / f"{first.exposure_id}o.fits").write_bytes(b"")
    with pytest.raises(ValueError, match=f"labelled otherwise.*{first.exposure_id}"):
        run_train(archive, tmp_path / "b", Config(), work_dir=tmp_path / "w", catalogs=catalogs)
    assert not (tmp_path / "w").exists()
    cat_cfg = dataclasses.replace(
        Config(), extract=dataclasses.replace(Config().extract, backend="catalog")
    )
    with pytest.raises(ValueError, match="needs a pixel archive"):
        run_train(archive, tmp_path / "b", cat_cfg, work_dir=tmp_path / "w", catalogs=catalogs)


def test_an_input_the_code_does_not_compute_is_refused_before_any_work(archive, tmp_path):
    train = dataclasses.replace(TrainConfig(), inputs=("log_exptime", "moon_phase"))
    cfg = dataclasses.replace(Config(), train=train)
    with pytest.raises(ValueError, match="train.inputs: 'moon_phase': not an input"):
        run_train(archive, tmp_path / "b", cfg, work_dir=tmp_path / "w")
    assert not (tmp_path / "w").exists()
