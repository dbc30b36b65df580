"""The pipeline's one error: a step failed, and the message says which and why."""

from __future__ import annotations


class BenchError(Exception):
    """A benchmark step failed; the pipeline stops and prints this message."""


class AbortRun(BenchError):
    """The abort rule fired: too many errors at low concurrency."""
