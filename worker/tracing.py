"""Optional OpenTelemetry traces: a span per handler call, linked to the GetRecords spans its records came from.

Tracing is on when ``opentelemetry-api`` is installed (``pip install 'shardlease[otel]'``) and a tracer
provider is configured when the worker starts (by the host application, or by
``opentelemetry-instrument`` and the ``OTEL_*`` variables).  It is decided once, by
:func:`from_environment`: without the package or without a provider the worker holds ``None`` and
each call site costs one ``is None`` check.

Spans (instrumentation scope ``shardlease``):

``GetRecords`` (kind CLIENT)
    one per GetRecords call of a shard: ``shardlease.shard_id``, ``shardlease.records`` (records returned).
``shardlease.handle`` (kind CONSUMER)
    one per handler call, current while the handler runs (so the handler's own spans are its
    children), linked to the GetRecords spans that read its batch: ``shardlease.shard_id``,
    ``shardlease.batch_size``, ``shardlease.first_sequence_number``, ``shardlease.last_sequence_number``
    and ``shardlease.outcome``: ``ok``; ``partial`` (a partial batch response: records before the first
    failed one were handled); ``failed`` (the call raised, or its response failed the whole batch);
    ``timeout`` (the call raised ``TimeoutError``, or :class:`~worker.handling.aio.HandlerTimeout`: an async call
    cancelled at ``--handler-timeout``).
    A failed or timed-out call records its exception and an ERROR status.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from worker.handling.aio import HandlerTimeout
from worker.handling.lambda_compat import parse_batch_response
from worker.reading.records import Record

log = logging.getLogger("shardlease.tracing")

T = TypeVar("T")

SCOPE = "shardlease"
"""The instrumentation scope (tracer name) of every span."""
OUTCOMES = ("ok", "partial", "failed", "timeout")
"""Values of a handler span's ``shardlease.outcome``."""
_PROVIDER_ENV = "OTEL_PYTHON_TRACER_PROVIDER"
"""opentelemetry.environment_variables.OTEL_PYTHON_TRACER_PROVIDER: a provider to load by name."""
MAX_LINKS = 32
"""At most this many GetRecords spans are linked from one handler span (a batch spans up to 10 pages)."""


class Tracing:
    """Makes the worker's spans with one OpenTelemetry tracer.  Thread-safe (the tracer is)."""

    def __init__(self, tracer: Any) -> None:
        from opentelemetry import trace

        self._tracer = tracer
        self._trace = trace

    @classmethod
    def for_provider(cls, provider: Any) -> Tracing:
        """Spans of ``provider`` (an ``opentelemetry.trace.TracerProvider``)."""
        from worker import __version__

        return cls(provider.get_tracer(SCOPE, __version__))

    def get_records(self, shard_id: str, read: Callable[[], T], links: list[Any]) -> T:
        """``read()`` (one GetRecords call of ``shard_id``) inside a span; a page with records appends the
        span's context to ``links``, for the handler span of the batch they join."""
        trace = self._trace
        with self._tracer.start_as_current_span("GetRecords", kind=trace.SpanKind.CLIENT,
                                                attributes={"shardlease.shard_id": shard_id}) as span:
            page = read()
            records = getattr(page, "records", ())
            span.set_attribute("shardlease.records", len(records))
            if records and len(links) < MAX_LINKS:
                links.append(span.get_span_context())
        return page

    def handler_call(self, shard_id: str, call: Callable[[Sequence[Record]], Any], links: Sequence[Any],
                     ) -> Callable[[Sequence[Record]], Any]:
        """``call`` (the handler on one sub-batch of ``shard_id``), each call inside a handler span."""
        trace = self._trace
        tracer = self._tracer
        span_links = [trace.Link(context) for context in links]

        def traced(batch: Sequence[Record]) -> Any:
            attributes: dict[str, Any] = {"shardlease.shard_id": shard_id, "shardlease.batch_size": len(batch)}
            if batch:
                attributes["shardlease.first_sequence_number"] = batch[0].sequence_number
                attributes["shardlease.last_sequence_number"] = batch[-1].sequence_number
            with tracer.start_as_current_span("shardlease.handle", kind=trace.SpanKind.CONSUMER, links=span_links,
                                              attributes=attributes, record_exception=False,
                                              set_status_on_exception=False) as span:
                try:
                    response = call(batch)
                except BaseException as exc:
                    timed_out = isinstance(exc, (TimeoutError, HandlerTimeout))
                    span.set_attribute("shardlease.outcome", "timeout" if timed_out else "failed")
                    span.record_exception(exc)
                    span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"[:200]))
                    raise
                span.set_attribute("shardlease.outcome", _outcome(response, batch))
                return response

        return traced


def _outcome(response: Any, batch: Sequence[Record]) -> str:
    """``ok``, ``partial`` or ``failed`` for a call that returned ``response``."""
    try:
        failed_index = parse_batch_response(response, batch).failed_index
    except Exception:  # the delivery judges the response; the span only reports
        return "failed"
    if failed_index is None:
        return "ok"
    return "partial" if failed_index > 0 else "failed"


def from_environment() -> Tracing | None:
    """Tracing with the global tracer provider, or None when opentelemetry-api is not installed or no provider
    is configured (then nothing is traced, at no cost).  Called once per worker, as it starts.

    A provider is configured by code that imported ``opentelemetry.trace`` (the application, its handler's
    module, ``opentelemetry-instrument``) or named by ``OTEL_PYTHON_TRACER_PROVIDER`` (which
    ``get_tracer_provider`` loads): with neither, there is none, and the module (~12 ms) is not imported."""
    if "opentelemetry.trace" not in sys.modules and _PROVIDER_ENV not in os.environ:
        log.debug("no tracer provider is configured (opentelemetry.trace not imported, %s not set): no spans",
                  _PROVIDER_ENV)
        return None
    try:
        from opentelemetry import trace
    except ImportError:
        return None
    provider = trace.get_tracer_provider()
    if isinstance(provider, (trace.ProxyTracerProvider, trace.NoOpTracerProvider)):
        log.debug("opentelemetry-api is installed but no tracer provider is configured: no spans")
        return None
    return Tracing.for_provider(provider)
