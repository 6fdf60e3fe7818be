"""Declarative reading of MX messages: each attrs field says where in the XML its value lives.

A message class lists its fields once, with the paths to read them from; :class:`XMLRecord`
turns an element into an instance. This keeps the tolerance rules of the protocol in one place:
lookups by local name (so ``csta:``-prefixed, default-namespaced and plain elements read the
same), the first present of several spellings wins (``duration``/``Duration``, ``ownerId`` as
element or attribute), a missing value is empty or zero, a value of the wrong kind is an
:class:`~mxproxy.csta.xml.XMLError` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Self

import attrs

from mxproxy.csta.xml import Element, find, findall, local_name, to_bool, to_int

Read = Callable[[Element], object]

_READ = "mxproxy.read"
_IN_CONNECTION = "mxproxy.in_connection"


@attrs.frozen
class XMLRecord:
    """Base of every parsed message; subclasses declare fields with the functions below."""

    @classmethod
    def from_xml(cls, element: Element) -> Self:
        """Read every declared field of ``cls`` from ``element``."""
        return cls._read(element, element)

    @classmethod
    def _read(cls, element: Element, connection: Element) -> Self:
        values: dict[str, Any] = {}
        for field in attrs.fields(cls):
            read: Read = field.metadata[_READ]
            values[field.name] = read(connection if field.metadata[_IN_CONNECTION] else element)
        return cls(**values)


def raw(element: Element, *paths: str) -> str:
    """Stripped text of the first present path: ``@name`` an attribute, ``.`` own text,
    anything else an element path; ``""`` when none is present."""
    for path in paths:
        if path.startswith("@"):
            value = element.get(path[1:])
        elif path == ".":
            value = element.text
        else:
            found = find(element, path)
            value = None if found is None else found.text
        if value is not None:
            return value.strip()
    return ""


def _what(element: Element, paths: tuple[str, ...]) -> str:
    return f"{local_name(element)}/{paths[0]}"


def _declare(read: Read, default: object, in_connection: bool = False, shown: bool = True) -> Any:
    return attrs.field(default=default, repr=shown,
                       metadata={_READ: read, _IN_CONNECTION: in_connection})


def string(*paths: str, in_connection: bool = False, shown: bool = True) -> Any:
    """A text field; ``shown=False`` keeps secrets out of ``repr`` (and so out of logs)."""
    return _declare(lambda element: raw(element, *paths), "", in_connection, shown)


def integer(*paths: str, in_connection: bool = False) -> Any:
    """An integer field; non-numeric text raises ``XMLError``."""
    return _declare(lambda element: to_int(raw(element, *paths), _what(element, paths)), 0,
                    in_connection)


def boolean(*paths: str) -> Any:
    """A boolean in Go ``ParseBool`` spellings; anything else raises ``XMLError``."""
    return _declare(lambda element: to_bool(raw(element, *paths), _what(element, paths)), False)


def record(path: str, kind: type[XMLRecord]) -> Any:
    """One nested record; an empty one when the element is missing."""
    def read(element: Element) -> XMLRecord:
        found = find(element, path)
        return kind() if found is None else kind.from_xml(found)
    return _declare(read, kind())


def records(path: str, kind: type[XMLRecord]) -> Any:
    """A tuple of nested records, one per element at ``path``, in document order."""
    return _declare(lambda element: tuple(kind.from_xml(item) for item in findall(element, path)),
                    ())


def derived(read: Read, default: object, shown: bool = True) -> Any:
    """A field computed by ``read`` from the whole element, for shapes the others cannot say."""
    return _declare(read, default, shown=shown)
