"""The HTML of slidenet's pages: one Jinja2 environment, one base template, one stylesheet.

Both pages extend `templates/base.html` and use `static/slidenet.css`, so they look alike and
change in one place:

    report.html     `slidenet report`: a static page, the stylesheet inlined, no scripts
    serve.html      `slidenet serve`: the live page, stylesheet and script served from /static

Only Jinja2 is needed here (the report must not need the web server's packages).
"""
from functools import lru_cache
from pathlib import Path

from slidenet.errors import SlidenetError

HERE = Path(__file__).parent
TEMPLATES = HERE / "templates"
STATIC = HERE / "static"


def kib(n):
    """Bytes in words: '812 B', '3.1 KiB'."""
    return f"{n / 1024:,.1f} KiB" if n >= 1024 else f"{n} B"


@lru_cache(maxsize=None)
def environment():
    """The Jinja2 environment of every page: HTML autoescaped, undefined names an error."""
    try:
        import jinja2
        import markupsafe
    except ImportError:
        raise SlidenetError("slidenet's HTML pages need Jinja2, which is not installed: "
                            "pip install 'slidenet[viz]'") from None
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=jinja2.select_autoescape(["html"]),
                             undefined=jinja2.StrictUndefined, trim_blocks=True,
                             lstrip_blocks=True)
    env.filters["thousands"] = lambda n: f"{n:,}"
    env.filters["kib"] = kib
    env.filters["shape"] = lambda shape: " x ".join(str(v) for v in shape)
    # Markup: the stylesheet is ours, and CSS must not be HTML-escaped inside <style>.
    env.globals["stylesheet"] = lambda: markupsafe.Markup(stylesheet())
    return env


def stylesheet():
    """The shared stylesheet's text."""
    return (STATIC / "slidenet.css").read_text(encoding="utf-8")


def render(name, **context):
    """Render template `name` of TEMPLATES with `context`."""
    return environment().get_template(name).render(**context)
