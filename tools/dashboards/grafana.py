"""Builders for the parts of Grafana's dashboard JSON model our dashboards use.

Every panel and query reads from the ``${datasource}`` variable, so an imported dashboard
asks for no data source mapping and can be switched between Prometheus servers.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

JSON = dict[str, Any]

SCHEMA_VERSION = 39
DATASOURCE: JSON = {"type": "prometheus", "uid": "${datasource}"}
GRID_COLUMNS = 24


@dataclass(frozen=True)
class Query:
    """One PromQL query of a panel; with ``exemplars``, Grafana also fetches and marks the
    exemplars of the series it selects."""

    expr: str
    legend: str = ""
    exemplars: bool = False


@dataclass(frozen=True)
class Panel:
    """A panel before layout: its JSON without id and position, and its size."""

    body: JSON
    width: int
    height: int


@dataclass
class Grid:
    """Places panels left to right and wraps at Grafana's 24 columns."""

    x: int = 0
    y: int = 0
    line_height: int = 0
    next_id: int = 1
    placed: list[JSON] = field(default_factory=list)

    def add(self, panel: Panel) -> None:
        if self.x + panel.width > GRID_COLUMNS:
            self._new_line()
        position = {"h": panel.height, "w": panel.width, "x": self.x, "y": self.y}
        self.placed.append({"id": self.next_id, "gridPos": position, **panel.body})
        self.next_id += 1
        self.x += panel.width
        self.line_height = max(self.line_height, panel.height)

    def add_row(self, title: str) -> None:
        if self.x:
            self._new_line()
        position = {"h": 1, "w": GRID_COLUMNS, "x": 0, "y": self.y}
        self.placed.append(
            {
                "id": self.next_id,
                "gridPos": position,
                "type": "row",
                "title": title,
                "collapsed": False,
                "panels": [],
            }
        )
        self.next_id += 1
        self.y += 1

    def _new_line(self) -> None:
        self.x = 0
        self.y += self.line_height
        self.line_height = 0


def targets(queries: list[Query], instant: bool = False, table: bool = False) -> list[JSON]:
    built = []
    for index, query in enumerate(queries):
        target: JSON = {
            "datasource": DATASOURCE,
            "refId": chr(ord("A") + index),
            "expr": query.expr,
            "legendFormat": query.legend or "__auto",
            "range": not instant,
            "instant": instant,
        }
        if table:
            target["format"] = "table"
        if query.exemplars:
            target["exemplar"] = True
        built.append(target)
    return built


def _panel(
    kind: str,
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str,
    instant: bool = False,
    table: bool = False,
) -> JSON:
    return {
        "type": kind,
        "title": title,
        "description": description,
        "datasource": DATASOURCE,
        "targets": targets(queries, instant=instant, table=table),
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
    }


def timeseries(
    title: str,
    description: str,
    queries: list[Query],
    *,
    unit: str = "short",
    width: int = 12,
    height: int = 8,
) -> Panel:
    body = _panel("timeseries", title, description, queries, unit=unit)
    body["fieldConfig"]["defaults"]["custom"] = {"fillOpacity": 10, "showPoints": "never"}
    body["options"] = {
        "legend": {"displayMode": "table", "placement": "bottom", "calcs": ["mean", "max"]},
        "tooltip": {"mode": "multi", "sort": "desc"},
    }
    return Panel(body, width, height)


def stat(
    title: str,
    description: str,
    query: Query,
    *,
    unit: str = "short",
    width: int = 3,
    height: int = 4,
    thresholds: list[tuple[float | None, str]] | None = None,
) -> Panel:
    """A single number; ``thresholds`` are (from value, colour) steps, the first from None."""
    body = _panel("stat", title, description, [query], unit=unit)
    steps = thresholds or [(None, "green")]
    body["fieldConfig"]["defaults"]["thresholds"] = {
        "mode": "absolute",
        "steps": [{"value": value, "color": colour} for value, colour in steps],
    }
    body["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "colorMode": "value",
        "graphMode": "area",
        "textMode": "value",
    }
    return Panel(body, width, height)


