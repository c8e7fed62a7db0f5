"""The orders API, mounted under /api/v1/."""

from __future__ import annotations

from django.urls import path

from orders import views

urlpatterns = [
    path("orders", views.create_order, name="create-order"),
]
