"""ops/skygrade.service: the systemd unit runs `skygrade watch` as the Docker image does, as a
non-root user, stops it the way the daemon shuts down cleanly (SIGTERM to the main process only,
more time than watch.shutdown_timeout_s) and lets it write only the grades dataset."""

import shlex
from pathlib import Path

import pytest

from skygrade.ops.config_daemon import WatchConfig
from skygrade.streamer.cli import build_parser

UNIT = Path(__file__).resolve().parents[2] / "ops" / "skygrade.service"


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """Section -> key -> values (a key may repeat), comments and blank lines dropped."""
    sections: dict[str, dict[str, list[str]]] = {}
    current = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        assert current is not None, f"key outside a section: {line!r}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


@pytest.fixture(scope="module")
def unit() -> dict[str, dict[str, list[str]]]:
    return parse_unit(UNIT.read_text())


def one(unit, section: str, key: str) -> str:
    (value,) = unit[section][key]
    return value


def test_sections(unit):
    assert set(unit) == {"Unit", "Service", "Install"}
    assert one(unit, "Install", "WantedBy") == "multi-user.target"
    assert one(unit, "Service", "Type") == "simple"


def test_exec_start_is_skygrade_watch_on_the_data_directories(unit):
    argv = shlex.split(one(unit, "Service", "ExecStart"))
    assert Path(argv[0]).is_absolute() and Path(argv[0]).name == "skygrade"
    args = build_parser(argv[1:]).parse_args(argv[1:])
    assert args.command == "watch"
    assert (args.drop, args.out) == (Path("/data/drop"), Path("/data/grades"))
    assert args.config == Path("/etc/skygrade/skygrade.yaml")
    assert "/data/grades" in one(unit, "Service", "ReadWritePaths").split()
    assert "/data/drop" in one(unit, "Service", "ReadOnlyPaths").split()
    assert {"/data/drop", "/data/grades"} <= set(one(unit, "Unit", "RequiresMountsFor").split())


def test_runs_as_a_non_root_user(unit):
    assert one(unit, "Service", "User") not in ("root", "0")
    assert one(unit, "Service", "NoNewPrivileges") == "yes"


def test_stop_lets_the_exposure_in_flight_finish(unit):
    """SIGTERM to the daemon alone (its CCD workers must live until it is done), and more time
    than the daemon's own shutdown timeout before systemd kills what is left."""
    assert one(unit, "Service", "KillMode") == "mixed"
    assert one(unit, "Service", "KillSignal") == "SIGTERM"
    assert float(one(unit, "Service", "TimeoutStopSec")) > WatchConfig().shutdown_timeout_s
    assert one(unit, "Service", "Restart") == "on-failure"


def test_parse_unit_keeps_repeated_keys():
    parsed = parse_unit("[Service]\n# c\nEnvironment=A=1\nEnvironment=B=2\n")
    assert parsed == {"Service": {"Environment": ["A=1", "B=2"]}}
