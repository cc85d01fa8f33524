import argparse
import logging
import struct

import numpy as np
import pytest

from skygrade.models.bundle import ModelBundle
from skygrade.models.classes import CLASSES
from skygrade.models.cnn import CnnShape, DualInputNet
from skygrade.models.som import SOM_FEATURES, train_som
from skygrade.ops.config import Config
from skygrade.streamer.commands.inspect import add_arguments, command
from skygrade.streamer.inspect import InspectError, inspect_exposure, inspect_panels
from skygrade.streamer.sky_fits import write_exposure
from skygrade.streamer.sky_plan import Geometry, plan_night
from skygrade.transforms.exposure_errors import ExposureError

TILE = 16
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def exposure(tmp_path_factory):
    plan = plan_night("2024-03-01", 1, seed=5, class_mix={"BT": 1.0})[0]
    path = tmp_path_factory.mktemp("drop") / plan.filename
    return write_exposure(plan, Geometry(2, 512, 1152), path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    rows = np.random.default_rng(0).normal(size=(4000, len(SOM_FEATURES))).astype(np.float32)
    som = train_som(rows, grid=(6, 6), iterations=1000, n_clusters=20, seed=0)
    path = tmp_path_factory.mktemp("bundles") / "tiny"
    return ModelBundle(som, DualInputNet(CnnShape(tile=TILE)), {"version": "tiny-1"}).save(path)


def png_size(path):
    """(width, height) of a PNG, after checking its signature and IHDR chunk."""
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    length, kind = struct.unpack(">I4s", data[8:16])
    assert kind == b"IHDR" and length == 13
    width, height = struct.unpack(">II", data[16:24])
    assert data[-12:-4] == b"\x00\x00\x00\x00IEND"
    return width, height


def test_every_ccd_is_drawn_into_a_valid_png(exposure, bundle, tmp_path, caplog):
    from matplotlib.image import imread

    out = tmp_path / "figs" / "all.png"
    with caplog.at_level(logging.INFO, logger="skygrade.streamer.inspect"):
        assert inspect_exposure(exposure, bundle, out) == out
    width, height = png_size(out)
    assert 400 <= width <= 4000 and 200 <= height <= 4000
    pixels = imread(out)
    assert pixels.shape[:2] == (height, width)
    assert pixels.std() > 0.05  # not a blank canvas
    assert "(2 CCD panel(s))" in caplog.text
    assert not list(out.parent.glob(".*.tmp"))  # written atomically, nothing left behind


def test_panels_carry_hits_image_and_probabilities(exposure, bundle):
    inspection = inspect_panels(exposure, bundle)
    assert inspection.tile == TILE
    assert "exposure " in inspection.title and "tiny-1" in inspection.title
    assert [p.ccd for p in inspection.panels] == [0, 1]
    for panel in inspection.panels:
        x = panel.inputs
        assert x is not None and x.n_clean > 0
        assert int(x.hits.sum()) == x.n_clean
        assert x.image.shape == (4 * TILE, 5 * TILE)
        assert panel.probs.shape == (len(CLASSES),)
        assert panel.probs.sum() == pytest.approx(1.0, abs=1e-5)


def test_ccd_option_selects_one_ccd(exposure, bundle, tmp_path, caplog):
    full = inspect_exposure(exposure, bundle, tmp_path / "full.png")
    with caplog.at_level(logging.INFO, logger="skygrade.streamer.inspect"):
        one = inspect_exposure(exposure, bundle, tmp_path / "one.png", ccd=1, stretch="linear")
    assert "(1 CCD panel(s))" in caplog.text
    assert png_size(one) != png_size(full)
    assert [p.ccd for p in inspect_panels(exposure, bundle, ccd=1).panels] == [1]


@pytest.mark.parametrize("ccd", [2, -1, 99])
def test_a_bad_ccd_index_is_a_clear_error(exposure, bundle, tmp_path, ccd):
    with pytest.raises(InspectError, match=rf"--ccd {ccd} is not a CCD .* has 2 CCD.*0\.\.1"):
        inspect_exposure(exposure, bundle, tmp_path / "x.png", ccd=ccd)
    assert not (tmp_path / "x.png").exists()


def test_command_line(exposure, bundle, tmp_path, capsys):
    from skygrade.streamer.cli import build_parser
    from skygrade.streamer.cli_common import UsageError

    top = build_parser(["inspect"])
    help_text = top._subparsers._group_actions[0].choices["inspect"].format_help()
    assert "skygrade inspect" in help_text  # the example is in the help
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    out = tmp_path / "cli.png"
    args = parser.parse_args(
        [str(exposure), "--ccd", "0", "--png", str(out), "--bundle", str(bundle)]
    )
    assert command(args, Config()) == 0
    assert str(out) in capsys.readouterr().out
    png_size(out)
    bad = parser.parse_args(
        [str(exposure), "--ccd", "7", "--png", str(out), "--bundle", str(bundle)]
    )
    with pytest.raises(UsageError, match="has 2 CCD"):
        command(bad, Config())
    missing = parser.parse_args([str(tmp_path / "nope.fits"), "--png", str(out)])
    with pytest.raises(UsageError, match="nope.fits"):
        command(missing, Config())


def test_bad_inputs_name_the_file(exposure, bundle, tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.fits"):
        inspect_exposure(tmp_path / "nope.fits", bundle, tmp_path / "x.png")
    cut = tmp_path / "cut.fits"
    cut.write_bytes(exposure.read_bytes()[:10_000])
    with pytest.raises(ExposureError, match="cut.fits"):
        inspect_exposure(cut, bundle, tmp_path / "x.png")
    with pytest.raises(InspectError, match="stretch"):
        inspect_exposure(exposure, bundle, tmp_path / "x.png", stretch="log")


def test_a_bundle_without_cnn_weights_draws_without_probabilities(exposure, bundle, tmp_path):
    import shutil

    som_only = tmp_path / "som-only"
    shutil.copytree(bundle, som_only)
    (som_only / "cnn.pt").unlink()
    inspection = inspect_panels(exposure, som_only, ccd=0)
    assert inspection.panels[0].probs is None and inspection.panels[0].inputs is not None
    png_size(inspect_exposure(exposure, som_only, tmp_path / "som.png", ccd=0))
