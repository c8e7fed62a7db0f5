"""Rendering: the incremental renderer says exactly what prometheus_client would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.exposition import generate_latest as generate_openmetrics
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from celery_prom.exposition import TaskExposition
from celery_prom.store import RECEIVED, REJECTED, STARTED, TaskStore
from tests.support import promtool_check_metrics

Samples = set[tuple[str, tuple[tuple[str, str], ...], float]]


def filled_store() -> TaskStore:
    store = TaskStore(runtime_buckets=(0.1, 1.0, 10.0), queue_wait_buckets=(1.0,))
    keys = [
        ("app.add", "celery@a", "celery"),
        ('odd "name"\\with\nescapes', "celery@b", "high"),
        ("app.ünïcode", "celery@a", "low"),
    ]
    for index, key in enumerate(keys):
        for _ in range(index + 1):
            store.count(key, RECEIVED)
            store.count_start(key, 0.5 * index)
            store.count_success(key, 0.05 * (index + 1) ** 3)
        store.count_failure(key, "ValueError")
        store.count(key, REJECTED)
    store.count_failure(keys[0], "WorkerLostError")
    return store


def samples_of(families: object) -> Samples:
    return {
        (sample.name, tuple(sorted(sample.labels.items())), sample.value)
        for family in families  # type: ignore[attr-defined]
        for sample in family.samples
        if not sample.name.endswith("_created")
    }


def reference(store: TaskStore, openmetrics: bool) -> str:
    registry = CollectorRegistry()
    registry.register(store)
    generate = generate_openmetrics if openmetrics else generate_latest
    return generate(registry).decode()


def test_text_matches_prometheus_client() -> None:
    store = filled_store()

    rendered = TaskExposition(store).render(openmetrics=False)

    assert samples_of(parse_text(rendered)) == samples_of(parse_text(reference(store, False)))


def test_openmetrics_matches_prometheus_client() -> None:
    store = filled_store()

    rendered = TaskExposition(store).render(openmetrics=True)
    rendered += "# EOF\n"  # the end of the page, written after the registry's families

    expected = samples_of(parse_openmetrics(reference(store, True)))
    assert samples_of(parse_openmetrics(rendered)) == expected
    assert "# UNIT celery_task_runtime_seconds seconds\n" in rendered
    assert "# TYPE celery_task_received counter\n" in rendered


def test_changes_after_a_render_show_in_the_next_one() -> None:
    store = filled_store()
    exposition = TaskExposition(store)
    exposition.render()

    store.count(("app.add", "celery@a", "celery"), STARTED)
    store.forget_hostname("celery@b")
    store.count(("app.new", "celery@c", "celery"), RECEIVED)

    assert samples_of(parse_text(exposition.render())) == samples_of(
        parse_text(reference(store, False))
    )


def test_an_empty_store_still_describes_its_families() -> None:
    text = TaskExposition(TaskStore()).render()

    assert "# TYPE celery_task_failed_total counter\n" in text
    assert samples_of(parse_text(text)) == set()


def test_promtool_accepts_the_exposition() -> None:
    text = TaskExposition(filled_store()).render()

    assert promtool_check_metrics(text) == []
