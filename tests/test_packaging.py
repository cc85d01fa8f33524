"""What the wheel installs: one package, ``skygrade``, holding the four folders of the repository
(``skygrade/streamer`` -> ``../streamer`` and so on, links committed in git), with every module and
data file, and no top-level ``streamer``, ``transforms``, ``models`` or ``ops`` that would collide
with other packages of those generic names (issue 23 item 1)."""

import ast
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import skygrade
import skygrade.streamer

REPO = Path(__file__).resolve().parents[1]
FOLDERS = ("streamer", "transforms", "models", "ops")
DATA = ("ops/*.yaml", "models/*.yaml", "models/default/*", "streamer/observer_assets/*")


def _sources(folder: str) -> list[Path]:
    return [p for p in (REPO / folder).rglob("*.py") if "__pycache__" not in p.parts]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The file names in a wheel built from a copy of the sources (the checkout stays clean)."""
    src = tmp_path_factory.mktemp("src")
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "default-report*")
    for folder in (*FOLDERS, "skygrade"):
        shutil.copytree(REPO / folder, src / folder, symlinks=True, ignore=ignore)
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation"]
        + ["--disable-pip-version-check", "-w", str(out), str(src)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = out.glob("skygrade-*.whl")
    return built


@pytest.fixture(scope="module")
def wheel_names(wheel) -> list[str]:
    with zipfile.ZipFile(wheel) as zf:
        return zf.namelist()


def test_the_wheel_installs_one_top_level_package(wheel_names):
    tops = {name.split("/")[0] for name in wheel_names}
    dist_info = {t for t in tops if t.endswith(".dist-info")}
    assert tops - dist_info == {"skygrade"}


def test_the_wheel_holds_every_module_and_data_file(wheel_names):
    names = set(wheel_names)
    expected = {f"skygrade/{p.relative_to(REPO).as_posix()}" for f in FOLDERS for p in _sources(f)}
    for pattern in DATA:
        expected |= {f"skygrade/{p.relative_to(REPO).as_posix()}" for p in REPO.glob(pattern)}
    assert len(expected) > 100
    assert expected - names == set()
    assert "skygrade/__init__.py" in names


def test_the_console_script_is_the_packaged_cli(wheel, wheel_names):
    (name,) = [n for n in wheel_names if n.endswith(".dist-info/entry_points.txt")]
    with zipfile.ZipFile(wheel) as zf:
        lines = zf.read(name).decode().splitlines()
    assert "skygrade = skygrade.streamer.cli:main" in [line.strip() for line in lines]


def test_the_folders_are_linked_into_the_package():
    for folder in FOLDERS:
        link = REPO / "skygrade" / folder
        assert link.is_symlink(), link
        assert link.resolve() == (REPO / folder).resolve()
    assert Path(skygrade.streamer.__file__).resolve().parent == (REPO / "streamer").resolve()
    assert Path(skygrade.__file__).resolve().parent == (REPO / "skygrade").resolve()


def _bare_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        else:
            continue
        found += [f"{path.relative_to(REPO)}:{node.lineno}: {m}" for m in modules]
    return [f for f in found if f.rsplit(": ", 1)[1].split(".")[0] in FOLDERS]


def test_nothing_imports_the_folders_by_their_bare_names():
    """A bare ``import streamer`` works from a checkout (the folder is on the path) but not from
    the wheel, and would load a second copy of every module beside ``skygrade.streamer``."""
    files = [p for f in (*FOLDERS, "tests", "benchmarks") for p in _sources(f)]
    assert len(files) > 150
    assert [hit for p in files for hit in _bare_imports(p)] == []


def _bare_names_in_calls(path: Path) -> list[str]:
    """``importlib.resources.files("streamer")``, ``import_module("ops.x")``: a module named by a
    string, found from a checkout's folder but not from the wheel."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if not (isinstance(node, ast.Call) and node.args):
            continue
        name = getattr(node.func, "attr", getattr(node.func, "id", ""))
        arg = node.args[0]
        value = arg.value if isinstance(arg, ast.Constant) else None
        bare = isinstance(value, str) and value.split(".")[0] in FOLDERS
        if name in ("files", "import_module") and bare:
            found.append(f"{path.relative_to(REPO)}:{node.lineno}: {value}")
    return found


def test_no_module_is_named_by_a_bare_folder_name_in_a_string():
    files = [p for f in FOLDERS for p in _sources(f)]
    assert [hit for p in files for hit in _bare_names_in_calls(p)] == []
