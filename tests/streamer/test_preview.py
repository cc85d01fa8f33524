"""Pixel previews and the SOM hit grid of the observer page (streamer/preview.py), on small
simulated exposures, and their endpoints (issue 22 item 10)."""

import io
import json
import os

import numpy as np
import pytest
from PIL import Image

from skygrade.ops.http import HttpServer
from skygrade.ops.metrics import Metrics
from skygrade.streamer import inspect as inspect_mod
from skygrade.streamer import preview as pv
from skygrade.streamer.observer import Observer
from skygrade.streamer.page_images import focal_plane_layout
from skygrade.streamer.sky_fits import exposure_bytes
from skygrade.streamer.sky_plan import Geometry, _ccd_origin, _layout, plan_night
from skygrade.transforms.ccd_pixels import read_ccd
from skygrade.transforms.confined_reads import pinned
from skygrade.transforms.exposure_errors import ExposureError
from skygrade.transforms.grades_dataset import GradesDataset
from tests.helpers.http import get

pytestmark = pytest.mark.usefixtures("no_thread_leak")

NIGHT = "2026-11-24"
GEOMETRY = Geometry(6, 256, 600)


@pytest.fixture(scope="module")
def drop(tmp_path_factory):
    """A drop directory with two simulated exposures of 6 CCDs of 256 x 600 (laid out in 2 rows
    of 3 by the page and by the simulator) in the night folder."""
    root = tmp_path_factory.mktemp("drop")
    (root / NIGHT).mkdir()
    plans = plan_night(NIGHT, 2, seed=3, class_mix={"GOOD": 1.0})
    for plan in plans:
        (root / NIGHT / plan.filename).write_bytes(exposure_bytes(plan, GEOMETRY))
    return root, plans


def png_array(data: bytes) -> np.ndarray:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return np.asarray(Image.open(io.BytesIO(data)))


# --------------------------------------------------------------------------- pixels


def test_a_ccd_preview_is_binned_to_about_256_rows_flipped_and_stretched(drop):
    root, plans = drop
    path = str(root / NIGHT / plans[0].filename)
    with pinned(path, root):
        data = read_ccd(path, 1).data
        asinh = pv.ccd_preview(path, 1)
        zscale = pv.ccd_preview(path, 1, "zscale")
    # 600 rows -> factor 3 -> 200 x 85 (the rows and columns that do not fill a block dropped)
    assert asinh.factor == 3 and asinh.image.shape == (200, 85) and asinh.image.dtype == np.uint8
    binned = data[: 200 * 3, : 85 * 3].reshape(200, 3, 85, 3).mean(axis=(1, 3))
    # FITS row 1 at the bottom: the preview's last row is the CCD's first block row
    expected = pv.to_uint8(binned, asinh.limits, "asinh")[::-1]
    np.testing.assert_array_equal(asinh.image, expected)
    # asinh: the sky is a dark grey (2 sigma above black), the brightest stars white
    sky = np.median(asinh.image)
    assert 20 < sky < 110, sky
    assert asinh.image.max() == 255 and (asinh.image == 255).mean() < 0.01
    lo, hi = asinh.limits
    assert lo < np.median(binned) < hi
    # the stretch is monotonic and compresses the bright end (asinh, not linear)
    ramp = pv.to_uint8(np.linspace(lo, hi, 11), asinh.limits, "asinh")
    assert np.all(np.diff(ramp.astype(int)) >= 0) and ramp[0] == 0 and ramp[-1] == 255
    assert ramp[1] - ramp[0] > ramp[-1] - ramp[-2]
    # zscale: astropy's limits, mapped linearly
    from astropy.visualization import ZScaleInterval

    np.testing.assert_allclose(zscale.limits, ZScaleInterval().get_limits(binned), rtol=1e-5)
    assert zscale.image.shape == asinh.image.shape
    with pytest.raises(pv.PreviewError, match="stretch"):
        pv.display_limits(binned, "log")


def test_binning_leaves_out_nan_pixels_and_sizes_full_ccds_to_256_rows():
    data = np.arange(36.0, dtype=np.float32).reshape(6, 6)
    data[0, 0] = np.nan
    data[4:, 4:] = np.nan
    out = pv.bin_pixels(data, 2)
    assert out.shape == (3, 3)
    assert out[0, 0] == pytest.approx((1 + 6 + 7) / 3)
    assert np.isnan(out[2, 2])
    assert pv.to_uint8(out, (0.0, 35.0))[2, 2] == 0  # NaN is black
    assert pv.bin_factor(4612, pv.PREVIEW_HEIGHT) == 19  # a MegaCam CCD: 107 x 242
    assert 4612 // 19 == 242 and pv.bin_factor(4612, 243) == 19


