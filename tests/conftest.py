from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
FIXTURE = SHARED / "fixtures" / "basic"


@pytest.fixture
def lake(tmp_path):
    from engine.lake import Lake

    return Lake.at(tmp_path / "lake")
