"""Rulesets and their fingerprints: built-in names, the shipped TOML files, user TOML files (docs/semantics.md §7).

A ruleset is a set of (rule, version, parameters), one rule per slot; its
fingerprint is a stable hash of that set (the name is not part of it).
Built-in names: the rulesets of :data:`rules.builtin.RULESETS` and every
``rules/rulesets/<name>.toml`` shipped with the package.
"""

from __future__ import annotations

import hashlib
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from engine.contract.errors import ConfigError
from rules.base import REQUIRED_SLOTS, SLOTS, Layer, Registry, Rule, RuleParams, canonical_json
from rules.builtin import RULESETS
from rules.registry import default_registry

#: The TOML rulesets shipped with the package; each is a built-in name (its file name).
SHIPPED_DIR = Path(__file__).resolve().parent / "rulesets"


def _deep_merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, val in override.items():
        if isinstance(val, Mapping) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], val)
        else:
            out[key] = val
    return out


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


def builtin_names() -> list[str]:
    """Every ruleset name ``load_ruleset`` resolves without a path."""
    return [*RULESETS, *sorted(p.stem for p in SHIPPED_DIR.glob("*.toml") if p.stem not in RULESETS)]


def builtin_ruleset(name: str, registry: Registry | None = None) -> Ruleset:
    spec = RULESETS[name]
    return Ruleset(name=name, rules=tuple(make_ref(n, v, None, registry) for n, v in spec.items()))


def ruleset_from_mapping(name: str, doc: dict[str, Any], registry: Registry | None = None,
                         source: str = "ruleset") -> Ruleset:
    unknown = set(doc) - {"name", "rules", "params"}
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {', '.join(sorted(unknown))}; "
                          "allowed: name, [rules], [params.<rule>]")
    rules = doc.get("rules")
    if not isinstance(rules, dict) or not rules:
        raise ConfigError(f"{source}: a [rules] table mapping rule name = version is required")
    params = doc.get("params", {})
    if not isinstance(params, dict):
        raise ConfigError(f"{source}: [params] must be a table of [params.<rule>] tables")
    stray = set(params) - set(rules)
    if stray:
        raise ConfigError(f"{source}: [params.{sorted(stray)[0]}] is for a rule not in [rules]")
    refs: list[RuleRef] = []
    for rule_name, version in rules.items():
        if isinstance(version, bool) or not isinstance(version, int):
            raise ConfigError(f"{source}: rules.{rule_name} must be an integer version, got {version!r}")
        overrides = params.get(rule_name, {})
        if not isinstance(overrides, dict):
            raise ConfigError(f"{source}: [params.{rule_name}] must be a table")
        refs.append(make_ref(rule_name, version, overrides, registry))
    return Ruleset(name=str(doc.get("name") or name), rules=tuple(refs))


def load_ruleset(spec: str | Path | Ruleset, registry: Registry | None = None) -> Ruleset:
    """A built-in name (``2026-01``, ``free-100``), a TOML file path, or a Ruleset as is."""
    if isinstance(spec, Ruleset):
        return spec
    registry = registry or default_registry()
    text = str(spec)
    if text in RULESETS:
        return builtin_ruleset(text, registry)
    path = Path(text)
    if not path.exists() and "/" not in text and (SHIPPED_DIR / f"{text}.toml").is_file():
        path = SHIPPED_DIR / f"{text}.toml"
    if not path.exists():
        raise ConfigError(
            f"ruleset {text!r} is neither a built-in ({', '.join(builtin_names())}) "
            "nor an existing TOML file")
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read ruleset file {path}: {exc}") from None
    return ruleset_from_mapping(path.stem, doc, registry, source=str(path))
