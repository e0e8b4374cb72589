"""Griffe extension: the docstrings' reST markup as the Markdown mkdocstrings renders.

The docstrings are written for ``help()`` and doctest, with reST cross-reference roles
(``:func:`softmax_eql```) and ``.. math::`` blocks. mkdocstrings reads them as Markdown,
so before rendering each role becomes a link to the API reference (or inline code where
the target is not documented there) and each math block a ``$$`` block for MathJax.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

ROLE = re.compile(r":(?:class|func|meth|mod|attr):`(?P<short>~?)(?P<target>[^`]+)`")
MATH = re.compile(
    r"^(?P<indent>[ ]*)\.\. math::\n(?P<body>(?:(?P=indent)[ ]+\S.*\n|[ ]*\n)+)", re.MULTILINE
)


class SphinxMarkup(griffe.Extension):
    """Rewrites every docstring of the package once it is loaded."""

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.path != "eqlosses":
            return
        # The API reference renders the public names of ``eqlosses`` and
        # ``eqlosses.functional``: links to those resolve.
        targets: dict[str, str] = {}
        for module in (pkg, pkg["functional"]):
            for name in module.exports or ():
                targets.setdefault(str(name), f"{module.path}.{name}")
        for obj in _objects(pkg):
            if obj.docstring is not None:
                obj.docstring.value = to_markdown(obj.docstring.value, targets)


def _objects(obj: griffe.Object) -> list[griffe.Object]:
    """``obj`` and every object defined in it (aliases are rendered from their target)."""
    found = [obj]
    for member in obj.members.values():
        if not member.is_alias and isinstance(member, griffe.Object):
            found.extend(_objects(member))
    return found


def to_markdown(text: str, targets: dict[str, str]) -> str:
    """``text`` with its roles as links or inline code and its math blocks as ``$$``."""

    def role(match: re.Match[str]) -> str:
        target = match["target"]
        name = target.rsplit(".", 1)[-1]
        # a dotted target outside the package (torch, torchvision) is never ours
        ours = "." not in target or target.startswith("eqlosses.")
        if ours and name in targets:
            return f"[`{name}`][{targets[name]}]"
        return f"`{name if match['short'] else target}`"

    def math(match: re.Match[str]) -> str:
        indent = match["indent"]
        lines = [line.strip() for line in match["body"].splitlines() if line.strip()]
        return f"{indent}$$\n" + "".join(f"{indent}{line}\n" for line in lines) + f"{indent}$$\n\n"

    return MATH.sub(math, ROLE.sub(role, text if text.endswith("\n") else text + "\n")).rstrip()
