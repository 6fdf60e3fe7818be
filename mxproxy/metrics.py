"""The daemon's Prometheus metrics: counters and histograms that the code paths update.

Each :class:`Metrics` owns its registry (never prometheus_client's global one), so that several
daemons can live in one process, as in the tests. Gauges that mirror live state (links up,
pushes in flight, certificate expiry) are not here: ``mxproxy.admin`` reads them from the
objects at scrape time. Label values come from small fixed sets (route templates, request and
provider names), never from user input, whose variety would make one series per user or path.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

OTHER = "other"
"""The route of a request no route matched, and the method of an unusual request."""
DISCONNECTED = "disconnected"
"""The status of a request whose client went away before its answer ended."""

DELIVERED, REJECTED, FAILED, DROPPED = "delivered", "rejected", "failed", "dropped"
"""The results of a push: the provider took it; the provider called the device token invalid;
the provider failed or refused it otherwise (after any retries); no slot freed up in time."""

_METHODS = {method: method.decode() for method in
            (b"GET", b"HEAD", b"POST", b"PUT", b"PATCH", b"DELETE", b"OPTIONS")}
_ROUND_TRIP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                       10.0)


class Metrics:
    """The counters and histograms of one daemon, in a registry of its own."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.http_requests = Counter(
            "mxproxy_http_requests", "HTTP API requests by route template, method and status "
            "('disconnected': the client left before the answer ended)",
            ("route", "method", "status"),
            registry=registry)
        self.http_duration = Histogram(
            "mxproxy_http_request_duration_seconds", "Time from an HTTP API request to the end "
            "of its answer, by route template and method", ("route", "method"), registry=registry)
        self.csta_round_trip = Histogram(
            "mxproxy_csta_round_trip_seconds", "Time from a CSTA request to the MX until its "
            "reply, by MX and request", ("mx", "request"), buckets=_ROUND_TRIP_BUCKETS,
            registry=registry)
        self.pushes = Counter(
            "mxproxy_pushes", "Pushes to devices by provider and result: delivered, rejected "
            "(invalid device token), failed (after any retries), dropped (no free slot in time)",
            ("provider", "result"), registry=registry)
        self.pruned_tokens = Counter(
            "mxproxy_pruned_tokens", "Device tokens deleted because the provider rejected them",
            ("provider",), registry=registry)

    def http_request(self, route: str, method: bytes, status: str, seconds: float) -> None:
        """Count one answered request; ``route`` is a template such as ``/mx/{mx}/calllog``."""
        label = _METHODS.get(method, OTHER)
        self.http_requests.labels(route, label, status).inc()
        self.http_duration.labels(route, label).observe(seconds)

    def round_trips(self, mx: str) -> Callable[[str, float], None]:
        """The ``on_round_trip`` callback for the CSTA links to the MX named ``mx``."""
        histogram = self.csta_round_trip

        def observe(request: str, seconds: float) -> None:
            histogram.labels(mx, request).observe(seconds)

        return observe

    def exposition(self, accept: str) -> tuple[bytes, str]:
        """The registry in the format the scraper's ``Accept`` header asks for (Prometheus text
        or OpenMetrics), and its content type."""
        encode, content_type = choose_encoder(accept)
        return encode(self.registry), content_type
