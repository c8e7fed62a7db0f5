"""Prometheus metrics of the web app: HTTP requests counted by a middleware, and the view
that serves them with everything else in prometheus_client's default registry. That
includes ``celery_task_sent_total`` (the tasks this process enqueued), which
``celery_prom.install(app)`` records there."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from django.http import HttpRequest, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.exposition import choose_encoder

#: Methods kept as label values; anything else a client sends is counted as "other".
KNOWN_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
#: Route label of requests no URL pattern matched (404s), so that arbitrary paths sent by
#: clients cannot create series.
UNMATCHED_ROUTE = "unmatched"


@dataclass(frozen=True)
class RequestMetrics:
    requests: Counter
    duration: Histogram


@cache
def request_metrics(registry: CollectorRegistry = REGISTRY) -> RequestMetrics:
    """The HTTP metrics of ``registry``, created once per registry (Django may build the
    middleware more than once per process, e.g. once per test client)."""
    return RequestMetrics(
        requests=Counter(
            "http_requests",
            "HTTP requests answered, by method, route pattern and status code.",
            ["method", "route", "status"],
            registry=registry,
        ),
        duration=Histogram(
            "http_request_duration_seconds",
            "Time taken to answer HTTP requests, by method and route pattern.",
            ["method", "route"],
            registry=registry,
        ),
    )


class RequestMetricsMiddleware:
    """Counts and times every request, labelled by the URL pattern that served it (the
    pattern, not the path: paths carry ids and would make a series per order)."""

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response
        self.metrics = request_metrics()

    def __call__(self, request: HttpRequest) -> HttpResponse:
        started = time.perf_counter()
        response = self.get_response(request)
        elapsed = time.perf_counter() - started
        method = request.method if request.method in KNOWN_METHODS else "other"
        route = _route(request)
        self.metrics.requests.labels(method, route, str(response.status_code)).inc()
        self.metrics.duration.labels(method, route).observe(elapsed)
        return response


def _route(request: HttpRequest) -> str:
    match = request.resolver_match
    return match.route if match is not None and match.route else UNMATCHED_ROUTE


@require_GET
def metrics_view(request: HttpRequest) -> HttpResponse:
    """Everything in the default registry, as text or OpenMetrics as Prometheus asks."""
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(REGISTRY), content_type=content_type)
