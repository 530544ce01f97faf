"""Tag and key templates such as ``"category:{category_id}:products"``.

A template is parsed once, at startup, into literal text and plain field names. Rendering joins
the pieces with ``str()`` of the values: there is no ``str.format`` at run time, so a template can
never reach attributes or items of user data. Pure: no Django settings, no I/O.
"""

from __future__ import annotations

import string
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_FORMATTER = string.Formatter()


class TemplateError(ValueError):
    """A template is malformed; the message says what to write instead."""


@dataclass(frozen=True)
class KeyTemplate:
    source: str
    parts: tuple[tuple[str, str | None], ...]  # (literal, field name or None)

    @property
    def fields(self) -> tuple[str, ...]:
        return tuple(name for _, name in self.parts if name is not None)

    def render(self, values: Mapping[str, Any]) -> str:
        """Fill the template from ``values`` (field name -> value); KeyError if one is missing."""
        out = []
        for literal, name in self.parts:
            out.append(literal)
            if name is not None:
                out.append(str(values[name]))
        return "".join(out)


def parse(source: str) -> KeyTemplate:
    """Parse ``source``; raise :class:`TemplateError` for anything but ``{name}`` placeholders."""
    if not isinstance(source, str):
        raise TemplateError(f"expected a string, got {type(source).__name__}")
    if not source:
        raise TemplateError("a template must not be empty")
    try:
        pieces = list(_FORMATTER.parse(source))
    except ValueError as exc:
        raise TemplateError(
            f"{source!r} is not a valid template ({exc}); write literal braces as '{{{{' and '}}}}'"
        ) from exc
    parts: list[tuple[str, str | None]] = []
    for literal, name, spec, conversion in pieces:
        if name is None:
            parts.append((literal, None))
            continue
        if name == "" or name.isdigit():
            raise TemplateError(
                f"{source!r} uses a positional placeholder '{{{name}}}'; name a field, "
                "such as '{pk}'"
            )
        if not name.isidentifier():
            base = name.split(".", 1)[0].split("[", 1)[0]
            raise TemplateError(
                f"{source!r} uses attribute or index access '{{{name}}}'; only plain field "
                f"names are allowed, such as '{{{base}_id}}' or '{{{base}}}'"
            )
        if spec or conversion:
            raise TemplateError(
                f"{source!r} uses a conversion or format spec in '{{{name}}}'; "
                f"write '{{{name}}}' alone"
            )
        parts.append((literal, name))
    return KeyTemplate(source=source, parts=tuple(parts))
