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
#: (bucket sample, its labels, exemplar labels, exemplar value, timestamp in ms)
Exemplars = set[tuple[str, tuple[tuple[str, str], ...], tuple[tuple[str, str], ...], float, int]]
OPENMETRICS_END = b"# EOF\n"  # the end of the page, written after the registry's families


def filled_store(task_ids: bool = True) -> TaskStore:
    """Three series; with ``task_ids`` their observations carry exemplars."""
    store = TaskStore(runtime_buckets=(0.1, 1.0, 10.0), queue_wait_buckets=(1.0,))
    keys = [
        ("app.add", "celery@a", "celery"),
        ('odd "name"\\with\nescapes', "celery@b", "high"),
        ("app.ünïcode", "celery@a", "low"),
    ]
    ids = iter(["t-0", "t-1", 't-"2"\\', "t-3", "t-4", "t-ünï-5"])
    for index, key in enumerate(keys):
        for _ in range(index + 1):
            task_id = next(ids) if task_ids else None
            store.count(key, RECEIVED)
            store.count_start(key, 0.5 * index, task_id)
            store.count_success(key, 0.05 * (index + 1) ** 3, task_id)
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

    rendered = TaskExposition(store).render(openmetrics=False).decode()

    assert samples_of(parse_text(rendered)) == samples_of(parse_text(reference(store, False)))


def test_openmetrics_matches_prometheus_client() -> None:
    store = filled_store()

    rendered = TaskExposition(store).render(openmetrics=True, rest=lambda: OPENMETRICS_END).decode()

    expected = samples_of(parse_openmetrics(reference(store, True)))
    assert samples_of(parse_openmetrics(rendered)) == expected
    assert "# UNIT celery_task_runtime_seconds seconds\n" in rendered
    assert "# TYPE celery_task_received counter\n" in rendered


def exemplars_of(openmetrics_text: str) -> Exemplars:
    return {
        (
            sample.name,
            tuple(sorted(sample.labels.items())),
            tuple(sorted(sample.exemplar.labels.items())),
            sample.exemplar.value,
            round(float(sample.exemplar.timestamp) * 1000),
        )
        for family in parse_openmetrics(openmetrics_text)
        for sample in family.samples
        if sample.exemplar is not None
    }


def test_openmetrics_exemplars_match_prometheus_client() -> None:
    store = filled_store()

    rendered = TaskExposition(store).render(openmetrics=True, rest=lambda: OPENMETRICS_END).decode()

    found = exemplars_of(rendered)
    assert found == exemplars_of(reference(store, True))
    # Each series observed into one bucket of each histogram; its last task is the exemplar.
    shown = sorted((dict(labels)["name"], name, exemplar) for name, labels, exemplar, *_ in found)
    assert shown == [
        (key, f"celery_task_{histogram}_seconds_bucket", (("task_id", task_id),))
        for key, task_id in [
            ("app.add", "t-0"),
            ("app.ünïcode", "t-ünï-5"),
            ('odd "name"\\with\nescapes', 't-"2"\\'),
        ]
        for histogram in ("queue_wait", "runtime")
    ]


def test_the_text_format_has_no_exemplars() -> None:
    with_ids = TaskExposition(filled_store()).render(openmetrics=False).decode()

    without_ids = TaskExposition(filled_store(task_ids=False)).render(openmetrics=False)
    assert with_ids == without_ids.decode()
    assert " # " not in with_ids


def test_a_new_exemplar_shows_in_the_next_openmetrics_render() -> None:
    store = filled_store()
    exposition = TaskExposition(store)
    exposition.render(openmetrics=True)
    exposition.render(openmetrics=False)

    store.count_success(("app.add", "celery@a", "celery"), 0.05, "t-new")
    text = exposition.render(openmetrics=False).decode()
    rendered = exposition.render(openmetrics=True, rest=lambda: OPENMETRICS_END).decode()

    assert 'le="0.1"} 2.0 # {task_id="t-new"} 0.05 ' in rendered
    assert "t-new" not in text
    assert exemplars_of(rendered) == exemplars_of(reference(store, True))


def test_changes_after_a_render_show_in_the_next_one() -> None:
    store = filled_store()
    exposition = TaskExposition(store)
    exposition.render()

    store.count(("app.add", "celery@a", "celery"), STARTED)
    store.forget_hostname("celery@b")
    store.count(("app.new", "celery@c", "celery"), RECEIVED)

    assert samples_of(parse_text(exposition.render().decode())) == samples_of(
        parse_text(reference(store, False))
    )


def test_an_empty_store_still_describes_its_families() -> None:
    text = TaskExposition(TaskStore()).render().decode()

    assert "# TYPE celery_task_failed_total counter\n" in text
    assert samples_of(parse_text(text)) == set()


def test_promtool_accepts_the_exposition() -> None:
    text = TaskExposition(filled_store()).render().decode()

    assert promtool_check_metrics(text) == []
