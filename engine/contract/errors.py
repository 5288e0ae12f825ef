"""One error hierarchy for the whole engine (and the rules: part of the pure contract).

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
    """A rule plugin failed while applying (raised by the rule itself; exit code 1)."""


class RegistryError(RuleError):
    """A rule registry problem: unknown rule, duplicate registration, bad plugin (exit code 2)."""

    usage = True


class InputError(ReplayError):
    """Input data that cannot be imported (missing file, wrong Parquet columns)."""

    usage = True


class LakeError(ReplayError):
    """A Delta table is missing, unreadable or inconsistent."""


class VersionGoneError(UsageError):
    """A version that a vacuum or an erasure made unreadable was asked for."""


class CommitConflictError(LakeError):
    """Another writer committed first; retrying with fresh state can help."""

    retryable = True


class ShardError(ReplayError):
    """A shard worker failed; transient worker failures are retryable."""

    retryable = True


class TaskError(ReplayError):
    """A shard task raised an unexpected exception (a bug, not a lost worker): retrying the
    same task on the same data would fail the same way."""


class StalePlanError(UsageError):
    """The lake changed between planning and applying (another replay, an append): plan again."""

    retryable = True


class LeaseHeldError(ReplayError):
    """Another writer holds the lake's lease; retry once it has finished."""

    retryable = True


class ChecksFailedError(ReplayError):
    """A replay's output failed the validation gate; it was rolled back."""


class QueryError(UsageError):
    """A query the user wrote does not run (syntax, unknown table or column, missing parameter)."""


class QueryRefusedError(ReplayError):
    """A query ``replay sql`` refuses by policy (exit code 1): anything but one SELECT (COPY,
    CREATE, INSERT, SET, ATTACH, INSTALL, LOAD, EXPORT, PRAGMA..., several statements), or a
    SELECT that reads files or URLs (``read_csv``, ``read_text``...) without
    ``--allow-local-files``. Not a usage error: the SQL is well formed and means what it says,
    the command will not run it (as a permission denied); a query that cannot run at all
    (syntax, unknown table or column) is a :class:`QueryError` (exit code 2)."""
