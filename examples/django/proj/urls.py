"""The site's URLs: the orders API and the metrics Prometheus scrapes."""

from __future__ import annotations

from django.urls import include, path

from proj.metrics import metrics_view

urlpatterns = [
    path("api/v1/", include("orders.urls")),
    path("api/v1/metrics", metrics_view, name="metrics"),
]
