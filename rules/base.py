"""Rule plugin contract, registry, rulesets and fingerprints.

A rule is one class in one module: ``name``, ``version``, ``layer``
(``silver``|``gold``), a frozen pydantic ``Params`` and a pure ``apply``.
Rules never do I/O. The engine calls each rule in its pipeline *slot*, which is
the rule's name (``validate``, ``dedup``, ``plan_limits``, ``burst_allowance``,
``abuse``); a third-party plugin provides a new version of a slot.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from importlib import metadata
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from engine.errors import ConfigError, RuleError

Layer = Literal["silver", "gold"]

#: Pipeline slots in evaluation order, with the layer each one belongs to.
SLOTS: dict[str, Layer] = {
    "validate": "silver",
    "dedup": "silver",
    "plan_limits": "gold",
    "burst_allowance": "gold",
    "abuse": "gold",
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


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in override.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


class Registry:
    """Explicit registry of rule classes keyed by (name, version)."""

    def __init__(self) -> None:
        self._rules: dict[tuple[str, int], type[Rule]] = {}

    def register(self, rule: type[Rule]) -> type[Rule]:
        for attr in ("name", "version", "layer", "Params"):
            if not hasattr(rule, attr):
                raise RuleError(f"rule class {rule.__qualname__} lacks '{attr}'", rule=rule.__qualname__)
        if rule.name in SLOTS and SLOTS[rule.name] != rule.layer:
            raise RuleError(
                f"rule {rule.name}@{rule.version} declares layer {rule.layer!r}, "
                f"but the {rule.name!r} slot is {SLOTS[rule.name]!r}",
                rule=rule.name,
            )
        if rule.name not in SLOTS:
            raise RuleError(
                f"rule {rule.name}@{rule.version} has no pipeline slot; "
                f"a rule's name must be one of {', '.join(SLOTS)}",
                rule=rule.name,
            )
        key = (rule.name, int(rule.version))
        if key in self._rules and self._rules[key] is not rule:
            raise RuleError(
                f"duplicate rule {rule.name}@{rule.version}: "
                f"{self._rules[key].__module__} and {rule.__module__}",
                rule=rule.name,
                version=rule.version,
            )
        self._rules[key] = rule
        return rule

    def get(self, name: str, version: int) -> type[Rule]:
        try:
            return self._rules[(name, int(version))]
        except KeyError:
            known = ", ".join(f"{n}@{v}" for n, v in sorted(self._rules)) or "none"
            raise RuleError(f"unknown rule {name}@{version} (known: {known})", rule=name) from None

    def versions(self) -> list[tuple[str, int]]:
        return sorted(self._rules)

    def load_entry_points(self) -> None:
        """Register third-party rules from the ``medallion_replay.rules`` group."""
        for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
            try:
                obj = ep.load()
            except Exception as exc:  # a broken plugin must say which one it is
                raise RuleError(f"cannot load rule plugin {ep.name!r} ({ep.value}): {exc}") from exc
            items: Iterable[Any] = obj if isinstance(obj, (list, tuple)) else [obj]
            for rule in items:
                self.register(rule)


def builtin_registry() -> Registry:
    from rules import builtin

    reg = Registry()
    for rule in builtin.RULES:
        reg.register(rule)
    return reg


_DEFAULT: Registry | None = None


def default_registry() -> Registry:
    """Built-in rules plus entry-point plugins, loaded once per process."""
    global _DEFAULT
    if _DEFAULT is None:
        reg = builtin_registry()
        reg.load_entry_points()
        _DEFAULT = reg
    return _DEFAULT


def reset_default_registry() -> None:
    global _DEFAULT
    _DEFAULT = None


class RuleRef(BaseModel):
    """A rule version with its effective parameters (picklable, hashable)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    version: int
    params: dict[str, Any] = {}

    @property
    def key(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def fingerprint(self) -> str:
        payload = canonical_json({"name": self.name, "version": self.version, "params": self.params})
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def rule(self, registry: Registry | None = None) -> type[Rule]:
        return (registry or default_registry()).get(self.name, self.version)

    def typed_params(self, registry: Registry | None = None) -> RuleParams:
        cls = self.rule(registry)
        return cls.Params.model_validate(self.params)

    @property
    def layer(self) -> Layer:
        return SLOTS[self.name]


def make_ref(name: str, version: int, overrides: Mapping[str, Any] | None = None,
             registry: Registry | None = None) -> RuleRef:
    """Resolve a rule version and merge parameter overrides into its defaults."""
    cls = (registry or default_registry()).get(name, version)
    defaults = cls.Params().model_dump(mode="json")
    merged = _deep_merge(defaults, overrides or {})
    try:
        params = cls.Params.model_validate(merged)
    except ValidationError as exc:
        first = exc.errors()[0]
        loc = ".".join(str(p) for p in first["loc"])
        raise ConfigError(
            f"invalid parameter for {name}@{version}: {loc}: {first['msg']}", rule=name
        ) from None
    return RuleRef(name=name, version=version, params=params.model_dump(mode="json"))


class Ruleset(BaseModel):
    """A named set of rule versions with parameters; one rule per slot."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str
    rules: tuple[RuleRef, ...]

    def model_post_init(self, __context: Any) -> None:
        names = [r.name for r in self.rules]
        dup = {n for n in names if names.count(n) > 1}
        if dup:
            raise ConfigError(f"ruleset {self.name!r} names rule(s) twice: {', '.join(sorted(dup))}")
        missing = [s for s in REQUIRED_SLOTS if s not in names]
        if missing:
            raise ConfigError(
                f"ruleset {self.name!r} lacks required rule(s): {', '.join(missing)}"
            )

    @property
    def fingerprint(self) -> str:
        """Stable hash of the set of (rule, version, params); the name is not part of it."""
        items = sorted(r.fingerprint for r in self.rules)
        return hashlib.sha256(canonical_json(items).encode()).hexdigest()[:16]

    def get(self, slot: str) -> RuleRef | None:
        for r in self.rules:
            if r.name == slot:
                return r
        return None

    def layer_fingerprint(self, layer: Layer) -> str:
        items = sorted(r.fingerprint for r in self.rules if r.layer == layer)
        return hashlib.sha256(canonical_json(items).encode()).hexdigest()[:16]

    def describe(self) -> list[dict[str, Any]]:
        return [
            {"name": r.name, "version": r.version, "layer": r.layer, "fingerprint": r.fingerprint}
            for r in sorted(self.rules, key=lambda r: list(SLOTS).index(r.name))
        ]

    def with_rule(self, name: str, version: int, overrides: Mapping[str, Any] | None = None,
                  new_name: str | None = None) -> Ruleset:
        """A copy with one slot replaced (the Python API for experiments)."""
        rules = [r for r in self.rules if r.name != name]
        rules.append(make_ref(name, version, overrides))
        return Ruleset(name=new_name or f"{self.name}+{name}@{version}", rules=tuple(rules))
