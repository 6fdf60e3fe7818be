"""docs/openapi.yaml and docs/admin-openapi.yaml: sane on their own, and describing exactly the
routes and statuses the code serves.

The route comparison reads the app's werkzeug URL map (``API.app.url_map``), so a route added
to ``mxproxy.api.app`` without documentation, or documented without being served, fails here.
The statuses of each operation are compared with those the code can produce, as
tests/route_statuses.py reads them from the code (see :class:`StatusTests`). Examples in the
documents, and real ``/healthz`` reports, are checked against their schemas by a small validator
for the JSON Schema keywords the documents use; it refuses keywords it does not know instead of
ignoring them.
"""

from __future__ import annotations

import ast
import base64
import functools
import inspect
import json
import os
import re
import textwrap
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import yaml
from klein import Klein
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as openmetrics_families,
)
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase, TestCase
from twisted.web.server import Request

from mxproxy.api.auth import Authenticator
from mxproxy.api.errors import HTTPError, as_http_error
from mxproxy.csta.errors import LoggedOut, LoginError, ProtocolViolation
from mxproxy.sessions import UserSession
from mxproxy.store import TokenStoreError
from tests.route_statuses import (
    HOME,
    MX_LINK,
    AnalysisError,
    ErrorMapping,
    RouteStatuses,
    written_statuses,
)
from tests.support import Daemon, drop_sessions, exchange
from tests.test_admin import AdminTestCase, APITestCase
from tests.test_api import ALICE, company
from tests.test_push import VOIP, apns_token

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OPENAPI = os.path.join(REPO, "docs", "openapi.yaml")
ADMIN_OPENAPI = os.path.join(REPO, "docs", "admin-openapi.yaml")

HTTP_METHODS = frozenset({"get", "put", "post", "delete", "options", "head", "patch", "trace"})
# werkzeug adds HEAD to every GET rule (and OPTIONS when asked); the document leaves them out.
IGNORED_METHODS = frozenset({"HEAD", "OPTIONS"})
# What a rule without a method list (werkzeug: every method) turns into; never documented.
ANY_METHOD = "*"
COMMON_HEADERS = ("Server", "X-API-Version", "X-Service-Version")
STATUS_KEY = re.compile(r"[1-5](?:[0-9]{2}|XX)|default")
TEMPLATE_VARIABLE = re.compile(r"\{([^{}]+)\}")
# <name>, <converter:name>, <converter(arguments):name>
RULE_VARIABLE = re.compile(r"<(?:[^<>]*:)?([A-Za-z_][A-Za-z0-9_]*)>")
# A werkzeug "path" converter matches across slashes: Klein's branch sub-rules
# (".../<path:__rest__>") and catch-all fallbacks (e.g. a JSON 404 for every other path). No
# OpenAPI path template can express them, and they are not API routes.
CATCH_ALL = re.compile(r"<path[:(]")


@functools.cache
def load_document(path: str = OPENAPI) -> dict[str, Any]:
    with open(path, encoding="utf-8") as stream:
        document = yaml.safe_load(stream)
    if not isinstance(document, dict):
        raise AssertionError(f"{path}: not a YAML mapping")
    return document


# --- the two sets of (path, method) ---------------------------------------------------------


def rule_to_template(rule: str) -> str:
    """A werkzeug rule as an OpenAPI path template: ``/a/<int:b>`` -> ``/a/{b}``."""
    return RULE_VARIABLE.sub(r"{\1}", rule)


def app_operations(app: Klein) -> set[tuple[str, str]]:
    """(path template, lower-case method) for every rule of a Klein app, catch-alls excluded."""
    operations = set()
    for rule in app.url_map.iter_rules():
        if CATCH_ALL.search(rule.rule):
            continue
        path = rule_to_template(rule.rule)
        if rule.methods is None:
            operations.add((path, ANY_METHOD))
            continue
        operations.update((path, method.lower()) for method in rule.methods - IGNORED_METHODS)
    return operations


def document_operations(document: Mapping[str, Any]) -> set[tuple[str, str]]:
    return {(path, method)
            for path, item in document.get("paths", {}).items()
            for method in item if method in HTTP_METHODS}


# --- walking the document -------------------------------------------------------------------


def resolve_pointer(document: Mapping[str, Any], reference: str) -> Any:
    """The target of a local ``$ref`` (``#/a/b~1c``); KeyError/ValueError when there is none."""
    if not reference.startswith("#/"):
        raise ValueError(f"not a local reference: {reference!r}")
    node: Any = document
    for token in reference[2:].split("/"):
        token = token.replace("~1", "/").replace("~0", "~")
        if isinstance(node, list):
            node = node[int(token)]
        elif isinstance(node, dict):
            node = node[token]
        else:
            raise KeyError(token)
    return node


def resolved(document: Mapping[str, Any], node: Any) -> Any:
    """A Reference Object's target (following chains), or the node itself."""
    seen = set()
    while isinstance(node, dict) and "$ref" in node:
        reference = node["$ref"]
        if reference in seen:
            raise AssertionError(f"reference loop at {reference}")
        seen.add(reference)
        node = resolve_pointer(document, reference)
    return node


