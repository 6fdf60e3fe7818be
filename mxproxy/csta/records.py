"""Declarative reading of MX messages: each attrs field says where in the XML its value lives.

A message class lists its fields once, with the paths to read them from; :class:`XMLRecord`
turns an element into an instance. This keeps the tolerance rules of the protocol in one place:
lookups by local name (so ``csta:``-prefixed, default-namespaced and plain elements read the
same), the first present of several spellings wins (``duration``/``Duration``, ``ownerId`` as
element or attribute), a missing value is empty or zero, a value of the wrong kind is an
:class:`~mxproxy.csta.xml.XMLError` naming the field.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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
        plan = _plan(cls)
        values: dict[str, Any] = {}
        texts: dict[str, str | None] = {}
        children, wanted = plan.children, plan.wanted
        if children or wanted:
            for child in element:
                tag = child.tag
                field = children.get(tag)
                if field is None:  # a namespaced spelling, or not a one-element field's
                    tag = _local_tag(tag)
                    field = children.get(tag)
                    if field is None:
                        if tag in wanted and tag not in texts:
                            texts[tag] = child.text
                        continue
                name, paths, convert, inner = field
                if name in values:  # the first of repeated elements wins
                    continue
                if inner is None:
                    values[name] = convert(child.text, element, paths)
                    continue
                for grandchild in child:  # ``child/inner``: a device's <deviceIdentifier>
                    if _local_tag(grandchild.tag) == inner:
                        values[name] = convert(grandchild.text, element, paths)
                        break
        attribute = element.get
        for name, key, paths, convert in plan.attributes:
            values[name] = convert(attribute(key), element, paths)
        for name, paths, convert in plan.direct:
            text = None
            for path in paths:
                text = attribute(path[1:]) if path[0] == "@" else texts.get(path)
                if text is not None:
                    break
            values[name] = convert(text, element, paths)
        if plan.other:
            source = Source(element)
            other = source if connection is element else Source(connection)
            for name, read, in_connection in plan.other:
                values[name] = read(other if in_connection else source)
        return cls(**values)


Convert = Callable[[str | None, Element, tuple[str, ...]], object]


@attrs.frozen
class _Plan:
    """How to read a class, worked out once, so that each element is read in one pass over its
    children: fields read from one child element each (``children``, by the element's local
    name; the common case, converted as the pass meets them; or from the first element of a
    name inside it, ``child/inner``, as a device reference is), from one attribute each
    (``attributes``, with the attribute's name), from the first present of several spellings
    (``direct``: attributes, and the texts of the ``wanted`` elements, gathered by the pass),
    and fields with their own reader (``other``)."""

    children: Mapping[str, tuple[str, tuple[str, ...], Convert, str | None]]
    attributes: tuple[tuple[str, str, tuple[str, ...], Convert], ...]
    direct: tuple[tuple[str, tuple[str, ...], Convert], ...]
    wanted: frozenset[str]
    other: tuple[tuple[str, Read, bool], ...]


_PLANS: dict[type, _Plan] = {}


def _plan(cls: type[XMLRecord]) -> _Plan:
    plan = _PLANS.get(cls)
    if plan is None:
        simple: list[tuple[str, tuple[str, ...], Convert]] = []
        nested: list[tuple[attrs.Attribute, tuple[str, ...], Convert]] = []
        other: list[tuple[str, Read, bool]] = []
        for field in attrs.fields(cls):
            read = field.metadata.get(_DIRECT)
            if read is not None:
                simple.append((field.name, *read))
            elif _NESTED in field.metadata:
                nested.append((field, *field.metadata[_NESTED]))
            else:
                other.append((field.name, field.metadata[_READ], field.metadata[_IN_CONNECTION]))
        direct = [field for field in simple if len(field[1]) > 1]  # several spellings
        wanted = frozenset(path for _, paths, _ in direct for path in paths if path[0] != "@")
        children: dict[str, tuple[str, tuple[str, ...], Convert, str | None]] = {}
        attributes: list[tuple[str, str, tuple[str, ...], Convert]] = []
        for name, paths, convert in simple:
            if len(paths) > 1:
                continue
            path = paths[0]
            if path[0] == "@":
                attributes.append((name, path[1:], paths, convert))
            elif path in wanted:  # an element a field of several spellings reads too
                direct.append((name, paths, convert))
            else:
                children[path] = (name, paths, convert, None)
        for field, paths, convert in nested:
            outer, inner = paths[0].split("/")
            if outer in children or outer in wanted:  # taken: read it the slow way
                other.append((field.name, field.metadata[_READ], False))
            else:
                children[outer] = (field.name, paths, convert, inner)
        plan = _PLANS[cls] = _Plan(children, tuple(attributes), tuple(direct), wanted,
                                   tuple(other))
    return plan


def _local_tag(tag: object) -> str:
    """A child's tag without its namespace; "" for what is not an element (an entity)."""
    return tag.rpartition("}")[2] if isinstance(tag, str) else ""


def raw(element: Element, *paths: str) -> str:
    """:meth:`Source.raw` for a lone element."""
    return Source(element).raw(*paths)


def _label(element: Element, paths: tuple[str, ...]) -> str:
    return f"{local_name(element)}/{paths[0]}"


def _to_string(text: str | None, element: Element, paths: tuple[str, ...]) -> str:
    return "" if text is None else text.strip()


def _to_integer(text: str | None, element: Element, paths: tuple[str, ...]) -> int:
    if text:
        try:
            return int(text)  # the common case; int() allows white space around the digits
        except ValueError:
            pass
    return to_int("" if text is None else text.strip(), _label(element, paths))


def _to_boolean(text: str | None, element: Element, paths: tuple[str, ...]) -> bool:
    text = "" if text is None else text.strip()
    plain = _PLAIN_BOOLEANS.get(text)
    return plain if plain is not None else to_bool(text, _label(element, paths))


_PLAIN_BOOLEANS = {"": False, "true": True, "false": False}
_DIRECT = "mxproxy.direct"
_NESTED = "mxproxy.nested"


def _scalar(paths: tuple[str, ...], convert: Convert, default: object, in_connection: bool,
            shown: bool = True) -> Any:
    """A field holding one value converted from the text at the first present of ``paths``."""
    simple = not in_connection and all("/" not in p and p != "." for p in paths)
    metadata: dict[str, object] = {
        _READ: lambda source: convert(source.raw(*paths), source.element, paths),
        _IN_CONNECTION: in_connection,
    }
    if simple:
        metadata[_DIRECT] = (paths, convert)
    elif not in_connection and len(paths) == 1 and paths[0].count("/") == 1 and \
            paths[0][0] != "@":
        metadata[_NESTED] = (paths, convert)
    return attrs.field(default=default, repr=shown, metadata=metadata)


def _declare(read: Read, default: object, in_connection: bool = False, shown: bool = True) -> Any:
    return attrs.field(default=default, repr=shown,
                       metadata={_READ: read, _IN_CONNECTION: in_connection})


def string(*paths: str, in_connection: bool = False, shown: bool = True) -> Any:
    """A text field; ``shown=False`` keeps secrets out of ``repr`` (and so out of logs)."""
    return _scalar(paths, _to_string, "", in_connection, shown)


def integer(*paths: str, in_connection: bool = False) -> Any:
    """An integer field; non-numeric text raises ``XMLError``."""
    return _scalar(paths, _to_integer, 0, in_connection)


def boolean(*paths: str) -> Any:
    """A boolean in Go ``ParseBool`` spellings; anything else raises ``XMLError``."""
    return _scalar(paths, _to_boolean, False, False)


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
