"""Arbitrary event dicts, parsed as the exporter's router parses them, never break the
recorder, and what it records always renders cleanly."""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, given, settings, target
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.openmetrics.parser import (
    text_string_to_metric_families as parse_openmetrics,
)
from prometheus_client.parser import text_string_to_metric_families as parse_text

from celery_prom.exposition import TaskExposition
from celery_prom.metrics import LabelLimits
from celery_prom.recorder import Recorder
from celery_prom.store import TaskStore
from celery_prom.task_event import (
    CELERY_TASK_EVENTS,
    DROP_MALFORMED,
    NOT_COUNTED,
    InvalidEvent,
    parse_task_event,
)
from tests.support import promtool_check_metrics

EVENT_TYPES = [*sorted(CELERY_TASK_EVENTS | NOT_COUNTED), "worker-heartbeat"]
# Text that stresses rendering: quotes, backslashes, newlines, lone surrogates, long values.
texts = st.one_of(
    st.sampled_from(["celery@a", "celery@b", "t1", "t2", "app.add", "q", "", 'a"b\\c\nd']),
    st.text(max_size=20),
    st.text(min_size=250, max_size=300),
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=True, allow_infinity=True),
    texts,
)
values = st.one_of(
    scalars,
    st.lists(scalars, max_size=3),
    st.dictionaries(st.text(max_size=5), scalars, max_size=3),
)
numbers = st.floats(min_value=-1e12, max_value=1e12, allow_nan=False)
# Events shaped like Celery's, with rendering-hostile strings in every label.
plausible_events = st.fixed_dictionaries(
    {
        "type": st.sampled_from(EVENT_TYPES),
        "uuid": st.sampled_from(["t1", "t2", "t3"]),
        "hostname": texts,
        "timestamp": numbers,
    },
    optional={
        "name": texts,
        "queue": texts,
        "runtime": numbers,
        "exception": texts,
        "exception_type": texts,
        "sent_at": numbers,
        "eta": st.one_of(st.none(), texts, numbers),
        "retries": st.one_of(st.integers(min_value=0, max_value=3), scalars),
    },
)
# Anything at all, including values that are not events.
arbitrary_events = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.one_of(st.sampled_from(EVENT_TYPES), texts),
            "uuid": st.one_of(st.sampled_from(["t1", "t2", "t3"]), values),
            "hostname": st.one_of(st.sampled_from(["celery@a", "celery@b"]), values),
        },
        optional={
            "name": values,
            "queue": values,
            "timestamp": values,
            "runtime": values,
            "exception": values,
            "exception_type": values,
            "sent_at": values,
            "eta": values,
            "retries": values,
        },
    ),
    values,
)
events = st.one_of(plausible_events, arbitrary_events)


def record(recorder: Recorder, event: object) -> bool:
    """Record ``event`` as the router does; whether it was counted as received."""
    if not isinstance(event, dict):
        recorder.count_invalid(DROP_MALFORMED)
        return True
    try:
        parsed = parse_task_event(event)
    except InvalidEvent as invalid:
        recorder.count_invalid(invalid.reason)
        return True
    if parsed is None:  # task-sent: the router counts it as received, not the recorder
        return False
    recorder.record(parsed)
    return True


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(events, max_size=40))
def test_any_events_leave_a_renderable_store(sequence: list[Any]) -> None:
    store = TaskStore(runtime_buckets=(0.1, 1.0), limits=LabelLimits(task_names=3))
    recorder = Recorder(store, max_in_flight=5, dedupe_window=5)
    received = sum(record(recorder, event) for event in sequence)

    assert recorder.stats.received == received
    target(float(len(store.versions())))  # steer towards sequences that record series
    text = TaskExposition(store).render().decode()
    list(parse_text(text))
    openmetrics = TaskExposition(store).render(openmetrics=True, rest=lambda: b"# EOF\n").decode()
    list(parse_openmetrics(openmetrics))


@settings(max_examples=25, deadline=None)
@given(st.lists(events, min_size=10, max_size=60))
def test_promtool_accepts_whatever_was_recorded(sequence: list[Any]) -> None:
    store = TaskStore()
    recorder = Recorder(store)
    for event in sequence:
        record(recorder, event)
    registry = CollectorRegistry()
    registry.register(recorder)

    text = TaskExposition(store).render(rest=lambda: generate_latest(registry)).decode()
    assert promtool_check_metrics(text) == []
