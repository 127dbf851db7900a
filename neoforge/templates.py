"""Jinja2 templates: HTML autoescaped, plain text not, undefined variables are errors."""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import jinja2.meta
import jinja2.nodes

from neoforge.settings import get_settings

__all__ = ["Rendered", "missing_variables", "render", "template_exists"]

_KINDS = ("html", "txt")
# Filters and tests that make a missing variable harmless.
_FALLBACKS = {"default", "d", "defined", "undefined"}


@dataclass(frozen=True)
class Rendered:
    """A rendered template: either part may be missing, not both."""

    html: str | None
    text: str | None


@lru_cache(maxsize=4)
def _environment(folder: Path) -> jinja2.Environment:
    # One environment per folder and process: Jinja keeps compiled templates in
    # it, so each template is compiled once, not on every email.
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(folder, followlinks=False),
        autoescape=jinja2.select_autoescape(enabled_extensions=("html",), default=False),
        undefined=jinja2.StrictUndefined,
        auto_reload=False,
        keep_trailing_newline=True,
    )


# Templates found, per folder and name. Like the compiled templates themselves
# (auto_reload=False), a template is looked up once per process: a deploy
# restarts the workers. A name not found is looked up again every time.
_found: dict[tuple[Path, str], dict[str, str]] = {}


def _files(name: str) -> dict[str, str]:
    folder = get_settings().templates_dir
    cached = _found.get((folder, name))
    if cached is not None:
        return cached
    found = {}
    for kind in _KINDS:
        path = folder / f"{name}.{kind}"
        # A symlink pointing out of the folder is not a template of ours.
        if path.is_file() and path.resolve().parent == folder:
            found[kind] = path.name
    if found:
        _found[(folder, name)] = found
    return found


def template_exists(name: str) -> bool:
    """True when templates/NAME.html or templates/NAME.txt exists inside the folder."""
    return bool(_files(name))


def render(name: str, context: dict[str, Any]) -> Rendered:
    """Render NAME.html and NAME.txt; raise jinja2.TemplateError on a missing variable."""
    files = _files(name)
    if not files:
        raise jinja2.TemplateNotFound(name)
    env = _environment(get_settings().templates_dir)
    html = env.get_template(files["html"]).render(context) if "html" in files else None
    text = env.get_template(files["txt"]).render(context) if "txt" in files else None
    return Rendered(html=html, text=text)


def _required(tree: jinja2.nodes.Template) -> set[str]:
    """Names TREE reads without a fallback: not only as ``x | default(...)`` or ``x is defined``."""
    guarded = set()
    for node in tree.find_all((jinja2.nodes.Filter, jinja2.nodes.Test)):
        if node.name in _FALLBACKS and isinstance(node.node, jinja2.nodes.Name):
            guarded.add(id(node.node))
    read = {n.name for n in tree.find_all(jinja2.nodes.Name) if n.ctx == "load" and id(n) not in guarded}
    return read & jinja2.meta.find_undeclared_variables(tree)


def missing_variables(name: str, context: dict[str, Any]) -> list[str]:
    """The variables NAME's templates need that CONTEXT does not give, sorted.

    StrictUndefined stops at the first one; this names them all, so one fix is enough. Call it
    after a render failed: a variable read only inside ``{% if x is defined %}`` is listed too.
    """
    env = _environment(get_settings().templates_dir)
    needed: set[str] = set()
    for filename in _files(name).values():
        source = env.loader.get_source(env, filename)[0] if env.loader else ""
        needed |= _required(env.parse(source))
    return sorted(needed - set(context) - set(env.globals))
