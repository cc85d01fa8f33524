"""What the observer page is made of: the Jinja2 templates ``observer_assets/*.html.j2``, with
autoescape on, the HTML document around the panels, and the page's static files.

Every piece of HTML, the page and the fragments its script swaps in while it polls, comes from
these templates (one renderer: the script builds no markup and holds no copy of the classes or
colours). Every text from the dataset (OBJECT comes from a FITS header typed by observers) is
HTML-escaped by them, and the served page carries a Content-Security-Policy that allows
scripts from this server only.
"""

from __future__ import annotations

from importlib import resources
from urllib.parse import quote

import jinja2
from markupsafe import Markup

from skygrade.streamer.night_summary import GRADE_COLORS

__all__ = ["ASSETS", "TEMPLATES", "asset", "grade_css", "page_url", "render", "render_page"]

ASSETS = {"observer.css": "text/css; charset=utf-8", "observer.js": "text/javascript"}
"""The page's static files in ``observer_assets/`` and their content types."""

_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'"
)
_STATIC_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'"


def page_url(path: str, **params) -> str:
    """A link of the page: ``path`` with ``params`` as its query, every value quoted."""
    return path + "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())


def asset(name: str) -> bytes:
    """The bytes of one of the page's :data:`ASSETS`, as shipped in the package."""
    return (resources.files("skygrade.streamer") / "observer_assets" / name).read_bytes()


def _environment():
    """The templates (``observer_assets/*.html.j2``), every one with HTML autoescaping."""

    pkg = resources.files("skygrade.streamer") / "observer_assets"
    sources = {
        p.name: p.read_text(encoding="utf-8") for p in pkg.iterdir() if p.name.endswith(".j2")
    }
    env = jinja2.Environment(
        loader=jinja2.DictLoader(sources),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.globals["url"] = page_url
    return env


TEMPLATES = _environment()
"""The page's Jinja2 environment: autoescape on, so a value is always text, never markup."""


def render(name: str, **context) -> Markup:
    """Template ``name`` rendered with ``context`` (escaped), as markup for an outer template."""
    return Markup(TEMPLATES.get_template(name).render(**context))


def grade_css() -> Markup:
    """CSS rules giving each grade's badge, chip and vote its colour (from
    :data:`GRADE_COLORS`: one palette for the page, the script and the report)."""
    rules = []
    for g, (r, gr, b) in GRADE_COLORS.items():
        rules.append(
            f".grade[data-grade={g}],.chip[data-grade={g}],.vote[data-grade={g}]"
            f"{{background:rgb({r}, {gr}, {b});color:#000}}"
        )
    return Markup("".join(rules))


def render_page(title: str, attrs: dict, parts: list, css: str | None = None) -> str:
    """The HTML document around ``parts``; with ``css`` it is self-contained (no script)."""
    return TEMPLATES.get_template("page.html.j2").render(
        title=title,
        attrs=attrs,
        parts=parts,
        css=None if css is None else Markup(css),
        csp=_CSP if css is None else _STATIC_CSP,
        grade_css=grade_css(),
        script=css is None,
    )