def test_the_mosaic_lays_ccds_out_as_the_page_and_the_simulator_do():
    # 36 CCDs, each filled with its index: ccd00 top left, 4 rows of 9
    h, w, gap = 6, 3, 1
    mosaic = pv.assemble_mosaic([np.full((h, w), k, np.float32) for k in range(36)], gap)
    assert mosaic.shape == (4 * h + 3 * gap, 9 * w + 8 * gap)
    full = Geometry(36, 2048, 4612)
    assert _layout(full) == focal_plane_layout(36)[:2] == (4, 9)
    for k in range(36):
        # the simulator's origin of CCD k (focal-plane y up) -> its row from the top
        x0, y0 = _ccd_origin(full, k)
        col = round(x0 / (full.width + 80))
        row = 3 - round(y0 / (full.height + 80))
        assert focal_plane_layout(36)[2][k] == (row, col)
        block = mosaic[row * (h + gap) : row * (h + gap) + h, col * (w + gap) : col * (w + gap) + w]
        assert np.all(block == k), k
    assert np.isnan(mosaic[h, 0]) and np.isnan(mosaic[0, w])  # the gaps
    # a CCD that could not be read is left empty (NaN: black)
    part = pv.assemble_mosaic([np.ones((2, 2)), None], gap=1)
    assert np.isnan(part[:, 3:]).all()
    with pytest.raises(pv.PreviewError):
        pv.assemble_mosaic([None, None], gap=1)


def test_the_mosaic_preview_of_a_simulated_exposure(drop):
    root, plans = drop
    path = str(root / NIGHT / plans[0].filename)
    with pinned(path, root):
        got = pv.mosaic_preview(path)
        binned = [pv.bin_pixels(read_ccd(path, k).data, got.factor) for k in range(6)]
    rows, cols, cells = focal_plane_layout(6)
    assert (rows, cols) == _layout(GEOMETRY) == (2, 3)
    # 2 rows of 600 + an 80 px gap bin by 3 to 400 + a gap of 27
    assert got.factor == 3
    h, w = binned[0].shape
    gap = round(80 / 3)
    assert got.image.shape == (2 * h + gap, 3 * w + 2 * gap)
    for k, (r, c) in enumerate(cells):  # each CCD at its place, one display range for all
        block = got.image[r * (h + gap) : r * (h + gap) + h, c * (w + gap) : c * (w + gap) + w]
        np.testing.assert_array_equal(block, pv.to_uint8(binned[k][::-1], got.limits))
    assert (got.image[h : h + gap] == 0).all()


# --------------------------------------------------------------------------- SOM hits


def test_the_hit_grid_is_laid_out_as_the_tiles_and_labelled_by_cluster(monkeypatch):
    hits = list(range(100, 120))
    grid = pv.hit_grid(hits)
    assert [len(r) for r in grid] == [5, 5, 5, 5]  # skygrade.models.mosaic.tile_grid(20): 4 x 5
    assert [c["cluster"] for r in grid for c in r] == list(range(20))
    assert [c["hits"] for r in grid for c in r] == hits
    assert pv.hit_grid([]) == []

    # drawn by skygrade inspect's renderer, from the stored image and the CCD row's hits
    drawn = []
    real = inspect_mod.render_png
    monkeypatch.setattr(
        inspect_mod, "render_png", lambda i, s, single: drawn.append((i, single)) or real(i, s)
    )
    stored = np.random.default_rng(0).integers(0, 256, (4 * 16, 5 * 16)).astype(np.uint8)
    c = {"exposure_id": "2817000", "ccd": 3, "hits": hits, "n_sources": 40}
    c["median_elongation"] = 1.3
    image = png_array(pv.hits_png(c, stored))
    assert image.shape[0] > 300
    ((inspection, single),) = drawn
    assert single and inspection.tile == 16 and inspection.title.startswith("exposure 2817000")
    (panel,) = inspection.panels
    assert panel.name == "ccd03" and list(panel.inputs.hits) == hits
    np.testing.assert_allclose(panel.inputs.image, stored / 255.0 * 1.7 - 0.2, atol=1e-6)
    # the labels inspect prints under each tile: "#k: n"
    assert inspect_mod._panel_title(panel, True).splitlines()[0] == "2817000 ccd03"
    png_array(pv.hits_png(c, None))  # no stored image: the counts on blank tiles


# --------------------------------------------------------------------------- cache


def test_the_cache_is_bounded_in_bytes_and_makes_each_preview_once():
    cache = pv.PreviewCache(max_bytes=100, max_items=3)
    made = []

    def make(key, n):
        return lambda: made.append(key) or bytes(n)

    assert cache.get_or("a", make("a", 40)) == bytes(40)
    assert cache.get_or("a", make("a", 40)) == bytes(40)
    assert made == ["a"]
    cache.get_or("b", make("b", 40))
    cache.get_or("a", make("a", 40))  # a is the most recent now
    cache.get_or("c", make("c", 40))  # over 100 bytes: b, the least recent, goes
    assert cache.keys() == ["a", "c"] and cache.size == 80
    cache.get_or("big", make("big", 200))  # larger than the bound: served, not kept
    assert cache.keys() == ["a", "c"]
    for k in "defg":
        cache.get_or(k, make(k, 1))
    assert len(cache.keys()) == 3


