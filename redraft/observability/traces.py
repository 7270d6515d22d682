"""OpenTelemetry traces: off unless ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or ``..._TRACES_ENDPOINT``) is set.

With it set and the SDK installed (``pip install 'redraft[otel]'``), ``setup_tracing`` installs a global
``TracerProvider`` that batches spans to the OTLP endpoint (HTTP/protobuf; the exporter reads the standard
``OTEL_EXPORTER_OTLP_*`` variables, ``OTEL_SERVICE_NAME`` and ``OTEL_RESOURCE_ATTRIBUTES``). Then:

* FastMCP's own span per MCP request (``tools/call <tool>``: a SERVER span, with the client's trace context);
* a span per graph step (``step <node>``), a child of the tool call (or of the background run's worker);
* a span per model call (``chat <model>``, CLIENT), a child of its step, with the OpenTelemetry GenAI semantic
  conventions: ``gen_ai.operation.name``, ``gen_ai.provider.name``, ``gen_ai.request.model``,
  ``gen_ai.request.temperature``/``top_p``/``max_tokens``/``seed``, ``gen_ai.response.model``,
  ``gen_ai.response.finish_reasons``, ``gen_ai.usage.input_tokens``, ``gen_ai.usage.output_tokens``,
  ``server.address``/``server.port`` and ``error.type``. Prompts and replies are never recorded.

Off, every hook checks the module flag ``ENABLED`` and does nothing else.
"""

from __future__ import annotations

import logging
import os
from typing import Any

log = logging.getLogger("redraft.observability")

ENABLED = False  # read by the hooks on every step and model call: a plain module attribute, nothing else
_tracer: Any = None

ENDPOINT_VARIABLES = ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")


def requested() -> bool:
    """Whether the environment asks for traces (an OTLP endpoint is set and ``OTEL_SDK_DISABLED`` is not true)."""
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return any(os.environ.get(name, "").strip() for name in ENDPOINT_VARIABLES)


def setup_tracing(service_version: str = "") -> bool:
    """Install the OTLP exporter when the environment asks for traces; whether tracing is on. Without the SDK it
    logs how to install it and stays off: the server runs either way."""
    if ENABLED or not requested():
        return ENABLED
    try:
        from opentelemetry import trace
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError:
        log.warning(
            "OTEL_EXPORTER_OTLP_ENDPOINT is set but the OpenTelemetry SDK is not installed: traces stay off "
            "(install redraft[otel])"
        )
        return False
    resource = Resource.create(
        {SERVICE_NAME: os.environ.get("OTEL_SERVICE_NAME") or "redraft", SERVICE_VERSION: service_version}
    )
    provider = TracerProvider(resource=resource)  # flushed and shut down at exit (shutdown_on_exit)
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    trace.set_tracer_provider(provider)
    enable(provider)
    log.info("OpenTelemetry traces on: exporting over OTLP/HTTP")
    return True


def enable(provider: Any = None) -> None:
    """Turn redraft's spans on with ``provider`` (default: the global one). Tests pass an SDK provider with an
    in-memory exporter."""
    global ENABLED, _tracer
    from opentelemetry import trace

    _tracer = (provider or trace.get_tracer_provider()).get_tracer("redraft")
    ENABLED = True


def disable() -> None:
    global ENABLED, _tracer
    ENABLED, _tracer = False, None


def start_span(name: str, attributes: dict[str, Any], client: bool = False) -> tuple[Any, Any]:
    """Start a span and make it current; ``(span, token)`` for ``end_span``. Call only when ``ENABLED``."""
    from opentelemetry import context, trace

    kind = trace.SpanKind.CLIENT if client else trace.SpanKind.INTERNAL
    span = _tracer.start_span(name, kind=kind, attributes={k: v for k, v in attributes.items() if v is not None})
    token = context.attach(trace.set_span_in_context(span))
    return span, token


def end_span(span: Any, token: Any, error: BaseException | None = None, error_type: str | None = None) -> None:
    from opentelemetry import context, trace

    try:
        if error is not None and error_type is not None:
            span.set_attribute("error.type", error_type)
            span.set_status(trace.Status(trace.StatusCode.ERROR, error_type))
            span.record_exception(error)
        span.end()
    finally:
        context.detach(token)
