"""Operating redraft: health and readiness checks, Prometheus metrics, structured logs and OpenTelemetry traces.

One package that ``server/``, ``graph/`` and ``nodes/`` may all import (it imports none of them), so the data still
flows one way. Each concern has its own module:

* ``metrics``: the Prometheus metrics (``prometheus-client``) and the hooks that move them;
* ``logs``: text or JSON log lines (``REDRAFT_LOG_FORMAT``) with the current session, run and node;
* ``traces``: OpenTelemetry spans for graph steps and model calls (GenAI conventions), off unless
  ``OTEL_EXPORTER_OTLP_ENDPOINT`` is set;
* ``steps``: the one wrapper every graph node runs in (metrics, span and log context of a step);
* ``health``: the ``/readyz`` checks (database, migrations, Redis, draining), each timed and bounded.

The HTTP routes that serve these live in ``server/ops.py``.
"""
