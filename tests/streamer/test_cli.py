import csv
from pathlib import Path

import pytest
from astropy.io import fits

from skygrade.streamer.cli import build_parser, main
from skygrade.streamer.cli_common import UsageError, parse_nights, parse_shape


def test_parse_nights_ranges_and_lists():
    assert parse_nights("2026-11-30..2026-12-02,2026-11-01") == [
        "2026-11-01",
        "2026-11-30",
        "2026-12-01",
        "2026-12-02",
    ]
    with pytest.raises(UsageError, match="ends before it starts"):
        parse_nights("2026-11-03..2026-11-01")
    with pytest.raises(UsageError, match="not a date or range"):
        parse_nights("yesterday")


def test_parse_shape():
    assert parse_shape("2048x4612") == (2048, 4612)
    with pytest.raises(UsageError, match="WIDTHxHEIGHT"):
        parse_shape("big")


def test_every_command_has_help_with_an_example(capsys):
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    assert {"simulate", "config"} <= set(commands)
    for name in commands:
        with pytest.raises(SystemExit) as exit_info:
            main([name, "--help"])
        assert exit_info.value.code == 0
        assert "example" in capsys.readouterr().out


def test_simulate_archive_writes_labelled_files(tmp_path, capsys):
    out = tmp_path / "archive"
    code = main(
        [
            "-q",
            "simulate",
            "--out",
            str(out),
            "--nights",
            "2026-11-01..2026-11-02",
            "--exposures",
            "2",
            "--n-ccd",
            "2",
            "--ccd-shape",
            "128x160",
            "--seed",
            "3",
        ]
    )
    assert code == 0
    assert "wrote 4 exposures" in capsys.readouterr().out
    files = sorted(out.glob("*/*.fits"))
    assert len(files) == 4
    with open(out / "labels.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 4
    with fits.open(files[0]) as hdul:
        assert len(hdul) == 3 and hdul[1].data.shape == (160, 128)


def test_simulate_takes_the_narrow_band_share_from_the_configuration(tmp_path, capsys):
    cfg = tmp_path / "nb.yaml"
    cfg.write_text("telescope:\n  narrow_band: 1.0\n")
    out = tmp_path / "archive"
    args = ["--nights", "2026-11-01", "--exposures", "3", "--n-ccd", "1", "--ccd-shape", "128x160"]
    assert main(["-q", "--config", str(cfg), "simulate", "--out", str(out), *args]) == 0
    filters = {fits.getheader(f, 0)["FILTER"] for f in out.glob("*/*.fits")}
    assert filters and filters <= {"CaHK.MP9303", "Ha.MP9603", "OIII.MP9501"}, filters


def test_usage_and_config_errors_exit_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("telescope:\n  cadance_s: 3\n")
    assert main(["config", "check", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "telescope.cadance_s" in err and "did you mean 'cadence_s'" in err
    assert main(["--config", str(bad), "config", "show"]) == 2
    assert main(["simulate", "--out", str(tmp_path), "--nights", "tomorrow"]) == 2
    assert "--nights" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        main(["simulate"])  # neither --out nor --drop
    assert exit_info.value.code == 2


def test_config_show_round_trips_through_check(tmp_path, capsys):
    assert main(["config", "show"]) == 0
    text = capsys.readouterr().out
    path = tmp_path / "skygrade.yaml"
    path.write_text(text)
    assert main(["config", "check", str(path)]) == 0
    assert "ok (config digest" in capsys.readouterr().out


def test_extract_writes_features_and_reports_quarantine(tmp_path, capsys):
    out = tmp_path / "archive"
    assert (
        main(
            [
                "-q",
                "simulate",
                "--out",
                str(out),
                "--nights",
                "2026-11-01",
                "--exposures",
                "1",
                "--n-ccd",
                "2",
                "--ccd-shape",
                "256x320",
                "--seed",
                "1",
            ]
        )
        == 0
    )
    bad = tmp_path / "9999999o.fits"
    bad.write_bytes(b"SIMPLE  =                    T" + b" " * 50)
    files = [str(p) for p in out.glob("*/*.fits")] + [str(bad)]
    assert main(["-q", "extract", *files, "--out", str(tmp_path / "feat")]) == 0
    text = capsys.readouterr().out
    assert "quarantined 9999999: truncated" in text
    assert "features of 1 exposure(s)" in text
    assert len(list((tmp_path / "feat").glob("*.parquet"))) == 1
    # the same with a CCD process pool, and a clear refusal of a negative pool size
    pooled = tmp_path / "pooled"
    assert main(["-q", "extract", *files, "--out", str(pooled), "--ccd-workers", "2"]) == 0
    assert "features of 1 exposure(s)" in capsys.readouterr().out
    assert [p.name for p in pooled.glob("*.parquet")] == [
        p.name for p in (tmp_path / "feat").glob("*.parquet")
    ]
    assert main(["-q", "extract", *files, "--out", str(pooled), "--ccd-workers", "-1"]) != 0
    assert "--ccd-workers must be >= 0" in capsys.readouterr().err


def test_only_the_chosen_command_gets_its_arguments_built():
    from skygrade.streamer.cli import _command_name

    assert _command_name(["--config", "report", "-q", "watch", "--out", "x"]) == "watch"
    assert _command_name(["-v"]) == ""
    parser = build_parser(["--config", "c.yaml", "grade", "f.fits", "--out", "o"])
    args = parser.parse_args(["--config", "c.yaml", "grade", "f.fits", "--out", "o"])
    assert args.command == "grade" and args.out.name == "o"


def _foreign_exposure(path, n_ccd=40, shape=(400, 256), seed=5):
    """A MegaCam-like exposure written with plain astropy, not skygrade's simulator: float32,
    sky already subtracted, a NaN bad column, 40 extensions (science + guide CCDs), headers
    in the primary HDU only."""
    import numpy as np

    rng = np.random.default_rng(seed)
    ny, nx = shape
    sigma = 0.75 / 0.187 / 2.355  # 0.75" seeing
    dy, dx = np.mgrid[-12:13, -12:13]
    primary = fits.PrimaryHDU()
    primary.header.update(
        {"EXPNUM": 3001234, "EXPTIME": 120.0, "DATE-OBS": "2026-11-20T08:01:02.5"}
    )
    primary.header["FILTER"] = "r.MP9602"
    hdus = [primary]
    for i in range(n_ccd):
        img = rng.normal(0.0, 8.0, shape).astype(np.float32)
        for x0, y0, flux in zip(
            rng.integers(13, nx - 13, 60),
            rng.integers(13, ny - 13, 60),
            10 ** rng.uniform(2.5, 5, 60),
            strict=True,
        ):
            stamp = np.exp(-(dx**2 + dy**2) / (2 * sigma**2)) * flux / (2 * np.pi * sigma**2)
            img[y0 - 12 : y0 + 13, x0 - 12 : x0 + 13] += stamp.astype(np.float32)
        img[:, 100] = np.nan
        hdus.append(fits.ImageHDU(img, name=f"ccd{i:02d}"))
    fits.HDUList(hdus).writeto(path)
    return path


def test_grade_command_grades_an_exposure_written_by_other_code(tmp_path, capsys):
    """`skygrade grade` with the shipped bundle on a file skygrade's simulator did not write:
    all 40 CCDs graded, one table row, and none of Beam's irrelevant warnings on the terminal."""
    path = _foreign_exposure(tmp_path / "3001234p.fits")
    assert main(["grade", str(path), "--out", str(tmp_path / "grades")]) == 0
    out, err = capsys.readouterr()
    row = next(line for line in out.splitlines() if "3001234" in line)
    assert "40/40" in row and "2026-11-19" in row  # 08:01 UT belongs to the night before
    assert "1 graded, 0 quarantined" in out
    assert "apitools" not in err and "Resource module" not in err
    assert "yield and return" not in err
    assert list((tmp_path / "grades" / "exposures").rglob("*.parquet"))


@pytest.fixture(scope="module")
def watch_bundle(tmp_path_factory, tiny_bundle):
    return tiny_bundle(tmp_path_factory.mktemp("bundle") / "b", "cli-test")


def _watch(tmp_path, bundle, metrics: str) -> tuple[int, Path]:
    config = tmp_path / "skygrade.yaml"
    config.write_text(f"metrics:\n{metrics}")
    drop = tmp_path / "drop"
    drop.mkdir()
    argv = ["--config", str(config), "watch", "--drop", str(drop), "--out", str(tmp_path / "o")]
    return main([*argv, "--bundle", str(bundle)]), config


def test_watch_with_the_metrics_port_in_use_exits_2_naming_the_key(tmp_path, capsys, watch_bundle):
    """It exited 1 with a bare "[Errno 98] Address already in use"."""
    import socket

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        code, config = _watch(tmp_path, watch_bundle, f"  port: {port}\n")
    assert code == 2
    err = capsys.readouterr().err
    assert f"skygrade watch: {config}: metrics.port: port {port} on 127.0.0.1 is in use" in err


@pytest.mark.parametrize("host", ["no-such-host.invalid", "192.0.2.1"], ids=["unknown", "foreign"])
def test_watch_with_a_bad_metrics_host_exits_2_naming_the_key(tmp_path, capsys, watch_bundle, host):
    code, config = _watch(tmp_path, watch_bundle, f"  host: {host}\n  port: 0\n")
    assert code == 2
    err = capsys.readouterr().err
    assert f"skygrade watch: {config}: metrics.host: cannot bind {host!r}: " in err


def test_top_level_help_imports_no_command_module_nor_beam_nor_torch():
    """``skygrade --help`` builds the registry only: each command's module (and Beam, torch)
    is imported when that command is parsed or run."""
    import subprocess
    import sys

    probe = (
        "import sys\n"
        "from skygrade.streamer.cli import main\n"
        "try:\n"
        "    main(['--help'])\n"
        "except SystemExit:\n"
        "    pass\n"
        "heavy = [m for m in ('apache_beam', 'torch') if m in sys.modules]\n"
        "loaded = [m for m in sys.modules if m.startswith('skygrade.streamer.commands.')]\n"
        "print(heavy, loaded)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True
    ).stdout
    assert "COMMAND" in out and out.strip().endswith("[] []")


def test_every_registered_command_has_its_module():
    from skygrade.streamer.cli import COMMANDS, command_module

    for name in COMMANDS:
        module = command_module(name)
        assert module.EXAMPLES.startswith("examples:") and "skygrade " in module.EXAMPLES
        assert callable(module.add_arguments) and callable(module.command)
    with pytest.raises(KeyError, match="no skygrade command"):
        command_module("nope")


@pytest.mark.parametrize("name", ["extract", "grade", "evaluate", "backfill"])
def test_backend_choices_are_the_extraction_modules(name):
    from skygrade.transforms.extract import BACKENDS

    parser = build_parser([name])
    sub = parser._subparsers._group_actions[0].choices[name]
    (backend,) = [a for a in sub._actions if "--backend" in a.option_strings]
    assert tuple(backend.choices) == tuple(BACKENDS) == ("sep", "sextractor", "catalog")
