"""The process's rule registry: the built-in rule versions plus entry-point plugins."""

from __future__ import annotations

from rules import builtin
from rules.base import Registry

_DEFAULT: Registry | None = None


def builtin_registry() -> Registry:
    """A fresh registry holding the built-in rule versions of docs/semantics.md §5 and §8."""
    reg = Registry()
    for rule in builtin.RULES:
        reg.register(rule)
    return reg


def default_registry() -> Registry:
    """Built-in rules plus entry-point plugins, loaded once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        reg = builtin_registry()
        reg.load_entry_points()
        _DEFAULT = reg
    return _DEFAULT


def reset_default_registry() -> None:
    """Forget the process's registry; the next :func:`default_registry` loads it again."""
    global _DEFAULT
    _DEFAULT = None


def swap_default_registry(registry: Registry | None) -> Registry | None:
    """Make ``registry`` the process's registry; returns the previous one (None: not loaded)."""
    global _DEFAULT
    previous, _DEFAULT = _DEFAULT, registry
    return previous