def gauge(
    title: str,
    description: str,
    query: Query,
    *,
    unit: str,
    maximum: float,
    thresholds: list[tuple[float | None, str]],
    width: int = 3,
    height: int = 4,
) -> Panel:
    body = stat(
        title, description, query, unit=unit, width=width, height=height, thresholds=thresholds
    ).body
    body["type"] = "gauge"
    body["fieldConfig"]["defaults"].update({"min": 0, "max": maximum})
    body["options"] = {
        "reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
        "showThresholdMarkers": True,
    }
    return Panel(body, width, height)


def table(
    title: str,
    description: str,
    queries: list[Query],
    *,
    columns: dict[str, str],
    hidden: tuple[str, ...] = ("Time",),
    width: int = 12,
    height: int = 8,
    links: dict[str, str] | None = None,
) -> Panel:
    """Instant queries merged into one table; ``columns`` renames fields ("Value #A" ...).

    ``links`` maps a column to a URL template (Grafana data link) for drill-downs.
    """
    body = _panel("table", title, description, queries, unit="short", instant=True, table=True)
    body["transformations"] = [
        {"id": "merge", "options": {}},
        {
            "id": "organize",
            "options": {
                "excludeByName": dict.fromkeys(hidden, True),
                "renameByName": columns,
            },
        },
    ]
    body["fieldConfig"]["overrides"] = [
        {
            "matcher": {"id": "byName", "options": column},
            "properties": [{"id": "links", "value": [{"title": f"Open {column}", "url": url}]}],
        }
        for column, url in (links or {}).items()
    ]
    body["options"] = {"showHeader": True, "footer": {"show": False}}
    return Panel(body, width, height)


def heatmap(
    title: str, description: str, query: Query, *, unit: str, width: int = 12, height: int = 8
) -> Panel:
    """Histogram buckets over time (the query must return per-``le`` increases)."""
    body = _panel("heatmap", title, description, [query], unit=unit)
    body["targets"][0].update({"format": "heatmap", "legendFormat": "{{le}}"})
    body["options"] = {
        "calculate": False,
        "yAxis": {"unit": unit},
        "color": {"mode": "scheme", "scheme": "Oranges"},
        "cellGap": 1,
    }
    return Panel(body, width, height)


def datasource_variable() -> JSON:
    return {
        "name": "datasource",
        "label": "Data source",
        "type": "datasource",
        "query": "prometheus",
        "current": {},
        "hide": 0,
        "refresh": 1,
        "regex": "",
        "options": [],
    }


def query_variable(name: str, label: str, query: str) -> JSON:
    """A multi-value variable filled by ``label_values(...)``, "All" matching everything."""
    return {
        "name": name,
        "label": label,
        "type": "query",
        "datasource": DATASOURCE,
        "query": query,
        "definition": query,
        "refresh": 2,
        "sort": 1,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {},
        "hide": 0,
        "regex": "",
        "options": [],
    }


def dashboard(uid: str, title: str, description: str, variables: list[JSON], grid: Grid) -> JSON:
    return {
        "uid": uid,
        "title": title,
        "description": description,
        "tags": ["celery", "celery-prom"],
        "editable": True,
        "graphTooltip": 1,
        "schemaVersion": SCHEMA_VERSION,
        "version": 1,
        "time": {"from": "now-3h", "to": "now"},
        "refresh": "30s",
        "timezone": "",
        "templating": {"list": variables},
        "annotations": {"list": []},
        "links": [
            {
                "type": "dashboards",
                "title": "celery-prom",
                "tags": ["celery-prom"],
                "asDropdown": False,
                "includeVars": False,
                "keepTime": True,
            }
        ],
        "panels": grid.placed,
    }