# --------------------------------------------------------------------------- endpoints


@pytest.fixture
def dataset(tmp_path, drop, observer_rows):
    """Grades of the two simulated exposures, their rows naming the files in the drop."""
    root, plans = drop
    out = tmp_path / "grades"
    for i, plan in enumerate(plans):
        row = observer_rows.exposure(i, "GOOD", GEOMETRY.n_ccd)
        row |= {"exposure_id": str(plan.expnum), "path": str(root / NIGHT / plan.filename)}
        ccds = [c | {"exposure_id": row["exposure_id"]} for c in observer_rows.ccd_rows(row, i)]
        GradesDataset(out).write(row, ccds)
    return out


@pytest.fixture
def server(dataset, drop):
    observer = Observer(dataset, drop_dir=drop[0])
    with HttpServer(Metrics().registry, port=0, routes=observer.routes()) as s:
        s.observer = observer
        yield s


def test_the_preview_endpoints_serve_pngs_of_the_files_in_the_drop(server, drop):
    root, plans = drop
    eid = str(plans[0].expnum)
    status, kind, body = get(server, f"/preview?night={NIGHT}&id={eid}&ccd=2")
    assert (status, kind) == (200, "image/png")
    path = str(root / NIGHT / plans[0].filename)
    with pinned(path, root):
        np.testing.assert_array_equal(png_array(body), pv.ccd_preview(path, 2).image)
    status, _, zbody = get(server, f"/preview?night={NIGHT}&id={eid}&ccd=2&stretch=zscale")
    assert status == 200 and zbody != body
    status, kind, body = get(server, f"/mosaic?night={NIGHT}&id={eid}")
    assert (status, kind) == (200, "image/png") and png_array(body).shape == (
        2 * 200 + 27,
        3 * 85 + 2 * 27,
    )
    status, kind, body = get(server, f"/hits?night={NIGHT}&id={eid}&ccd=0")
    assert (status, kind) == (200, "image/png") and png_array(body).ndim == 3
    # the JSON names them for other tools
    status, _, body = get(server, f"/api/exposure?night={NIGHT}&id={eid}")
    doc = json.loads(body)
    assert doc["mosaic"] == f"/mosaic?night={NIGHT}&id={eid}"
    assert doc["ccds"][2]["preview"] == f"/preview?night={NIGHT}&id={eid}&ccd=2"
    # cached: asked again, nothing is read or drawn again
    made = server.observer.previews.cache.made
    for _ in range(2):
        assert get(server, f"/preview?night={NIGHT}&id={eid}&ccd=2")[0] == 200
        assert get(server, f"/mosaic?night={NIGHT}&id={eid}")[0] == 200
    assert server.observer.previews.cache.made == made
    assert server.observer.previews.cache.size < pv.CACHE_BYTES


@pytest.mark.parametrize(
    "query",
    [
        "/preview?night={n}&id=9999999&ccd=0",  # no such exposure
        "/preview?night=2030-01-01&id={e}&ccd=0",  # no such night
        "/preview?night={n}&id={e}&ccd=7",  # no such CCD
        "/preview?night={n}&id={e}&ccd=-1",
        "/preview?night={n}&id={e}",  # no CCD
        "/preview?night={n}&id={e}&ccd=0&stretch=log",  # no such stretch
        "/mosaic?night={n}&id={e}&stretch=../../x",
        "/mosaic?night=../../..&id={e}",
        "/mosaic?night={n}&id=../../../etc/passwd",
        "/preview?night={n}/../..&id={e}&ccd=0",
        "/hits?night={n}&id={e}&ccd=5",  # the dead CCD: no hits
        "/hits?night={n}&id=..%2F..&ccd=0",
    ],
)
def test_the_preview_endpoints_refuse_unknown_exposures_and_traversal(server, drop, query):
    eid = str(drop[1][0].expnum)
    status, kind, body = get(server, query.format(n=NIGHT, e=eid))
    assert status == 404 and body == b"not found\n", query


