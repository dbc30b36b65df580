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

    def __init__(self, partition: int, epoch: int, current: int, *, acquired: bool = True) -> None:
        if acquired:
            why = (
                f"this aggregator holds epoch {epoch} but the store is at epoch {current}: "
                "another aggregator took over the partition"
            )
        else:
            why = f"no aggregator ever acquired it, so epoch {epoch} is not valid"
        super().__init__(
            f"partition {partition}: {why}; stopping without writing (nothing was counted twice)"
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


class InvalidRouteError(RlinksError):
    """A route field breaks a rule; `field` names it ("code", "target", "expires_at"...)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field


class RouteNotFoundError(RlinksError):
    """No route has this code (it was never set, or it was deleted)."""

    exit_code = 4

    def __init__(self, code: str) -> None:
        super().__init__(
            f"no route has the code {code!r}: `rlinks links list` shows the codes that exist"
        )
        self.code = code


class KvUnavailableError(RlinksError):
    """The KV did not answer (or a fault was injected into the remote-KV model)."""

    exit_code = 5
