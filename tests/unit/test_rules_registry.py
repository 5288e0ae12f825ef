"""Registry, rulesets, TOML files, fingerprints (golden) and third-party plugins."""

from __future__ import annotations

import pickle
import sys
import textwrap

import pytest
from pydantic import ValidationError

from engine.contract.errors import CommitConflictError, ConfigError, ReplayError, RuleError
from rules.base import Registry, Rule, RuleParams
from rules.registry import builtin_registry, default_registry, reset_default_registry
from rules.ruleset import load_ruleset

# Golden fingerprints: changing one means every recorded replay is seen as stale.
GOLDEN = {"2026-01": "873cc6ff32f28aaf", "2026-02": "ef27fe0e084d801f", "2026-03": "6e05669021edffcf"}


@pytest.mark.parametrize("name", sorted(GOLDEN))
def test_builtin_ruleset_fingerprints_are_pinned(name):
    assert load_ruleset(name).fingerprint == GOLDEN[name]


def test_builtin_rulesets_contents():
    assert {(r.name, r.version) for r in load_ruleset("2026-01").rules} == {
        ("validate", 1), ("dedup", 1), ("plan_limits", 1), ("abuse", 1)}
    assert {(r.name, r.version) for r in load_ruleset("2026-02").rules} == {
        ("validate", 1), ("dedup", 2), ("plan_limits", 2), ("burst_allowance", 1), ("abuse", 1)}


def test_every_spec_rule_version_is_registered():
    reg = builtin_registry()
    assert reg.versions() == [("abuse", 1), ("abuse", 2), ("burst_allowance", 1), ("dedup", 1),
                          ("dedup", 2), ("plan_limits", 1), ("plan_limits", 2), ("region_usage", 1),
                          ("validate", 1)]
    for n, v in reg.versions():
        cls = reg.get(n, v)
        assert cls.layer in ("silver", "gold")
        params = cls.Params()
        for field in type(params).model_fields:
            with pytest.raises(ValidationError):
                setattr(params, field, None)  # frozen


def test_spec_parameters():
    reg = builtin_registry()
    assert reg.get("plan_limits", 2).Params().limits == {"free": 100, "starter": 300,
                                                         "professional": 1000, "enterprise": 5000}
    assert reg.get("burst_allowance", 1).Params().allowances["enterprise"] == 2500
    assert reg.get("abuse", 2).Params().multiplier == 5
    assert reg.get("dedup", 1).Params().horizon_seconds == 600


def test_duplicate_registration_is_an_error():
    reg = builtin_registry()

    class Other(Rule):
        name, version, layer = "dedup", 2, "silver"

        class Params(RuleParams):
            pass

    with pytest.raises(RuleError, match="duplicate rule dedup@2"):
        reg.register(Other)


def test_rule_with_wrong_layer_or_unknown_slot_is_refused():
    class Wrong(Rule):
        name, version, layer = "dedup", 9, "gold"

    with pytest.raises(RuleError, match="slot"):
        Registry().register(Wrong)


def test_toml_ruleset_equals_builtin_fingerprint(tmp_path):
    f = tmp_path / "same.toml"
    f.write_text('[rules]\nvalidate = 1\ndedup = 1\nplan_limits = 1\nabuse = 1\n')
    rs = load_ruleset(f)
    assert rs.name == "same" and rs.fingerprint == GOLDEN["2026-01"]


def test_toml_param_overrides_change_the_fingerprint(tmp_path):
    f = tmp_path / "x.toml"
    f.write_text(textwrap.dedent("""
        name = "free-80"
        [rules]
        validate = 1
        dedup = 1
        plan_limits = 1
        abuse = 1
        [params.plan_limits.limits]
        free = 80
    """))
    rs = load_ruleset(f)
    assert rs.name == "free-80" and rs.fingerprint != GOLDEN["2026-01"]
    assert rs.get("plan_limits").params["limits"]["free"] == 80
    assert rs.get("plan_limits").params["limits"]["starter"] == 300


@pytest.mark.parametrize("body,msg", [
    ("[rules]\nvalidate = 1\n", "lacks required"),
    ("[rules]\nvalidate = 1\ndedup = 7\nplan_limits = 1\n", "unknown rule dedup@7"),
    ("[rules]\nvalidate = 1\ndedup = 1\nplan_limits = 1\n[params.abuse]\nmultiplier = 2\n", "not in \\[rules\\]"),
    ("[rules]\nvalidate = 1\ndedup = 1\nplan_limits = 1\n[params.plan_limits]\nlimits = {free = -1}\n", "invalid parameter"),
    ("[rules]\nvalidate = 1\ndedup = 1\nplan_limits = 1\n[params.dedup]\nbogus = 1\n", "invalid parameter"),
    ("nonsense = [", "cannot read"),
    ("[rules]\nvalidate = '1'\ndedup = 1\nplan_limits = 1\n", "integer version"),
])
def test_bad_ruleset_files_give_clear_errors(tmp_path, body, msg):
    f = tmp_path / "bad.toml"
    f.write_text(body)
    with pytest.raises((ConfigError, RuleError), match=msg):
        load_ruleset(f)


def test_with_rule_builds_experiments_in_python():
    rs = load_ruleset("2026-01").with_rule("plan_limits", 1, {"limits": {"free": 90}})
    assert rs.get("plan_limits").params["limits"]["free"] == 90
    assert rs.fingerprint != GOLDEN["2026-01"]


def test_third_party_rule_via_entry_point(tmp_path, monkeypatch):
    """A tiny installed distribution registers abuse@7 through medallion_replay.rules."""
    pkg = tmp_path / "site"
    (pkg / "mr_plugin").mkdir(parents=True)
    (pkg / "mr_plugin" / "__init__.py").write_text(textwrap.dedent("""
        from rules.base import Rule, RuleParams
        from rules._abuse import abuse_alerts

        class Abuse7(Rule):
            name = "abuse"
            version = 7
            layer = "gold"

            class Params(RuleParams):
                multiplier: float = 1.5

            @staticmethod
            def apply(params, minutes):
                return abuse_alerts(params.multiplier, minutes)
    """))
    dist = pkg / "mr_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: mr-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[medallion_replay.rules]\nabuse7 = mr_plugin:Abuse7\n")
    monkeypatch.syspath_prepend(str(pkg))
    reset_default_registry()
    try:
        reg = default_registry()
        assert reg.get("abuse", 7).Params().multiplier == 1.5
        rs = load_ruleset("2026-01").with_rule("abuse", 7)
        from tests.helpers import T0, event, fold  # noqa: F401

        evs = [event(event_id=str(i)) for i in range(90)]
        from engine.fold.pipeline import Compiled
        from tests.helpers import bronze

        c = Compiled.of(rs)
        valid, _ = c.validate(bronze(evs, ingestion=[T0] * 90))
        silver, _ = c.dedup(valid)
        _, _, alerts = c.gold(silver)
        assert sorted(alerts.column("alert_type").to_pylist()) == ["abuse", "over_limit"]
    finally:
        sys.modules.pop("mr_plugin", None)
        reset_default_registry()


def test_errors_survive_pickling_with_their_data():
    err = CommitConflictError("conflict on x", table="x")
    back = pickle.loads(pickle.dumps(err))
    assert isinstance(back, ReplayError) and back.data == {"table": "x"} and back.retryable
    assert str(back) == "conflict on x" and back.exit_code == 1
    assert ConfigError("bad").exit_code == 2
