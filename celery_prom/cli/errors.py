"""Errors as the command line shows them: one line, no traceback.

``OptionError`` lives in the core (``celery_prom.config``), where the worker's step raises it
too; the command line imports it from here.
"""

from __future__ import annotations

from celery_prom.config import OptionError

__all__ = ["OptionError"]
