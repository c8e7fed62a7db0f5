"""The broker feed: ``celery-prom exporter``, which counts what Celery's events say.

``service.Exporter`` puts it together: ``receiver`` keeps an event ``streams`` connection up,
``decoding`` and ``router`` send each event to the recorder or to worker ``liveness``,
``losses`` estimates events sent while disconnected, ``queues`` sizes the broker's queues at
scrape time, ``broker`` says whether the broker is reachable, and ``collectors`` times the
scrape-time collectors. It builds on the core (``celery_prom.endpoint`` and below) and never
on the worker feed (``celery_prom.bootsteps``).
"""
