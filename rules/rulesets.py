"""Rulesets by built-in name or from a TOML file (SPEC section 7)."""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any

from engine.errors import ConfigError
from rules.base import Registry, RuleRef, Ruleset, default_registry, make_ref
from rules.builtin import RULESETS


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
    """A built-in name (``2026-01``), a TOML file path, or a Ruleset as is."""
    if isinstance(spec, Ruleset):
        return spec
    registry = registry or default_registry()
    text = str(spec)
    if text in RULESETS:
        return builtin_ruleset(text, registry)
    path = Path(text)
    if not path.exists():
        raise ConfigError(
            f"ruleset {text!r} is neither a built-in ({', '.join(RULESETS)}) nor an existing TOML file"
        )
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"cannot read ruleset file {path}: {exc}") from None
    return ruleset_from_mapping(path.stem, doc, registry, source=str(path))