def test_a_preview_reads_nothing_outside_the_drop_nor_another_exposure(
    tmp_path, dataset, drop, monkeypatch
):
    root, plans = drop
    a, b = (root / NIGHT / p.filename for p in plans)
    observer = Observer(dataset, drop_dir=root)
    index = observer.index.night(NIGHT)
    row = index.by_id[str(plans[0].expnum)]
    # a row naming a file outside the drop directory (a copy of the exposure) is refused
    outside = tmp_path / "elsewhere" / a.name
    outside.parent.mkdir()
    outside.write_bytes(a.read_bytes())
    with pytest.raises(ExposureError, match="not below") as refused:
        observer.previews.ccd_png(str(outside), row["exposure_id"], 0)
    assert refused.value.reason == "outside_drop"
    # a symlink in the drop to a file outside it is not followed
    link = root / NIGHT / "link.fits"
    link.symlink_to(outside)
    try:
        with pytest.raises(ExposureError, match="symlink") as refused:
            observer.previews.mosaic_png(str(link), row["exposure_id"])
        assert refused.value.reason == "outside_drop"
    finally:
        link.unlink()
    # the file under that name is another exposure now: no preview of it
    with pytest.raises(pv.PreviewError, match="now"):
        observer.previews.ccd_png(str(b), row["exposure_id"], 0)
    # without a drop directory there are no previews at all, and the page offers none
    bare = Observer(dataset)
    with HttpServer(Metrics().registry, port=0, routes=bare.routes()) as s:
        q = f"night={NIGHT}&id={row['exposure_id']}"
        assert get(s, f"/preview?{q}&ccd=0")[0] == 404
        assert get(s, f"/mosaic?{q}")[0] == 404
        status, _, page = get(s, f"/exposure?{q}&ccd=0")
        assert status == 200 and b'img class="preview"' not in page and b"/mosaic?" not in page
        assert get(s, f"/hits?{q}&ccd=0")[0] == 200  # from the dataset alone
    # a file that is gone: 404
    moved = a.with_name("moved.fits")
    os.rename(a, moved)
    try:
        with HttpServer(Metrics().registry, port=0, routes=observer.routes()) as s:
            assert get(s, f"/preview?night={NIGHT}&id={row['exposure_id']}&ccd=0")[0] == 404
    finally:
        os.rename(moved, a)


def test_the_page_shows_the_previews_beside_the_representative_image(server, drop):
    eid = str(drop[1][0].expnum)
    status, _, body = get(server, f"/exposure?night={NIGHT}&id={eid}&ccd=1")
    page = body.decode()
    assert status == 200
    q = f"night={NIGHT}&amp;id={eid}"
    assert f'<img class="thumb" src="/thumb?{q}&amp;ccd=1"' in page
    assert f'<img class="preview" src="/preview?{q}&amp;ccd=1" loading="lazy"' in page
    assert 'alt="binned preview of the pixels of ccd01' in page
    assert f'<figure id="mosaic" class="mosaic"><img src="/mosaic?{q}"' in page
    assert "binned preview of the pixels of the whole focal plane of exposure" in page
    assert f'<img class="hits-img" src="/hits?{q}&amp;ccd=1"' in page
    assert 'alt="SOM hit counts of ccd01 by cluster' in page
    # the representative image and the pixels side by side in one figure row
    images = page[page.index('<div class="ccd-images">') :]
    images = images[: images.index("</div>")]
    assert 'img class="thumb"' in images and 'img class="preview"' in images
    # the hit grid: 4 rows of 5, each cell labelled with its cluster
    table = page[page.index('<table class="hits"') : page.index("</table>", page.index("hits"))]
    assert table.count("<tr>") == 4
    assert '<span class="k">#0</span>' in table and '<span class="k">#19</span>' in table
    # the fragment the page swaps in when a CCD is clicked carries them too
    status, _, body = get(server, f"/fragment/ccd?night={NIGHT}&id={eid}&ccd=2")
    assert status == 200 and b'<img class="preview" src="/preview?' in body
    # every image on the page is served
    for src in ("/preview", "/mosaic", "/hits", "/thumb"):
        i = page.index(f'src="{src}?')
        url = page[i + 5 : page.index('"', i + 5)].replace("&amp;", "&")
        assert get(server, url)[:2] == (200, "image/png"), url


def test_a_tile_compressed_exposure_previews_as_the_plain_one(drop, tmp_path):
    from astropy.io import fits

    from skygrade.streamer.sky_fits import render_exposure

    root, plans = drop
    plain = str(root / NIGHT / plans[0].filename)
    hdul = render_exposure(plans[0], GEOMETRY)
    fz = tmp_path / plans[0].filename.replace(".fits", ".fits.fz")
    ccds = [fits.CompImageHDU(h.data, header=h.header) for h in hdul[1:]]
    fits.HDUList([hdul[0], *ccds]).writeto(fz)
    previews = pv.Previews(tmp_path)
    with pinned(plain, root):
        want = pv.ccd_preview(plain, 4).image
    got = png_array(previews.ccd_png(str(fz), str(plans[0].expnum), 4))
    np.testing.assert_array_equal(got, want)  # RICE on 16-bit integers is lossless
    assert png_array(previews.mosaic_png(str(fz), str(plans[0].expnum))).shape == (427, 309)
