"""``install(app)``: the worker and consumer steps, the worker and beat options, beat's
hook, once however often."""

from __future__ import annotations

from celery import Celery, signals

from celery_prom import install
from celery_prom.beat import EmbeddedBeat
from celery_prom.bootsteps import PrometheusServer, TaskEventTap

BEAT_OPTIONS = ["prom_host", "prom_port", "prom_web_config"]
#: Beat sends no heartbeats, so only the worker advertises its address.
WORKER_OPTIONS = ["prom_advertise", *BEAT_OPTIONS]


def _option_names(app: Celery, command: str = "worker") -> list[str]:
    return [option.name for option in app.user_options[command]]


def test_install_adds_the_steps_and_the_worker_and_beat_options() -> None:
    app = Celery("cptest_install", set_as_current=False)

    install(app)

    assert PrometheusServer in app.steps["worker"]
    assert EmbeddedBeat in app.steps["worker"]
    assert TaskEventTap in app.steps["consumer"]
    assert sorted(_option_names(app)) == WORKER_OPTIONS
    assert sorted(_option_names(app, "beat")) == BEAT_OPTIONS


def _receivers() -> tuple[int, int, int]:
    return (
        len(signals.before_task_publish.receivers),
        len(signals.after_task_publish.receivers),
        len(signals.beat_init.receivers),
    )


def test_installing_twice_changes_nothing() -> None:
    app = Celery("cptest_install_twice", set_as_current=False)
    install(app)
    steps = {kind: set(app.steps[kind]) for kind in ("worker", "consumer")}
    receivers = _receivers()

    install(app)

    assert {kind: set(app.steps[kind]) for kind in ("worker", "consumer")} == steps
    assert sorted(_option_names(app)) == WORKER_OPTIONS
    assert sorted(_option_names(app, "beat")) == BEAT_OPTIONS
    assert _receivers() == receivers
