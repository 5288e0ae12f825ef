from __future__ import annotations

import os

import pytest

# Tests that race for the lease expect a held lease to be refused at once; the tests of a
# replay during `replay follow` set a wait of their own.
os.environ.setdefault("MEDALLION_LEASE_WAIT", "0")

from rules.registry import default_registry, swap_default_registry


@pytest.fixture
def lake(tmp_path):
    from engine.lake.tables import Lake

    return Lake.at(tmp_path / "lake")


@pytest.fixture(autouse=True)
def isolated_registry():
    """Each test registers rules into its own copy of the registry; it is dropped afterwards."""
    previous = swap_default_registry(default_registry().copy())
    yield
    swap_default_registry(previous)


@pytest.fixture
def clone(tmp_path):
    """A fresh `git clone` of the repository (what it committed), as a user has it."""
    import subprocess

    from tests.lakes import ROOT

    dest = tmp_path / "medallion-replay"
    subprocess.run(["git", "clone", "-q", str(ROOT), str(dest)], check=True, timeout=120)
    return dest
