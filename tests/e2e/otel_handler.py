"""A handler for the metrics and traces end-to-end test: it configures OpenTelemetry's SDK as an application
would (a global tracer provider, set when its module is imported, before the worker builds its deliveries),
exporting each span as one JSON line to $SHARDLEASE_TEST_SPANS, then records like recording_handler."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter, SimpleSpanProcessor

from tests.e2e import recording_handler


def _one_line(span: ReadableSpan) -> str:
    return span.to_json(indent=None) + "\n"


_spans = open(os.environ["SHARDLEASE_TEST_SPANS"], "a", buffering=1)  # noqa: SIM115 (the process's lifetime)
_provider = TracerProvider()
_provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter(out=_spans, formatter=_one_line)))
trace.set_tracer_provider(_provider)


def handle(records: Sequence[Any], ctx: Any) -> None:
    recording_handler.handle(records, ctx)
