"""The fault suite's figures: each scenario records what it measured (exposures, kills, rows,
duplicates, orphans...) with the ``figures`` fixture, and the run ends with one line per
scenario (the README's reliability section is copied from it)."""

from __future__ import annotations

import pytest

#: scenario -> {figure: value}, in the order the scenarios ran.
_FIGURES: dict[str, dict] = {}


@pytest.fixture
def figures(request):
    """The dict this scenario's figures go in (printed at the end of the run)."""
    name = request.node.name.removeprefix("test_")
    return _FIGURES.setdefault(name, {})


def pytest_terminal_summary(terminalreporter):
    if not _FIGURES:
        return
    terminalreporter.write_sep("-", "fault suite figures")
    for name, values in _FIGURES.items():
        text = ", ".join(f"{k} {v}" for k, v in values.items())
        terminalreporter.write_line(f"{name}: {text}")
