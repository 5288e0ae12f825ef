"""The rule plugin contract: slots, the ``Rule`` base class, frozen params, the registry type.

A rule is one class in one module: ``name``, ``version``, ``layer``
(``silver``|``gold``), a frozen pydantic ``Params`` and a pure ``apply``.
Rules never do I/O. The engine calls each rule in its pipeline *slot*, which is
the rule's name (``validate``, ``dedup``, ``plan_limits``, ``burst_allowance``,
``abuse``); a third-party plugin provides a new version of a slot. A rule that
fails while applying raises :class:`engine.contract.errors.RuleError`.

This module knows no rule: the built-in list is :mod:`rules.builtin`, the
process's registry :mod:`rules.registry`, rulesets :mod:`rules.ruleset`.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from importlib import metadata
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict

from engine.contract.errors import RegistryError

Layer = Literal["silver", "gold"]

#: Pipeline slots in evaluation order, with the layer each one belongs to.
SLOTS: dict[str, Layer] = {
    "validate": "silver",
    "dedup": "silver",
    "plan_limits": "gold",
    "burst_allowance": "gold",
    "abuse": "gold",
    "region_usage": "gold",
}
REQUIRED_SLOTS = ("validate", "dedup", "plan_limits")
ENTRY_POINT_GROUP = "medallion_replay.rules"


class RuleParams(BaseModel):
    """Base of every rule's parameters: frozen and strict about unknown keys."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class Rule:
    """Base class of rule plugins. Subclasses set the class attributes."""

    name: ClassVar[str]
    version: ClassVar[int]
    layer: ClassVar[Layer]
    Params: ClassVar[type[RuleParams]] = RuleParams
    description: ClassVar[str] = ""


def canonical_json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


class Registry:
    """Explicit registry of rule classes keyed by (name, version)."""

    def __init__(self) -> None:
        self._rules: dict[tuple[str, int], type[Rule]] = {}

    def register(self, rule: type[Rule]) -> type[Rule]:
        for attr in ("name", "version", "layer", "Params"):
            if not hasattr(rule, attr):
                raise RegistryError(f"rule class {rule.__qualname__} lacks '{attr}'", rule=rule.__qualname__)
        if rule.name in SLOTS and SLOTS[rule.name] != rule.layer:
            raise RegistryError(
                f"rule {rule.name}@{rule.version} declares layer {rule.layer!r}, "
                f"but the {rule.name!r} slot is {SLOTS[rule.name]!r}",
                rule=rule.name,
            )
        if rule.name not in SLOTS:
            raise RegistryError(
                f"rule {rule.name}@{rule.version} has no pipeline slot; "
                f"a rule's name must be one of {', '.join(SLOTS)}",
                rule=rule.name,
            )
        key = (rule.name, int(rule.version))
        if key in self._rules and self._rules[key] is not rule:
            raise RegistryError(
                f"duplicate rule {rule.name}@{rule.version}: "
                f"{self._rules[key].__module__} and {rule.__module__}",
                rule=rule.name,
                version=rule.version,
            )
        self._rules[key] = rule
        return rule

    def copy(self) -> Registry:
        """An independent registry with the same rules (tests register into a copy)."""
        reg = Registry()
        reg._rules = dict(self._rules)
        return reg

    def get(self, name: str, version: int) -> type[Rule]:
        try:
            return self._rules[(name, int(version))]
        except KeyError:
            known = ", ".join(f"{n}@{v}" for n, v in sorted(self._rules)) or "none"
            raise RegistryError(f"unknown rule {name}@{version} (known: {known})", rule=name) from None

    def versions(self) -> list[tuple[str, int]]:
        return sorted(self._rules)

    def load_entry_points(self) -> None:
        """Register third-party rules from the ``medallion_replay.rules`` group."""
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must say which one it is
                raise RegistryError(f"cannot load rule plugin {ep.name!r} ({ep.value}): {exc}") from exc
            items: Iterable[Any] = obj if isinstance(obj, (list, tuple)) else [obj]
            for rule in items:
                self.register(rule)
