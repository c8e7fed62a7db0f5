"""The CI matrix stays true: the README's table, the classifiers, the brokers, the marker."""

from __future__ import annotations

import configparser
from pathlib import Path

import amqp
import pytest
import redis

from tests.conftest import MARKED_PATHS, TESTS
from tests.support import AMQP_HOST, REDIS_HOST, REDIS_PORT
from tools.ci_matrix import (
    LOWEST,
    README,
    SELECTIONS,
    SETUP_CFG,
    current_table,
    load,
    lower_bounds,
    render,
)

MATRIX = load()


def test_the_readme_table_matches_the_matrix() -> None:
    assert current_table(README.read_text()) == render(MATRIX), (
        "README.md's supported-versions table is stale: run python -m tools.ci_matrix table --write"
    )


def test_the_classifiers_name_exactly_the_pythons_ci_tests() -> None:
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    classifiers = config["metadata"]["classifiers"].splitlines()
    declared = {
        line.rsplit(" :: ", 1)[1]
        for line in classifiers
        if line.startswith("Programming Language :: Python :: 3.")
    }
    tested = {leg.python for leg in MATRIX.legs}

    assert declared == tested
    assert config["options"]["python_requires"] == f">={min(tested, key=_as_numbers)}"


def _as_numbers(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


def test_the_lowest_leg_pins_every_install_requirement_at_its_bound() -> None:
    (lowest,) = [leg for leg in MATRIX.legs if leg.pins == (LOWEST,)]

    assert lowest.constraints()[:3] == ["celery==5.3", "kombu==5.3", "redis==5.0"]
    config = configparser.ConfigParser()
    config.read(SETUP_CFG)
    assert len(lowest.constraints()) == len(config["options"]["install_requires"].split())
    assert lowest.versions()["celery"] == "5.3.0"


def test_a_requirement_without_a_lower_bound_is_refused(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    setup_cfg = tmp_path / "setup.cfg"
    setup_cfg.write_text("[options]\ninstall_requires =\n    celery>=5.3\n    kombu<6\n")
    monkeypatch.setattr("tools.ci_matrix.SETUP_CFG", setup_cfg)

    with pytest.raises(ValueError, match="'kombu<6' is not name>=version"):
        lower_bounds()


@pytest.mark.parametrize(
    "line",
    [
        "leg celery-5.4 3.12 some_marker celery==5.4.*",  # a selection the README cannot name
        "leg celery-5.4 3.12 all",  # no pins
        "brokers redis 7.0 rabbitmq",
        "legs celery-5.4 3.12 all celery==5.4.*",
    ],
)
def test_lines_the_matrix_cannot_read_are_refused(line: str) -> None:
    with pytest.raises(ValueError, match="cannot read"):
        load(f"# a comment\n\n{line}\n")


def test_the_last_leg_runs_the_whole_suite_so_ci_closes_on_its_count() -> None:
    assert MATRIX.legs[-1].tests == "all"


def test_the_selections_name_registered_markers(pytestconfig: pytest.Config) -> None:
    registered = {line.split(":", 1)[0] for line in pytestconfig.getini("markers")}
    named = {word for expression, _ in SELECTIONS.values() for word in expression.split()}

    assert named - {"not", "and", "or"} <= registered


def test_every_marked_path_exists() -> None:
    # A renamed file would silently leave the legs that select it.
    paths = [path for paths in MARKED_PATHS.values() for path in paths]
    assert [path for path in paths if not (TESTS / path).exists()] == []


def test_the_brokers_are_the_versions_the_matrix_names() -> None:
    server = redis.Redis(host=REDIS_HOST, port=REDIS_PORT).info("server")
    connection = amqp.Connection(AMQP_HOST, userid="guest", password="guest")
    connection.connect()
    try:
        rabbitmq = connection.server_properties["version"]
    finally:
        connection.close()

    assert {
        "redis": _minor(str(server["redis_version"])),
        "rabbitmq": _minor(str(rabbitmq)),
    } == MATRIX.brokers


def _minor(version: str) -> str:
    return ".".join(version.split(".")[:2])
