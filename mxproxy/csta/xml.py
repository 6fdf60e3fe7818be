"""XML for the MX link: one hardened parser, namespace-agnostic lookups, a builder, redaction.

The MX link is a network input like any other, so the parser never resolves entities, loads a
DTD or touches the network. Messages are read by local name because the MX (and older clients)
sometimes put elements in the ECMA-323 namespace and sometimes in none.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping

from lxml import etree

Element = etree._Element

_PARSER = etree.XMLParser(
    resolve_entities=False,
    no_network=True,
    load_dtd=False,
    huge_tree=False,
    remove_comments=True,
    remove_pis=True,
)

ECMA_CSTA_NS = "http://www.ecma-international.org/standards/ecma-323/csta/ed4"

_TRUE = frozenset({"1", "t", "T", "true", "TRUE", "True"})
_FALSE = frozenset({"0", "f", "F", "false", "FALSE", "False"})


class XMLError(ValueError):
    """A body that is not well-formed XML, or a field with a value of the wrong kind."""


def parse(body: bytes) -> Element:
    """Parse one frame body; raises :class:`XMLError` with lxml's reason."""
    try:
        return etree.fromstring(body, _PARSER)
    except etree.XMLSyntaxError as error:
        raise XMLError(f"malformed XML: {error}") from None
    except ValueError as error:  # e.g. an encoding declaration lxml refuses
        raise XMLError(f"malformed XML: {error}") from None


def local_name(element: Element) -> str:
    """The tag without its namespace: ``{ns}DeliveredEvent`` -> ``DeliveredEvent``."""
    tag = element.tag
    if not isinstance(tag, str):
        return ""
    return tag.rpartition("}")[2]


@functools.lru_cache(maxsize=1024)
def _wildcard(path: str) -> str:
    return "/".join("{*}" + step for step in path.split("/"))


def find(element: Element, path: str) -> Element | None:
    """The first element at ``a/b/c`` below ``element``, whatever the namespaces.

    The plain path is tried first: it is what the MX sends today and lxml matches it in C;
    the namespace wildcard, several times slower, only when that finds nothing.
    """
    found = element.find(path)
    return found if found is not None else element.find(_wildcard(path))


def findall(element: Element, path: str) -> list[Element]:
    return element.findall(path) or element.findall(_wildcard(path))


def text(element: Element, path: str, default: str = "") -> str:
    """Stripped text at ``path``; ``default`` when the element is missing or empty."""
    found = find(element, path)
    if found is None or found.text is None:
        return default
    return found.text.strip()


def attr(element: Element, *names: str, default: str = "") -> str:
    """The first present attribute of ``names`` (variants such as ``userID``/``userId``)."""
    for name in names:
        value = element.get(name)
        if value is not None:
            return value.strip()
    return default


def to_int(value: str, what: str, default: int = 0) -> int:
    """An integer field; empty means ``default``, anything else non-numeric is an error."""
    if not value:
        return default
    try:
        return int(value)
    except ValueError:
        raise XMLError(f"{what}: expected an integer, got {value[:40]!r}") from None


def to_bool(value: str, what: str, default: bool = False) -> bool:
    """A boolean in the spellings the MX and Go's ParseBool use; empty means ``default``."""
    if not value:
        return default
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    raise XMLError(f"{what}: expected a boolean, got {value[:40]!r}")


def build(
    tag: str,
    attrs: Mapping[str, str] | None = None,
    children: Mapping[str, str | None] | None = None,
) -> Element:
    """An element with attributes and text-only children (``None`` text = empty element)."""
    root = etree.Element(tag, dict(attrs or {}))
    for name, value in (children or {}).items():
        etree.SubElement(root, name).text = value
    return root


def sub(parent: Element, tag: str, value: str | None = None, **attrs: str) -> Element:
    """Append a child in the parent's namespace."""
    parent_tag = parent.tag
    if isinstance(parent_tag, str) and parent_tag.startswith("{"):
        tag = parent_tag[:parent_tag.index("}") + 1] + tag
    child = etree.SubElement(parent, tag, attrs)
    child.text = value
    return child


def serialize(element: Element) -> bytes:
    """UTF-8 bytes without an XML declaration (the MX accepts both)."""
    return etree.tostring(element, encoding="utf-8")


_SECRET = re.compile(rb"(<(?:[\w.-]+:)?(pwd|password|softPhonePwd)\b[^>]*>)(.*?)(</)", re.S)
_SECRET_ATTR = re.compile(rb"""(\bsoftPhonePwd\s*=\s*)(["'])(.*?)\2""", re.S)
_MEDIA = re.compile(rb"(<(?:[\w.-]+:)?mediaContent\b[^>]*>)(.*?)(</)", re.S)


def redact(body: bytes) -> bytes:
    """The body with passwords and audio replaced, for traces and logs."""
    body = _SECRET.sub(rb"\1***\4", body)
    body = _SECRET_ATTR.sub(rb"\1\2***\2", body)
    return _MEDIA.sub(lambda m: m.group(1) + b"[%d bytes of base64]" % len(m.group(2)) + m.group(3),
                      body)
