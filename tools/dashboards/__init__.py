"""The Grafana dashboards of monitoring/dashboards/, built from code.

``python -m tools.dashboards`` writes them; ``python -m tools.dashboards --check`` fails when
the committed files differ from what the code builds (the test suite runs the same check).
"""
