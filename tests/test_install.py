"""``install(app)``: the worker and consumer steps, the worker options, once however often."""

from __future__ import annotations

from celery import Celery, signals

from celery_prom import install
from celery_prom.bootsteps import PrometheusServer, TaskEventTap


def _option_names(app: Celery) -> list[str]:
    return [option.name for option in app.user_options["worker"]]


def test_install_adds_the_steps_and_the_worker_options() -> None:
    app = Celery("cptest_install", set_as_current=False)

    install(app)

    assert PrometheusServer in app.steps["worker"]
    assert TaskEventTap in app.steps["consumer"]
    assert sorted(_option_names(app)) == [
        "prom_advertise",
        "prom_host",
        "prom_port",
        "prom_web_config",
    ]


def _publish_receivers() -> tuple[int, int]:
    return len(signals.before_task_publish.receivers), len(signals.after_task_publish.receivers)


def test_installing_twice_changes_nothing() -> None:
    app = Celery("cptest_install_twice", set_as_current=False)
    install(app)
    steps = {kind: set(app.steps[kind]) for kind in ("worker", "consumer")}
    receivers = _publish_receivers()

    install(app)

    assert {kind: set(app.steps[kind]) for kind in ("worker", "consumer")} == steps
    assert sorted(_option_names(app)) == [
        "prom_advertise",
        "prom_host",
        "prom_port",
        "prom_web_config",
    ]
    assert _publish_receivers() == receivers
