"""The plumbing every route shares: Klein with route templates for the metrics, the site
resource that counts and times each answer (with a fast path around Klein), and JSON answers.
"""

from __future__ import annotations

import json
import re
from typing import Any, Protocol, cast

from klein import Klein
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import Request

from mxproxy.api.auth import Authenticator
from mxproxy.api.request import APIRequest
from mxproxy.metrics import DISCONNECTED, Metrics

_VARIABLE = re.compile(r"<(?:[^:>]*:)?([^>]+)>")


def template(rule: str) -> str:
    """A werkzeug rule as OpenAPI writes it: ``/mx/{mx}/voicemail/{mail_id}``."""
    return _VARIABLE.sub(r"{\1}", rule)


class Routing(Klein):
    """Klein that notes on each request the template of the route it matched (``route``), the
    label of the HTTP metrics: raw paths would make a series per MX, user and voicemail."""

    _templates: dict[str, str] | None = None

    def execute_endpoint(self, endpoint: str, request: IRequest, *args: Any,
                         **kwargs: Any) -> Any:
        cast(APIRequest, request).route = self.template_of(endpoint)
        return super().execute_endpoint(endpoint, request, *args, **kwargs)

    def template_of(self, endpoint: str) -> str:
        if self._templates is None:  # the rules are complete once the first request comes
            self._templates = {rule.endpoint: template(rule.rule)
                               for rule in self.url_map.iter_rules()}
        return self._templates[endpoint]


app = Routing()
"""The one Klein application. Each module of routes (``app.py``, ``voicemail.py``, ``calls.py``)
is a class whose methods add routes to it; :class:`mxproxy.api.app.API` inherits them all."""


class Endpoints:
    """What every class of routes uses: the credential checks and the clock."""

    auth: Authenticator
    clock: IReactorTime


class FastPath(Protocol):
    """An answer some requests can have without Klein (the busiest route, cached)."""

    def fast_answer(self, request: Request) -> bytes | None: ...


class Routes(Resource):
    """Klein routes every request, except those the fast path answers whole: Klein's
    per-request machinery costs more than the busiest answer itself
    (bench/http_addressbook.py). Every answer is counted and timed, refusals included."""

    isLeaf = True

    def __init__(self, klein: Resource, fast: FastPath, fast_route: str, clock: IReactorTime,
                 metrics: Metrics) -> None:
        super().__init__()
        self._klein = klein
        self._fast = fast
        self._clock = clock
        self._metrics = metrics
        # The fast path's series, found once: looking them up per request costs ~2 µs
        self._fast_answers = metrics.http_requests.labels(fast_route, "GET", "200")
        self._fast_seconds = metrics.http_duration.labels(fast_route, "GET")

    def render(self, request: APIRequest) -> Any:
        started = self._clock.seconds()
        refusal = request.refusal()
        if refusal is None:
            body = self._fast.fast_answer(request)
            if body is not None:
                self._fast_answers.inc()
                self._fast_seconds.observe(self._clock.seconds() - started)
                return body
            refusal = request.path_refusal()
        request.notifyFinish().addBoth(self._finished, request, started)
        return refusal if refusal is not None else self._klein.render(request)

    def _finished(self, result: object, request: APIRequest, started: float) -> None:
        opened = request.stream_opened
        if opened is not None:  # a stream: its client leaving is its normal end
            self._metrics.http_request(request.route, request.method, str(request.code),
                                       opened - started)
            return
        status = DISCONNECTED if isinstance(result, Failure) else str(request.code)
        self._metrics.http_request(request.route, request.method, status,
                                   self._clock.seconds() - started)


_JSON = json.JSONEncoder(ensure_ascii=False, check_circular=False)
"""Every answer is a tree built for it: there is no cycle to look for, container by container."""


def encode(value: object) -> bytes:
    return _JSON.encode(value).encode()


def json_answer(request: Request, value: object) -> bytes:
    return json_body(request, encode(value))


def json_body(request: Request, body: bytes) -> bytes:
    request.setHeader(b"Content-Type", b"application/json")
    request.setHeader(b"Content-Length", str(len(body)).encode())
    return body


def no_content(request: Request) -> bytes:
    request.setResponseCode(204)
    return b""
