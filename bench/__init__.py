"""Benchmarks (scripts run by hand; see README.md). A package so workers can load ``bench.bench_handlers``."""
