"""The layout's promises: rules see only the pure contract, no import cycles or import-time
side effects, a CLI over the API only, one storage resolver."""

from __future__ import annotations

import ast
import importlib.metadata
import re
import subprocess
import sys
import tomllib

import pytest

from tests.lakes import ROOT

PACKAGES = ("engine", "rules", "replay")


def modules(top: str) -> list[str]:
    out = []
    for path in sorted((ROOT / top).rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append(".".join(parts))
    return out


def imported(path) -> set[str]:
    """Every module a file imports (absolute names; relative imports are not used here)."""
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def test_rules_import_nothing_from_engine_but_the_contract():
    for path in (ROOT / "rules").rglob("*.py"):
        engine_names = {n for n in imported(path) if n == "engine" or n.startswith("engine.")}
        bad = {n for n in engine_names if not n.startswith("engine.contract")}
        assert not bad, f"{path.name} imports {sorted(bad)}"


def test_the_contract_is_pure():
    for path in (ROOT / "engine" / "contract").rglob("*.py"):
        names = imported(path)
        assert not {n for n in names if n.split(".")[0] in ("deltalake", "ray", "confluent_kafka")}
        assert not {n for n in names if n.startswith("engine.") and not n.startswith("engine.contract")}


def test_rule_base_and_the_builtin_list_do_not_import_each_other():
    assert not {n for n in imported(ROOT / "rules" / "base.py") if n.startswith("rules.")}
    assert "rules.base" not in {n for n in imported(ROOT / "rules" / "builtin.py")}


def test_importing_rules_loads_no_io_stack():
    code = ("import sys, rules.builtin, rules.ruleset;"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in"
            " ('deltalake', 'ray', 'confluent_kafka') or (m.startswith('engine.')"
            " and not m.startswith('engine.contract'))))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_importing_every_module_has_no_process_wide_side_effect():
    """Arrow's memory pool is chosen by start_process(), never by an import."""
    mods = [m for top in PACKAGES for m in modules(top) if not m.endswith("__main__")]
    code = ("import importlib, pyarrow as pa; before = pa.default_memory_pool().backend_name\n"
            f"for m in {mods!r}: importlib.import_module(m)\n"
            "after = pa.default_memory_pool().backend_name\n"
            "from engine.config import start_process; start_process()\n"
            "print(before, after, pa.default_memory_pool().backend_name)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PATH": "/usr/bin:/bin", "MEDALLION_ARROW_POOL": "system"})
    assert out.returncode == 0, out.stderr
    before, after, started = out.stdout.split()
    assert before == after != "system" and started == "system"


def test_the_cli_calls_the_api_only():
    for name in ("cli.py", "commands.py", "output.py"):
        engine_names = {n for n in imported(ROOT / "replay" / name) if n.startswith("engine.")}
        assert engine_names <= {"engine.contract", "engine.contract.errors", "engine.contract.schemas",
                                "engine.contract.errors.ReplayError", "engine.contract.errors.UsageError"}, (name, engine_names)


def test_the_development_servers_are_not_in_the_runtime():
    """Kafka and SeaweedFS for development live in tests/servers/; the runtime never imports
    them (nor anything else of tests/), not even by name through importlib."""
    assert (ROOT / "tests" / "servers" / "kafka.py").is_file()
    assert (ROOT / "tests" / "servers" / "seaweedfs.py").is_file()
    for top in PACKAGES:
        assert not list((ROOT / top).rglob("broker.py")), top
        assert not list((ROOT / top).rglob("seaweedfs.py")), top
        for path in (ROOT / top).rglob("*.py"):
            bad = {n for n in imported(path) if n == "tests" or n.startswith("tests.")}
            assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"
            assert "tests.servers" not in path.read_text(), path


def test_no_module_guesses_the_storage_from_the_path():
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            assert '"://" in' not in path.read_text(), path


@pytest.mark.parametrize("pkg", [p for p in (ROOT / "engine").iterdir() if (p / "__init__.py").exists()],
                         ids=lambda p: p.name)
def test_every_engine_subpackage_says_what_lives_there(pkg):
    doc = ast.get_docstring(ast.parse((pkg / "__init__.py").read_text()))
    assert doc and len(doc.splitlines()) == 1


def _dist(name: str) -> str:
    """A distribution name, normalized (PEP 503): ``Prometheus_Client`` -> ``prometheus-client``."""
    return re.sub(r"[-_.]+", "-", name).lower()


def test_every_third_party_import_is_a_declared_dependency():
    """Each top-level module engine/, rules/ and replay/ import (lazily too) comes from the
    standard library, from the project itself, from the optional native extension
    (rules/_native, which `make venv` builds), or from a distribution pyproject.toml declares."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {_dist(re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", req).group(0))
                for req in project["dependencies"]}
    native = tomllib.loads((ROOT / "rules" / "_native" / "pyproject.toml").read_text())
    own = {*PACKAGES, native["tool"]["maturin"]["module-name"], "__future__"}
    tops: dict[str, set[str]] = {}
    for top in PACKAGES:
        for path in (ROOT / top).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                else:
                    continue
                for name in names:
                    tops.setdefault(name.split(".")[0], set()).add(str(path.relative_to(ROOT)))
    third = {m: files for m, files in tops.items() if m not in sys.stdlib_module_names and m not in own}
    assert "prometheus_client" in third and "duckdb" in third  # the walk sees lazy imports too
    dists = importlib.metadata.packages_distributions()
    missing = {m: (dists.get(m), sorted(files)) for m, files in third.items()
               if not {_dist(d) for d in dists.get(m, [])} & declared}
    assert not missing, f"imported but not in pyproject's dependencies: {missing}"


def _imports(path) -> list[tuple[str, list[str]]]:
    """(module, names) of every ``from X import a, b`` in a file (lazy imports included)."""
    out = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names]
    return out


@pytest.mark.parametrize("layer", ["lake", "query"])
def test_the_lake_and_query_layers_never_read_the_batch_package(layer):
    """Reader snapshots and floors come from the transaction protocol (engine/txn)."""
    for path in (ROOT / "engine" / layer).glob("*.py"):
        for module, _ in _imports(path):
            assert not module.startswith("engine.batch"), (path, module)


def test_no_module_imports_another_packages_private_names():
    for top in ("engine", "rules", "replay"):
        for path in (ROOT / top).rglob("*.py"):
            pkg = ".".join(path.relative_to(ROOT).parts[:-1])
            for module, names in _imports(path):
                if not module.startswith(("engine", "rules", "replay")):
                    continue
                mine = module.rsplit(".", 1)[0] == pkg or module == pkg
                private = [n for n in names if n.startswith("_") and not n.startswith("__")]
                assert mine or not private, (path, module, private)
