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

Read = Callable[["Source"], object]

_READ = "mxproxy.read"
_IN_CONNECTION = "mxproxy.in_connection"


class Source:
    """An element being read, with its children indexed by local name on first use: one pass
    over the children instead of a namespace-wildcard search per field."""

    __slots__ = ("element", "_children")

    def __init__(self, element: Element) -> None:
        self.element = element
        self._children: dict[str, Element] | None = None

    def child(self, name: str) -> Element | None:
        if self._children is None:
            index: dict[str, Element] = {}
            for child in self.element:
                tag = child.tag
                if isinstance(tag, str):
                    index.setdefault(tag.rpartition("}")[2], child)
            self._children = index
        return self._children.get(name)

    def raw(self, *paths: str) -> str:
        """Stripped text of the first present path: ``@name`` an attribute, ``.`` own text,
        anything else an element path; ``""`` when none is present."""
        for path in paths:
            if path[0] == "@":
                value = self.element.get(path[1:])
            elif path == ".":
                value = self.element.text
            else:
                found = find(self.element, path) if "/" in path else self.child(path)
                value = None if found is None else found.text
            if value is not None:
                return value.strip()
        return ""


@attrs.frozen
class XMLRecord:
    """Base of every parsed message; subclasses declare fields with the functions below."""

    @classmethod
    def from_xml(cls, element: Element) -> Self:
        """Read every declared field of ``cls`` from ``element``."""
        return cls._read(element, element)

    @classmethod
    def _read(cls, element: Element, connection: Element) -> Self:
        source = Source(element)
        other = source if connection is element else Source(connection)
        return cls(**{name: read(other if in_connection else source)
                      for name, read, in_connection in _plan(cls)})


_PLANS: dict[type, tuple[tuple[str, Read, bool], ...]] = {}


def _plan(cls: type[XMLRecord]) -> tuple[tuple[str, Read, bool], ...]:
    """The fields of ``cls`` with their readers, worked out once per class."""
    plan = _PLANS.get(cls)
    if plan is None:
        plan = _PLANS[cls] = tuple((field.name, field.metadata[_READ],
                                    field.metadata[_IN_CONNECTION])
                                   for field in attrs.fields(cls))
    return plan


def raw(element: Element, *paths: str) -> str:
    """:meth:`Source.raw` for a lone element."""
    return Source(element).raw(*paths)


def _what(source: Source, paths: tuple[str, ...]) -> str:
    return f"{local_name(source.element)}/{paths[0]}"


def _boolean(source: Source, paths: tuple[str, ...]) -> bool:
    text = source.raw(*paths)
    if text in _PLAIN_BOOLEANS:
        return _PLAIN_BOOLEANS[text]
    return to_bool(text, _what(source, paths))


_PLAIN_BOOLEANS = {"": False, "true": True, "false": False}


def _integer(source: Source, paths: tuple[str, ...]) -> int:
    text = source.raw(*paths)
    if text.isascii() and text.isdigit():
        return int(text)  # the common case, without building an error label
    return to_int(text, _what(source, paths))


def _declare(read: Read, default: object, in_connection: bool = False, shown: bool = True) -> Any:
    return attrs.field(default=default, repr=shown,
                       metadata={_READ: read, _IN_CONNECTION: in_connection})


def string(*paths: str, in_connection: bool = False, shown: bool = True) -> Any:
    """A text field; ``shown=False`` keeps secrets out of ``repr`` (and so out of logs)."""
    return _declare(lambda source: source.raw(*paths), "", in_connection, shown)


def integer(*paths: str, in_connection: bool = False) -> Any:
    """An integer field; non-numeric text raises ``XMLError``."""
    return _declare(lambda source: _integer(source, paths), 0, in_connection)


def boolean(*paths: str) -> Any:
    """A boolean in Go ``ParseBool`` spellings; anything else raises ``XMLError``."""
    return _declare(lambda source: _boolean(source, paths), False)


def record(path: str, kind: type[XMLRecord]) -> Any:
    """One nested record; an empty one when the element is missing."""
    def read(source: Source) -> XMLRecord:
        found = find(source.element, path)
        return kind() if found is None else kind.from_xml(found)
    return _declare(read, kind())


def records(path: str, kind: type[XMLRecord]) -> Any:
    """A tuple of nested records, one per element at ``path``, in document order."""
    return _declare(lambda source: tuple(kind.from_xml(item)
                                         for item in findall(source.element, path)), ())


def derived(read: Callable[[Element], object], default: object, shown: bool = True) -> Any:
    """A field computed by ``read`` from the whole element, for shapes the others cannot say."""
    return _declare(lambda source: read(source.element), default, shown=shown)
