"""One error hierarchy for the whole engine.

Every error is a :class:`ReplayError`. Errors carry data as keyword fields, say
whether retrying can help (``retryable``), whether they are the user's mistake
(``usage`` -> exit code 2) and survive pickling across Ray task boundaries.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ReplayError(Exception):
    """Root of every error the engine raises on purpose."""

    retryable: ClassVar[bool] = False
    usage: ClassVar[bool] = False

    def __init__(self, message: str, **data: Any) -> None:
        super().__init__(message)
        self.message = message
        self.data = data

    def __reduce__(self) -> tuple[Any, ...]:
        # Exceptions with keyword data do not round-trip through pickle by default.
        return (_rebuild, (type(self), self.message, self.data))

    @property
    def exit_code(self) -> int:
        return 2 if self.usage else 1

    def __str__(self) -> str:
        return self.message


def _rebuild(cls: type[ReplayError], message: str, data: dict[str, Any]) -> ReplayError:
    return cls(message, **data)


class UsageError(ReplayError):
    """A bad flag, argument or path given by the user (exit code 2)."""

    usage = True


class ConfigError(UsageError):
    """An invalid ruleset file, config file or parameter override."""


class RuleError(ReplayError):
    """A rule registry problem: unknown rule, duplicate registration, bad plugin."""

    usage = True


class InputError(ReplayError):
    """Input data that cannot be imported (missing file, wrong Parquet columns)."""

    usage = True


class LakeError(ReplayError):
    """A Delta table is missing, unreadable or inconsistent."""


class CommitConflictError(LakeError):
    """Another writer committed first; retrying with fresh state can help."""

    retryable = True


class ShardError(ReplayError):
    """A shard worker failed; transient worker failures are retryable."""

    retryable = True