def walk(node: Any, where: str = "#") -> Iterator[tuple[str, Any]]:
    """Every node of a parsed YAML tree with a JSON-pointer-like location."""
    yield where, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from walk(value, f"{where}/{key}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from walk(value, f"{where}/{index}")


def operations(document: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in document["paths"].items():
        for method, operation in item.items():
            if method in HTTP_METHODS:
                yield path, method, operation


def parameters_of(document: Mapping[str, Any], path: str, operation: Mapping[str, Any]
                  ) -> list[dict[str, Any]]:
    """Path-level and operation-level parameters, references resolved."""
    item = document["paths"][path]
    return [resolved(document, parameter)
            for parameter in [*item.get("parameters", []), *operation.get("parameters", [])]]


def responses(document: Mapping[str, Any]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """(where, status, resolved response) for every operation's responses and the components."""
    for path, method, operation in operations(document):
        for status, response in operation.get("responses", {}).items():
            yield f"{method.upper()} {path} {status}", str(status), resolved(document, response)
    for name, response in document.get("components", {}).get("responses", {}).items():
        yield f"components/responses/{name}", "", response


# --- a small JSON Schema (2020-12 subset) validator for the examples -------------------------

ANNOTATIONS = frozenset({
    "description", "title", "summary", "examples", "default", "format", "deprecated",
    "readOnly", "writeOnly", "contentMediaType", "contentEncoding", "$comment",
})
ASSERTIONS = frozenset({
    "$ref", "type", "const", "enum", "pattern", "minLength", "maxLength", "minimum", "maximum",
    "required", "properties", "additionalProperties", "propertyNames", "items", "not", "anyOf",
    "oneOf", "allOf",
})


def _is_type(instance: Any, name: str) -> bool:
    if name == "integer":
        return isinstance(instance, int) and not isinstance(instance, bool)
    if name == "number":
        return isinstance(instance, int | float) and not isinstance(instance, bool)
    python = {"string": str, "boolean": bool, "object": dict, "array": list,
              "null": type(None)}[name]
    return isinstance(instance, python)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return bool(a == b)


def schema_errors(document: Mapping[str, Any], instance: Any, schema: Mapping[str, Any],
                  where: str = "$") -> list[str]:
    """Why ``instance`` does not match ``schema``; empty when it does.

    Stricter than JSON Schema in one way: an object whose schema lists ``properties`` and says
    nothing about ``additionalProperties`` may not have other properties, so an example with a
    misspelt field name fails.
    """
    unknown = set(schema) - ANNOTATIONS - ASSERTIONS
    if unknown:
        raise AssertionError(f"{where}: the validator does not know {sorted(unknown)}")
    errors: list[str] = []
    if "$ref" in schema:
        target = resolve_pointer(document, schema["$ref"])
        errors += schema_errors(document, instance, target, where)
    if "type" in schema:
        types = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is_type(instance, name) for name in types):
            return [*errors, f"{where}: {instance!r} is not of type {schema['type']}"]
    if "const" in schema and not _same(instance, schema["const"]):
        errors.append(f"{where}: {instance!r} is not {schema['const']!r}")
    if "enum" in schema and not any(_same(instance, value) for value in schema["enum"]):
        errors.append(f"{where}: {instance!r} is not one of {schema['enum']}")
    if isinstance(instance, str):
        if "pattern" in schema and not re.search(schema["pattern"], instance):
            errors.append(f"{where}: {instance!r} does not match {schema['pattern']!r}")
        if len(instance) < schema.get("minLength", 0):
            errors.append(f"{where}: {instance!r} is shorter than {schema['minLength']}")
        if "maxLength" in schema and len(instance) > schema["maxLength"]:
            errors.append(f"{where}: {instance!r} is longer than {schema['maxLength']}")
    if _is_type(instance, "number"):
        if "minimum" in schema and instance < schema["minimum"]:
            errors.append(f"{where}: {instance!r} < {schema['minimum']}")
        if "maximum" in schema and instance > schema["maximum"]:
            errors.append(f"{where}: {instance!r} > {schema['maximum']}")
    if isinstance(instance, dict):
        errors += _object_errors(document, instance, schema, where)
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            errors += schema_errors(document, item, schema["items"], f"{where}[{index}]")
    if "not" in schema and not schema_errors(document, instance, schema["not"], where):
        errors.append(f"{where}: {instance!r} matches the schema under 'not'")
    branches = {keyword: [schema_errors(document, instance, branch, where)
                          for branch in schema[keyword]]
                for keyword in ("anyOf", "oneOf", "allOf") if keyword in schema}
    if "anyOf" in branches and all(branches["anyOf"]):
        errors.append(f"{where}: matches no anyOf branch: {branches['anyOf']}")
    if "oneOf" in branches and sum(not found for found in branches["oneOf"]) != 1:
        errors.append(f"{where}: matches {sum(not f for f in branches['oneOf'])} oneOf branches")
    for found in branches.get("allOf", []):
        errors += found
    return errors


def _object_errors(document: Mapping[str, Any], instance: dict[str, Any],
                   schema: Mapping[str, Any], where: str) -> list[str]:
    errors = [f"{where}: missing {name!r}" for name in schema.get("required", [])
              if name not in instance]
    properties = schema.get("properties", {})
    additional = schema.get("additionalProperties")
    for name, value in instance.items():
        if "propertyNames" in schema:
            errors += schema_errors(document, name, schema["propertyNames"], f"{where} key")
        if name in properties:
            errors += schema_errors(document, value, properties[name], f"{where}.{name}")
        elif isinstance(additional, dict):
            errors += schema_errors(document, value, additional, f"{where}.{name}")
        elif additional is False or (additional is None and "properties" in schema):
            errors.append(f"{where}: undocumented property {name!r}")
    return errors


def _subschemas(schema: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    yield from schema.get("properties", {}).values()
    for single in ("items", "additionalProperties", "propertyNames", "not"):
        if isinstance(schema.get(single), dict):
            yield schema[single]
    for many in ("anyOf", "oneOf", "allOf"):
        yield from schema.get(many, [])


def _examples_of(document: Mapping[str, Any], node: Mapping[str, Any]
                 ) -> Iterator[tuple[str, Any]]:
    """``example`` and the values of ``examples`` (a map of Example Objects)."""
    if "example" in node:
        yield "example", node["example"]
    for name, example in node.get("examples", {}).items():
        example = resolved(document, example)
        if "value" in example:
            yield f"examples/{name}", example["value"]


def documented_examples(document: Mapping[str, Any]
                        ) -> Iterator[tuple[str, Any, Mapping[str, Any]]]:
    """(where, example value, schema) for every example of the document."""
    schemas: list[tuple[str, Mapping[str, Any]]] = []

    def with_schema(where: str, node: Mapping[str, Any]
                    ) -> Iterator[tuple[str, Any, Mapping[str, Any]]]:
        schema = node.get("schema")
        if schema is None:
            return
        schemas.append((f"{where}/schema", schema))
        for label, value in _examples_of(document, node):
            yield f"{where}/{label}", value, schema

    def content(where: str, node: Mapping[str, Any]
                ) -> Iterator[tuple[str, Any, Mapping[str, Any]]]:
        for media_type, media in node.get("content", {}).items():
            yield from with_schema(f"{where}/content/{media_type}", media)
        for name, header in node.get("headers", {}).items():
            yield from with_schema(f"{where}/headers/{name}", resolved(document, header))

    for path, method, operation in operations(document):
        where = f"{method.upper()} {path}"
        for parameter in parameters_of(document, path, operation):
            yield from with_schema(f"{where} parameter {parameter['name']}", parameter)
        if "requestBody" in operation:
            yield from content(f"{where} requestBody", resolved(document, operation["requestBody"]))
    for where, _, response in responses(document):
        yield from content(where, response)
    components = document.get("components", {})
    for kind in ("parameters", "headers"):
        for name, node in components.get(kind, {}).items():
            yield from with_schema(f"components/{kind}/{name}", resolved(document, node))
    for name, schema in components.get("schemas", {}).items():
        schemas.append((f"components/schemas/{name}", schema))
    while schemas:
        where, schema = schemas.pop()
        for index, value in enumerate(schema.get("examples", [])):
            yield f"{where}/examples/{index}", value, schema
        if "default" in schema:
            yield f"{where}/default", schema["default"], schema
        schemas.extend((f"{where}/*", sub) for sub in _subschemas(schema))


# --- tests ----------------------------------------------------------------------------------


class DocumentChecks:
    """What each document must be on its own; mixed into a TestCase naming the document."""

    path: str
    fewest_examples: int
    """How many examples the walk must find at least (that it found them)."""

    document: dict[str, Any]

    def setUp(self) -> None:
        self.document = load_document(self.path)

    def test_version(self) -> None:
        self.assertIsInstance(self.document.get("openapi"), str)
        self.assertRegex(self.document["openapi"], r"^3\.1\.[0-9]+$")
        info = self.document.get("info", {})
        self.assertIsInstance(info.get("title"), str)
        self.assertEqual(info.get("version"), "1.0")

    def test_keys_are_strings(self) -> None:
        """Unquoted ``200:`` or ``yes:`` would be YAML numbers and booleans, not JSON keys."""
        bad = [f"{where}/{key!r}" for where, node in walk(self.document)
               if isinstance(node, dict) for key in node if not isinstance(key, str)]
        self.assertEqual(bad, [])

    def test_references_resolve(self) -> None:
        bad = []
        for where, node in walk(self.document):
            if isinstance(node, dict) and "$ref" in node:
                try:
                    resolve_pointer(self.document, node["$ref"])
                except (KeyError, IndexError, ValueError, TypeError):
                    bad.append(f"{where}: {node['$ref']}")
        self.assertEqual(bad, [])

    def test_operations_have_responses(self) -> None:
        for path, method, operation in operations(self.document):
            where = f"{method.upper()} {path}"
            self.assertTrue(operation.get("responses"), f"{where}: no responses")
            for status, response in operation["responses"].items():
                self.assertRegex(str(status), STATUS_KEY, where)
                self.assertIn("description", resolved(self.document, response), where)

    def test_operation_ids_unique(self) -> None:
        ids = [operation.get("operationId") for _, _, operation in operations(self.document)]
        self.assertNotIn(None, ids)
        self.assertEqual(len(ids), len(set(ids)), ids)

    def test_path_parameters_declared(self) -> None:
        """Template variables and ``in: path`` parameters are the same names, all required."""
        for path, method, operation in operations(self.document):
            where = f"{method.upper()} {path}"
            parameters = parameters_of(self.document, path, operation)
            keys = [(parameter["name"], parameter["in"]) for parameter in parameters]
            self.assertEqual(len(keys), len(set(keys)), f"{where}: duplicate parameter")
            in_path = [parameter for parameter in parameters if parameter["in"] == "path"]
            self.assertEqual(sorted(parameter["name"] for parameter in in_path),
                             sorted(TEMPLATE_VARIABLE.findall(path)), where)
            for parameter in in_path:
                self.assertIs(parameter.get("required"), True, f"{where} {parameter['name']}")
            for parameter in parameters:
                self.assertIn("schema", parameter, f"{where} {parameter['name']}")

    def test_json_bodies_have_examples(self) -> None:
        for where, _, response in responses(self.document):
            media = response.get("content", {}).get("application/json")
            if media is not None:
                self.assertTrue("example" in media or "examples" in media, where)

    def test_examples_match_schemas(self) -> None:
        checked = 0
        errors = []
        for where, value, schema in documented_examples(self.document):
            checked += 1
            errors += [f"{where}: {error}" for error in schema_errors(self.document, value,
                                                                      schema)]
        self.assertEqual(errors, [])
        self.assertGreater(checked, self.fewest_examples)

    def errors_are_json(self, exceptions: Iterable[str] = ()) -> None:
        """4xx and 5xx bodies are ``{"error": ...}`` (but for the responses named ``METHOD
        path status`` in ``exceptions``); 401, 405, 429 carry their headers."""
        components = self.document["components"]["responses"]
        errors = [(where, status, response) for where, status, response
                  in responses(self.document)
                  if status[:1] in ("4", "5") and where not in exceptions]
        errors.append(("components/responses/MethodNotAllowed", "405",
                       components["MethodNotAllowed"]))
        special = {"401": "WWW-Authenticate", "405": "Allow", "429": "Retry-After"}
        for where, status, response in errors:
            self.assertEqual(set(response.get("content", {})), {"application/json"}, where)
            self.assertEqual(response["content"]["application/json"].get("schema"),
                             {"$ref": "#/components/schemas/Error"}, where)
            if status in special:
                self.assertIn(special[status], response.get("headers", {}), where)


class DocumentTests(DocumentChecks, SynchronousTestCase):
    """docs/openapi.yaml on its own."""

    path = OPENAPI
    fewest_examples = 40

    def test_paths(self) -> None:
        """Every route lives under ``/mx/{mx}/`` and has at least one operation."""
        paths = self.document.get("paths") or {}
        self.assertTrue(paths)
        for path, item in paths.items():
            self.assertTrue(path.startswith("/mx/{mx}/"), path)
            self.assertTrue(HTTP_METHODS & set(item), f"{path}: no operation")

    def test_security(self) -> None:
        """Every operation needs HTTP Basic authentication."""
        schemes = self.document["components"]["securitySchemes"]
        for path, method, operation in operations(self.document):
            security = operation.get("security", self.document.get("security")) or []
            self.assertTrue(security, f"{method.upper()} {path}")
            for requirement in security:
                for name in requirement:
                    self.assertEqual((schemes[name]["type"], schemes[name]["scheme"]),
                                     ("http", "basic"))

    def test_common_headers(self) -> None:
        """Every response, errors included, declares Server and the two version headers."""
        for where, _, response in responses(self.document):
            headers = response.get("headers", {})
            for name in COMMON_HEADERS:
                self.assertIn(name, headers, where)

    def test_errors_are_json(self) -> None:
        self.errors_are_json()


class SchemaTests(SynchronousTestCase):
    """The validator, on contract points the schemas must enforce."""

    def setUp(self) -> None:
        self.document = load_document()

    def errors(self, instance: Any, name: str) -> list[str]:
        return schema_errors(self.document, instance, {"$ref": f"#/components/schemas/{name}"})

    def test_jids_are_strings(self) -> None:
        contact = {"firstName": "A", "lastName": "B", "ext": "3001"}
        self.assertEqual(self.errors({"addressbook": {"43884850000000001": contact}},
                                     "AddressBook"), [])
        self.assertTrue(self.errors({"addressbook": {"1234": contact}}, "AddressBook"))
        self.assertTrue(self.errors({"addressbook": {"43884850000000001": {
            **contact, "homeSystem": 43884850000099999}}}, "AddressBook"))

    def test_call_log_entry(self) -> None:
        entry = {"direction": "incoming", "recordId": 1, "gcid": "X", "callingPartyNo": "1",
                 "originalCalledPartyNo": "2"}
        self.assertEqual(self.errors({"callog": [entry]}, "CallLog"), [])
        self.assertTrue(self.errors({"calllog": [entry]}, "CallLog"))
        self.assertTrue(self.errors({"callog": [{**entry, "direction": "sideways"}]}, "CallLog"))
        self.assertTrue(self.errors({"callog": [{**entry, "missed": False}]}, "CallLog"))
        self.assertTrue(self.errors({"callog": [{**entry, "legType": 0}]}, "CallLog"))
        self.assertTrue(self.errors({"callog": [{**entry, "recordId": "1"}]}, "CallLog"))

    def test_call_request(self) -> None:
        self.assertEqual(self.errors({"from": "+1", "to": "3002"}, "CallRequest"), [])
        self.assertTrue(self.errors({"from": "+1"}, "CallRequest"))
        self.assertTrue(self.errors({"from": "+1", "to": "2", "ringDelay": 121}, "CallRequest"))
        self.assertTrue(self.errors({"from": "+1", "to": "2", "vmDelay": True}, "CallRequest"))

    def test_voicemail_patch_needs_a_field(self) -> None:
        for body in ({"note": ""}, {"readed": True}, {"read": False}):
            self.assertEqual(self.errors(body, "VoicemailPatch"), [], body)
        self.assertTrue(self.errors({}, "VoicemailPatch"))
        self.assertTrue(self.errors({"readed": "yes"}, "VoicemailPatch"))

    def test_voicemail_id_is_a_string(self) -> None:
        mail = {"id": "1", "from": "3111", "to": "3001", "received": 1, "duration": 5,
                "read": False}
        self.assertEqual(self.errors({"voicemails": [mail]}, "VoicemailList"), [])
        self.assertTrue(self.errors({"voicemails": [{**mail, "id": 1}]}, "VoicemailList"))

    def test_unknown_keyword_is_refused(self) -> None:
        self.assertRaises(AssertionError, schema_errors, self.document, 1, {"multipleOf": 2})


class RoutesTests(SynchronousTestCase):
    """The document against the app's URL map."""

    def test_document_matches_app(self) -> None:
        from mxproxy.api.app import API

        served = app_operations(API.app)
        documented = document_operations(load_document())
        self.assertEqual(sorted(served - documented), [], "served but not documented")
        self.assertEqual(sorted(documented - served), [], "documented but not served")

    def test_rule_to_template(self) -> None:
        self.assertEqual(rule_to_template("/mx/<mx>/voicemail/<mail_id>"),
                         "/mx/{mx}/voicemail/{mail_id}")
        self.assertEqual(rule_to_template("/mx/<string:mx>/voicemail/<int(min=1):mail_id>"),
                         "/mx/{mx}/voicemail/{mail_id}")
        self.assertEqual(rule_to_template("/mx/<string(length=2):mx>/token/<kind>/<bundle>"),
                         "/mx/{mx}/token/{kind}/{bundle}")
        self.assertEqual(rule_to_template("/mx/<mx>/addressbook"), "/mx/{mx}/addressbook")

    def test_app_operations(self) -> None:
        """A throwaway Klein app: converters stripped, HEAD dropped, catch-alls skipped."""
        app = Klein()

        @app.route("/mx/<string:mx>/addressbook", methods=["GET"])
        def addressbook(request: object, mx: str) -> None: ...

        @app.route("/mx/<mx>/voicemail/<int(min=1):mail_id>",
                   methods=["GET", "PATCH", "DELETE"])
        def voicemail(request: object, mx: str, mail_id: int) -> None: ...

        @app.route("/mx/<mx>/static", methods=["GET"], branch=True)
        def static(request: object, mx: str) -> None: ...

        @app.route("/<path:rest>", methods=["GET", "POST", "PUT", "PATCH", "DELETE"])
        def fallback(request: object, rest: str) -> None: ...

        @app.route("/mx/<mx>/anything")
        def anything(request: object, mx: str) -> None: ...

        self.assertEqual(app_operations(app), {
            ("/mx/{mx}/addressbook", "get"),
            ("/mx/{mx}/voicemail/{mail_id}", "get"),
            ("/mx/{mx}/voicemail/{mail_id}", "patch"),
            ("/mx/{mx}/voicemail/{mail_id}", "delete"),
            ("/mx/{mx}/static", "get"),
            ("/mx/{mx}/anything", ANY_METHOD),
        })

    def test_app_operations_on_a_class(self) -> None:
        """``API.app`` on the class is the Klein instance itself (the descriptor's class case)."""

        class Routes:
            app = Klein()

            @app.route("/mx/<mx>/calllog", methods=["GET"])
            def calllog(self, request: object, mx: str) -> None: ...

        self.assertEqual(app_operations(Routes.app), {("/mx/{mx}/calllog", "get")})
        self.assertEqual(app_operations(Routes().app), {("/mx/{mx}/calllog", "get")})

    def test_document_operations(self) -> None:
        document = {"paths": {"/mx/{mx}/voicemail/{mail_id}": {
            "summary": "s", "parameters": [], "get": {}, "delete": {}, "x-note": {}}}}
        self.assertEqual(document_operations(document), {
            ("/mx/{mx}/voicemail/{mail_id}", "get"),
            ("/mx/{mx}/voicemail/{mail_id}", "delete"),
        })

    def test_real_document_operations(self) -> None:
        """What the document describes today (a change here is a change of the API)."""
        self.assertEqual(document_operations(load_document()), set(_expected_operations()))


def _expected_operations() -> Iterable[tuple[str, str]]:
    yield "/mx/{mx}/addressbook", "get"
    yield "/mx/{mx}/calllog", "get"
    yield "/mx/{mx}/call", "post"
    yield "/mx/{mx}/user", "get"
    yield "/mx/{mx}/calls", "get"
    for method in ("get", "delete"):
        yield "/mx/{mx}/calls/{call_id}", method
    for action in ("answer", "hold", "retrieve", "transfer", "deflect"):
        yield f"/mx/{{mx}}/calls/{{call_id}}/{action}", "post"
    yield "/mx/{mx}/mode", "put"
    yield "/mx/{mx}/services", "get"
    yield "/mx/{mx}/events", "get"
    for method in ("post", "delete"):
        yield "/mx/{mx}/token/{kind}/{bundle}", method
    yield "/mx/{mx}/voicemail", "get"
    for method in ("get", "patch", "delete"):
        yield "/mx/{mx}/voicemail/{mail_id}", method


# --- statuses: the document against the code ---------------------------------------------

NOT_PER_OPERATION = frozenset({500})
"""A bug's answer: any route can give it, and no operation promises it."""
ERROR_ROW = re.compile(r"^\| *([0-9]{3}(?:, *[0-9]{3})*) *\|", re.MULTILINE)


def route_functions(app: Klein) -> dict[tuple[str, str], Callable[..., Any]]:
    """The function each (path template, lower-case method) of a Klein app runs."""
    functions = {}
    for rule in app.url_map.iter_rules():
        if CATCH_ALL.search(rule.rule) or rule.methods is None:
            continue
        function = app.endpoints[rule.endpoint].__wrapped__
        for method in rule.methods - IGNORED_METHODS:
            functions[(rule_to_template(rule.rule), method.lower())] = function
    return functions


def documented_errors(operation: Mapping[str, Any]) -> set[int]:
    return {int(status) for status in operation["responses"] if str(status)[:1] in ("4", "5")}


def table_statuses(description: str) -> set[int]:
    """The statuses of the rows of a Markdown table of errors (``| 414, 431 | ... |``)."""
    return {int(status) for row in ERROR_ROW.findall(description) for status in row.split(",")}


class StatusTests(SynchronousTestCase):
    """Every operation documents exactly the error statuses its code can produce.

    The statuses are read from the code by tests/route_statuses.py (its docstring says how):
    those of the route's function and of everything it calls, exceptions translated by the
    error mapping ``as_http_error`` and calls leaving the API by their failure domains (the MX
    link for a user's session), plus those of ``Routes.render``, which sees every request
    before it is routed (413 over the body limit; 400 for a path or Host that is not UTF-8).
    A ``raise HTTPError(409, ...)`` added to a route or to any helper it calls, a new branch of
    the error mapping, or a new call into code that can fail changes the derived set, and this
    test fails until the document says the same; a documented status the code cannot produce
    fails it too.

    Left out, as the document explains: 500 (a bug, possible anywhere); the answers to requests
    that match no operation (404 for an unknown path, 405); the answers the connection writes
    before there is a request (408, 414, 431, 400 for a malformed request, 503 over the
    connection cap). The document's table of errors lists them: :meth:`test_errors_table`.
    """

    def test_operations_document_what_the_code_can_answer(self) -> None:
        from mxproxy.api.app import API
        from mxproxy.api.routing import Routes

        analysis = RouteStatuses()
        documented = {(path, method): documented_errors(operation)
                      for path, method, operation in operations(load_document())}
        functions = route_functions(API.app)
        self.assertEqual(set(functions), set(documented))
        wrong = []
        for (path, method), function in sorted(functions.items()):
            derived = analysis.of([function, Routes.render]) - NOT_PER_OPERATION
            missing, extra = derived - documented[path, method], documented[path, method] - derived
            if missing or extra:
                wrong.append(f"{method.upper()} {path}: undocumented {sorted(missing)}, "
                             f"documented but impossible {sorted(extra)}")
        if wrong:
            self.fail("\n".join(wrong))

    def test_every_route_reaches_the_mx(self) -> None:
        """Each route logs in to the MX (the auth cache can miss), so each can answer every
        status of the MX link: the document's note on shared statuses says so."""
        from mxproxy.api.app import API

        link = ErrorMapping().of_domain(MX_LINK)
        self.assertEqual(link, {400, 403, 502, 503, 504})
        analysis = RouteStatuses()
        for key, function in route_functions(API.app).items():
            self.assertEqual(link - analysis.of([function]), set(), key)

    def test_errors_table(self) -> None:
        """The table of errors in the document's description lists every status the API's
        code writes anywhere (route or not, connection answers included), and no other."""
        written = {status for status in written_statuses() if status >= 400}
        self.assertEqual(table_statuses(load_document()["info"]["description"]), written)
        self.assertTrue({400, 408, 413, 414, 431, 500, 502, 503} <= written)  # the scan works

    def test_table_statuses(self) -> None:
        self.assertEqual(table_statuses("| status | when |\n|---|---|\n| 400 | bad |\n"
                                        "| 414, 431 | long |\n| `x` | 500 |\n"), {400, 414, 431})


class _Throwaway:
    """Code for the analysis tests, at module level: the analysis reads its source."""

    def __init__(self, auth: Authenticator) -> None:
        self.auth = auth

    def checks_the_caller(self, request: Request) -> None:
        self.auth.caller(request, "dev")

    async def works_on_a_session(self, request: Request) -> None:
        caller = self.auth.caller(request, "dev")

        async def work(session: UserSession) -> None:
            pass

        await self.auth.on_session(caller, work)

    def conflicts(self) -> None:
        _conflict()

    def violates_the_protocol(self) -> None:
        raise ProtocolViolation("a reply out of the blue")

    def computes_a_status(self, status: int) -> None:
        raise HTTPError(status, "which one?")


def _conflict() -> None:
    raise _refusal()


def _refusal() -> HTTPError:
    return HTTPError(409, "conflict")


def _push_mapping(error: BaseException) -> HTTPError:
    """``as_http_error`` as it would be with a status for the token store's failures."""
    if isinstance(error, HTTPError):
        return error
    if isinstance(error, TokenStoreError):
        return HTTPError(507, "the token store failed")
    return HTTPError(500, "internal error")


def _unreadable_mapping(error: BaseException) -> HTTPError:
    for status in (400, 500):
        return HTTPError(status, "?")
    return HTTPError(500, "internal error")


class StatusAnalysisTests(SynchronousTestCase):
    """tests/route_statuses.py on throwaway code: what it finds, and what it refuses."""

    def setUp(self) -> None:
        self.analysis = RouteStatuses(home=(HOME, __name__))

    def test_a_status_two_calls_down(self) -> None:
        self.assertEqual(self.analysis.of([_Throwaway.conflicts]), {409})

    def test_the_caller_check(self) -> None:
        """The Authenticator's own statuses, found through the annotation of ``auth``; 500 is
        the ValueError ``basic_credentials`` raises and catches itself (``except`` is not
        followed)."""
        self.assertEqual(self.analysis.of([_Throwaway.checks_the_caller]),
                         {401, 404, 429, 500})

    def test_a_session_reaches_the_mx_link(self) -> None:
        self.assertEqual(self.analysis.of([_Throwaway.works_on_a_session]),
                         {401, 404, 429, 500} | {400, 403, 502, 503, 504})

    def test_an_exception_through_the_mapping(self) -> None:
        self.assertEqual(self.analysis.of([_Throwaway.violates_the_protocol]), {502})

    def test_a_status_that_is_not_a_literal(self) -> None:
        error = self.assertRaises(AnalysisError, self.analysis.of,
                                  [_Throwaway.computes_a_status])
        self.assertIn("HTTPError(status", str(error))

    def test_an_unclassified_dependency(self) -> None:
        analysis = RouteStatuses(domains={}, home=(HOME, __name__))
        error = self.assertRaises(AnalysisError, analysis.of, [_Throwaway.checks_the_caller])
        self.assertIn("mxproxy.sessions.LoginThrottle", str(error))

    def test_the_push_domain_follows_the_mapping(self) -> None:
        """A branch of the mapping for the token store's errors reaches the device-token
        routes, through ``Devices``: today the store's failures are 500."""
        from mxproxy.api.app import API

        analysis = RouteStatuses(ErrorMapping(_push_mapping))
        self.assertEqual(analysis.of([API.token]), {400, 401, 404, 429, 500, 501, 507})
        self.assertNotIn(507, analysis.of([API.calllog]))


class ErrorMappingTests(SynchronousTestCase):
    def test_read_as_it_runs(self) -> None:
        """The mapping read from the source gives what running ``as_http_error`` gives, for
        each class it names, a subclass and an unknown failure."""
        mapping = ErrorMapping()
        examples: dict[type, BaseException] = {LoginError: LoginError(2, "bad password")}
        classes = [cls for named, _ in mapping.branches for cls in named]
        self.assertGreater(len(classes), 5)
        for cls in [*classes, LoggedOut, ValueError]:
            error = examples.get(cls) or cls("x")
            self.assertEqual(mapping.status(cls), as_http_error(error).status, cls)

    def test_unreadable(self) -> None:
        self.assertRaises(AnalysisError, ErrorMapping, _unreadable_mapping)


# --- the admin document ------------------------------------------------------------------

METRIC_ROW = re.compile(r"^\| *`(mxproxy_[a-z_]+)` *\|", re.MULTILINE)
OPENMETRICS = "application/openmetrics-text; version=1.0.0"


def admin_pages() -> set[str]:
    """The paths the admin site serves (its resource's table of pages)."""
    from mxproxy.admin import admin_site
    from mxproxy.metrics import Metrics

    site = admin_site(Metrics(), [], None, Clock())
    return {path.decode() for path in site.resource._pages}


def documented_metrics() -> set[str]:
    """The metric names of the table in the admin document's description."""
    return set(METRIC_ROW.findall(load_document(ADMIN_OPENAPI)["info"]["description"]))


def exposed_metrics(body: bytes, content_type: str = "text/plain") -> set[str]:
    """The metric names of an exposition in either format, as a query spells them (counters
    with ``_total``), without the ``<name>_created`` gauges the text format adds for the
    counters and histograms with samples."""
    parse = (openmetrics_families if content_type.startswith(OPENMETRICS)
             else text_string_to_metric_families)
    families = {family.name: family.type for family in parse(body.decode())}
    return {name + ("_total" if kind == "counter" else "") for name, kind in families.items()
            if not (name.endswith("_created")
                    and families.get(name.removesuffix("_created")) in ("counter", "histogram"))}


class AdminDocumentTests(DocumentChecks, SynchronousTestCase):
    """docs/admin-openapi.yaml on its own, and against the admin site's pages."""

    path = ADMIN_OPENAPI
    fewest_examples = 8

    def test_paths_are_the_admin_pages(self) -> None:
        """``GET`` (and ``HEAD``, as in the API document) of each page, and nothing else."""
        self.assertEqual(document_operations(self.document),
                         {(page, "get") for page in admin_pages()})

    def test_no_authentication(self) -> None:
        self.assertEqual(self.document.get("security"), [])
        for path, method, operation in operations(self.document):
            self.assertNotIn("security", operation, f"{method.upper()} {path}")

    def test_errors_are_json(self) -> None:
        """All but the 503 of ``/healthz``, which is the health report."""
        self.errors_are_json(exceptions={"GET /healthz 503"})
        report = self.document["paths"]["/healthz"]["get"]["responses"]["503"]
        self.assertEqual(report["content"]["application/json"]["schema"],
                         {"$ref": "#/components/schemas/Health"})

    def test_health_statuses(self) -> None:
        """The statuses the health page sets (``200 if healthy else 503``), read from it."""
        from mxproxy.admin import _AdminPages

        tree = ast.parse(textwrap.dedent(inspect.getsource(_AdminPages._healthz)))
        set_codes = [node for node in ast.walk(tree) if isinstance(node, ast.Call)
                     and ast.unparse(node.func).endswith(".setResponseCode")]
        statuses = {str(node.value) for call in set_codes for node in ast.walk(call)
                    if isinstance(node, ast.Constant) and isinstance(node.value, int)}
        self.assertEqual(set(self.document["paths"]["/healthz"]["get"]["responses"]), statuses)
        self.assertEqual(statuses, {"200", "503"})

    def test_metrics_table_is_the_exposition(self) -> None:
        """Every family the daemon's registry and live-state collector expose (each family
        is there even without samples), and no other."""
        from mxproxy.admin import admin_site
        from mxproxy.metrics import Metrics

        metrics = Metrics()
        admin_site(metrics, [], None, Clock())
        body, _ = metrics.exposition("")
        self.assertEqual(documented_metrics(), exposed_metrics(body))
        self.assertGreater(len(documented_metrics()), 10)

    def test_token_store_schema(self) -> None:
        def errors(store: Any) -> list[str]:
            return schema_errors(self.document, store,
                                 {"$ref": "#/components/schemas/TokenStore"})

        self.assertEqual(errors({"state": "ok", "devices": 0}), [])
        self.assertEqual(errors({"state": "StoreClosed"}), [])
        self.assertTrue(errors({"state": "ok"}))
        self.assertTrue(errors({"state": "TimeoutError", "devices": 1}))
        self.assertTrue(errors({"state": "ok", "devices": 1, "path": "/var/lib"}))


def health_errors(code: int, report: Any) -> list[str]:
    """Why a ``/healthz`` answer does not match the document's schema for its status."""
    document = load_document(ADMIN_OPENAPI)
    response = document["paths"]["/healthz"]["get"]["responses"][str(code)]
    return schema_errors(document, report, response["content"]["application/json"]["schema"])


class HealthReportTests(AdminTestCase):
    """Real ``/healthz`` reports of the admin site match the documented schema, in each state
    the schema describes: links up and down, push delivery with its store working or failed,
    and without push delivery (:class:`HealthWithoutPushTests`)."""

    async def test_up(self) -> None:
        admin = await self.admin()
        await self.register("alice", "apns", VOIP, apns_token(1))
        code, report = await admin.health()
        self.assertEqual((code, report["tokenStore"]), (200, {"state": "ok", "devices": 1}))
        self.assertEqual(health_errors(code, report), [])

    async def test_down_with_a_failed_store(self) -> None:
        admin = await self.admin()
        server = self.d.server
        assert server.protocol is not None
        closed = server.protocol.when_closed()
        await drop_sessions(self.pbx)
        await closed
        await self.system.store.close()
        code, report = await admin.health()
        self.assertEqual(code, 503)
        self.assertTrue({"lastError", "nextAttempt"} <= set(report["mx"]["dev"]), report)
        self.assertEqual(report["tokenStore"], {"state": "StoreClosed"})
        self.assertEqual(health_errors(code, report), [])
        report["mx"]["dev"]["cause"] = "loginFailed"  # a field the document does not know
        self.assertTrue(health_errors(code, report))


class HealthWithoutPushTests(APITestCase):
    async def test_up(self) -> None:
        admin = await self.admin()
        code, report = await admin.health()
        self.assertEqual((code, report["tokenStore"]), (200, None))
        self.assertEqual(health_errors(code, report), [])


class MetricsPageTests(APITestCase):
    async def test_documented_media_types(self) -> None:
        """A scrape in either format has the content type the document names (with the
        parameters the scraper reads; the library may add more), and the documented
        families."""
        admin = await self.admin()
        documented = load_document(ADMIN_OPENAPI)["paths"]["/metrics"]["get"]["responses"][
            "200"]["content"]
        text, openmetrics = "text/plain; version=0.0.4", OPENMETRICS
        self.assertEqual(set(documented), {text, openmetrics})
        for accept, media in (("", text), (openmetrics, openmetrics)):
            response, body = await admin.request("/metrics", headers={"Accept": accept})
            [content_type] = response.headers.getRawHeaders(b"content-type")
            self.assertTrue(content_type.decode().startswith(media), content_type)
            self.assertEqual(exposed_metrics(body, content_type.decode()), documented_metrics())


# --- the statuses every operation shares, on the wire -----------------------------------


def operation_request(path: str, method: str, operation: Mapping[str, Any],
                      headers: Iterable[bytes], body: bytes | None = None) -> bytes:
    """A raw HTTP/1.1 request for a documented operation: the path filled in from the
    parameters' examples (the test daemon's MX is ``dev``), the body the request body's first
    JSON example unless given."""
    document = load_document()
    values = {parameter["name"]: str(parameter.get("example", ""))
              for parameter in parameters_of(document, path, operation)} | {"mx": "dev"}
    target = TEMPLATE_VARIABLE.sub(lambda match: values[match.group(1)], path)
    if body is None:
        media = resolved(document, operation.get("requestBody", {})).get(
            "content", {}).get("application/json", {})
        example = media.get("example", next(iter(
            example["value"] for example in media.get("examples", {}).values()), None))
        body = b"" if example is None else json.dumps(example).encode()
    return b"\r\n".join([f"{method.upper()} {target} HTTP/1.1".encode(), *headers,
                         b"Content-Type: application/json", b"Content-Length: %d" % len(body),
                         b"Connection: close", b"", body])


class SharedStatusTests(TestCase):
    """Each documented operation answered by a daemon against the simulator with the statuses
    the document says every operation can give: 413, 400 for a Host that is not UTF-8, and
    502 when the MX garbles its answer to the login. The analysis says they can happen; this
    shows they do."""

    async def daemon(self) -> Daemon:
        self.pbx = company()
        return await Daemon(self, self.pbx).start()

    async def answers(self, status: int, headers: Iterable[bytes],
                      body: bytes | None = None) -> None:
        daemon = await self.daemon()
        for path, method, operation in operations(load_document()):
            request = operation_request(path, method, operation, headers, body)
            response = await exchange(daemon.http_port, request)
            self.assertEqual(response.status, status, f"{method.upper()} {path}")
            self.assertIn("error", json.loads(response.body))

    async def test_413(self) -> None:
        await self.answers(413, [b"Host: x"], b"x" * (64 * 1024 + 1))

    async def test_400_for_a_host_that_is_not_utf8(self) -> None:
        await self.answers(400, [b"Host: \xff"])

    async def test_502_for_a_garbled_login_reply(self) -> None:
        daemon = await self.daemon()
        auth = b"Authorization: Basic " + base64.b64encode(b"%s:%s" % (
            ALICE[0].encode(), ALICE[1].encode()))
        for path, method, operation in operations(load_document()):
            self.pbx.faults.malformed_next = "xml"  # the next frame of each session, once
            request = operation_request(path, method, operation, [b"Host: x", auth])
            response = await exchange(daemon.http_port, request)
            self.assertEqual((response.status, json.loads(response.body)["error"][:29]),
                             (502, "unexpected reply from the MX:"), f"{method.upper()} {path}")
