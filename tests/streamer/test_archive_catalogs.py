"""Archive-style SExtractor catalogs of a labelled archive (skygrade.streamer.archive_catalogs)."""

from dataclasses import replace

import numpy as np
import pytest
from astropy.io import fits

from skygrade.streamer.archive_catalogs import (
    ARCHIVE,
    FRAME_COLUMNS,
    STOCK,
    draw_extraction,
    extraction_for,
    main,
    processed_exposure,
    sextract_exposure,
    sky_choice,
)
from skygrade.streamer.sky_plan import Geometry
from skygrade.streamer.telescope import simulate_archive
from skygrade.transforms.catalog_files import REQUIRED_COLUMNS, read_catalog
from skygrade.transforms.ccd_pixels import read_ccd


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    root = tmp_path_factory.mktemp("raw")
    simulate_archive(root, ["2026-10-01"], 2, Geometry(2, 512, 1024), 3, {"GOOD": 1.0})
    return root


def test_processed_exposure_removes_the_bias_and_optionally_the_sky(archive):
    path = sorted(archive.rglob("*.fits"))[0]
    raw = read_ccd(path, 1).data
    bias = fits.getheader(path, 2)["BIASLVL"]
    kept, subtracted = processed_exposure(path, "kept"), processed_exposure(path, "subtracted")
    np.testing.assert_allclose(kept[2].data, raw - bias, atol=1e-3)
    assert abs(float(np.median(subtracted[2].data))) < 1.0
    assert kept[2].header["EXPTIME"] == fits.getheader(path, 0)["EXPTIME"]
    with pytest.raises(ValueError, match="sky must be"):
        processed_exposure(path, "halfway")


def test_the_frame_keeps_prescan_and_overscan_strips_about_zero_beside_the_sky(archive):
    path = sorted(archive.rglob("*.fits"))[0]
    kept = processed_exposure(path, "kept")[1].data
    framed = processed_exposure(path, "kept", frame=True)[1].data
    assert framed.shape == (kept.shape[0], kept.shape[1] + 2 * FRAME_COLUMNS)
    np.testing.assert_array_equal(framed[:, FRAME_COLUMNS:-FRAME_COLUMNS], kept)
    strips = np.concatenate([framed[:, :FRAME_COLUMNS], framed[:, -FRAME_COLUMNS:]], axis=1)
    assert abs(float(strips.mean())) < 1.0 and float(np.median(kept)) > 20 * float(strips.std())
    subtracted = processed_exposure(path, "subtracted", frame=True)[1].data
    assert float(np.median(subtracted[:, :FRAME_COLUMNS])) < -0.5 * float(np.median(kept))
    # the real catalogs' configuration keeps the frame; the drawn ones keep it for about half
    assert ARCHIVE.frame and not STOCK.frame
    framed_draws = [draw_extraction(str(e)).frame for e in range(1000, 1200)]
    assert 0.35 < np.mean(framed_draws) < 0.65


def test_mixed_sky_splits_the_archive_by_exposure_number():
    assert [sky_choice(e, "mixed") for e in ("100", "101")] == ["kept", "subtracted"]
    assert sky_choice("101", "kept") == "kept"


def test_command_writes_readable_ldac_catalogs_and_names_a_bad_archive(archive, tmp_path, capsys):
    out = tmp_path / "cats"
    assert main([str(archive), str(out), "--sky", "subtracted", "--workers", "1"]) == 0
    catalogs = sorted(out.rglob("*o.fits"))
    assert len(catalogs) == 2 and "2 catalogs in" in capsys.readouterr().out
    cat = read_catalog(catalogs[0])
    assert cat.format == "FITS_LDAC" and len(cat.sources) == 2 and cat.shapes[0] == (1024, 512)
    sky = float(np.median(cat.sources[0]["BACKGROUND"]))
    assert abs(sky) < 0.05 * float(np.median(read_ccd(sorted(archive.rglob("*.fits"))[0], 0).data))
    assert (out / "labels.csv").read_text().count("GOOD") == 2
    assert main([str(tmp_path / "nowhere"), str(out)]) == 2
    assert "labels.csv" in capsys.readouterr().err


def test_drawn_extractions_are_reproducible_and_span_what_sites_do():
    drawn = [draw_extraction(str(1_000_000 + i)) for i in range(300)]
    assert drawn[7] == draw_extraction("1000007")
    thresh = [e.thresh for e in drawn]
    assert min(thresh) < 2.0 and max(thresh) > 4.5
    assert 0.2 < sum(e.deblend_mincont == 0 for e in drawn) / 300 < 0.5
    assert {e.filter for e in drawn} == {True, False} and {e.sky for e in drawn} == {
        "kept",
        "subtracted",
    }
    assert {e.columns for e in drawn} == {"full", "archive"} and {e.times for e in drawn} == {
        True,
        False,
    }
    assert {e.minarea for e in drawn} == {3, 4, 5}
    assert draw_extraction("5", sky="kept").sky == "kept"
    with pytest.raises(ValueError, match="extraction must be one of"):
        extraction_for("5", "custom", "kept")


def test_archive_extraction_writes_the_real_catalogs_columns_without_exptime(archive, tmp_path):
    path = sorted(archive.rglob("*.fits"))[0]
    out = sextract_exposure(path, tmp_path / "cat.fits", ARCHIVE)
    with fits.open(out) as hdul:
        columns = hdul["LDAC_OBJECTS"].columns.names
    assert columns == list(REQUIRED_COLUMNS)
    cat = read_catalog(out)
    assert np.isnan(cat.meta.exptime) and cat.meta.night == "unknown"
    stock = read_catalog(sextract_exposure(path, tmp_path / "stock.fits", STOCK))
    assert stock.meta.exptime > 0
    # MINAREA 5 at 5 sigma: no detection under 5 pixels, where stock's 1.5 sigma finds some;
    # DEBLEND_MINCONT 0 splits every isophote with two peaks, so far more detections are pieces
    # (FLAGS 2), as in the real catalogs.
    unframed = replace(ARCHIVE, frame=False)
    ccd = read_catalog(sextract_exposure(path, tmp_path / "unframed.fits", unframed)).sources[0]
    ccd_stock = stock.sources[0]
    assert np.min(ccd["ISO0"]) >= 5 and np.min(ccd_stock["ISO0"]) < 5
    pieces = np.mean(np.asarray(ccd["FLAGS"]) & 2 > 0)
    assert pieces > 2 * np.mean(np.asarray(ccd_stock["FLAGS"]) & 2 > 0) and pieces > 0.3
