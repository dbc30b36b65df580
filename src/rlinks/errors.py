"""One error hierarchy: every error a user can meet says what to do next."""

from __future__ import annotations


class RlinksError(Exception):
    """Base of every error rlinks raises on purpose (the CLI prints it, exit 2)."""

    exit_code = 2


class ConfigError(RlinksError):
    """A flag, setting or data folder is not usable as given."""


class StaleEpochError(RlinksError):
    """An apply carried an epoch older than the partition's current one.

    Another aggregator took the partition; this one must stop.
    """

    exit_code = 3

    def __init__(self, partition: int, epoch: int, current: int) -> None:
        super().__init__(
            f"partition {partition}: this aggregator holds epoch {epoch} but the store "
            f"is at epoch {current}: another aggregator took over the partition; "
            "stopping without writing (nothing was counted twice)"
        )
        self.partition = partition
        self.epoch = epoch
        self.current = current


class WatermarkMismatchError(RlinksError):
    """A batch does not start at the partition's current watermark."""

    def __init__(self, partition: int, start: int, end: int, watermark: int) -> None:
        if end <= watermark:
            why = "it was already applied (a replay); nothing changed"
        else:
            why = "it would skip or recount hits; re-read from the watermark"
        super().__init__(
            f"partition {partition}: batch ({start}, {end}] does not start at the "
            f"watermark {watermark}: {why}"
        )
        self.partition = partition
        self.start = start
        self.end = end
        self.watermark = watermark

    @property
    def already_applied(self) -> bool:
        return self.end <= self.watermark


class LogGapError(RlinksError):
    """The log no longer holds hits right after the watermark (trimmed too far)."""


class InputChangedError(RlinksError):
    """The seed `aggregate` input was truncated or replaced since the last run."""
