"""One physical lake, one lease: every spelling of a lake's location resolves to one identity.

A local lake can be named by a plain path (absolute or relative, ``..``, a trailing slash, a
symlink) or by a ``file:`` URI (``file:///abs``, ``file://localhost/abs``, ``file:/abs``,
percent-encoded); whatever the spelling, it gets the same lease (the file lease in the real
directory), so a replay opened one way and a rollback opened another never both hold it. The
lake directory's name has a space, so the percent-encoded URI and the raw one differ.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import quote

import pytest

from engine.contract.errors import LeaseHeldError, UsageError
from engine.lake.lease import DeltaLease, Lease, lease_for
from engine.lake.storage import Storage
from engine.lake.tables import Lake
from tests.integration.test_lease import race_rounds
from tests.lakes import FIXTURE, ROOT

NAME = "my lake"

#: spelling -> the location, given the test directory (the cwd) and the lake directory in it
SPELLINGS = {
    "path": lambda d, real: str(real),
    "trailing-slash": lambda d, real: f"{real}/",
    "relative": lambda d, real: NAME,
    "dot-relative": lambda d, real: f"./{NAME}/",
    "dotdot": lambda d, real: f"{d}/elsewhere/../{NAME}",
    "double-slash": lambda d, real: f"/{real}",
    "symlink": lambda d, real: str(d / "link"),
    "file-uri": lambda d, real: f"file://{quote(str(real))}",
    "file-uri-raw": lambda d, real: f"file://{real}",
    "file-uri-slash": lambda d, real: f"file://{quote(str(real))}/",
    "file-uri-upper": lambda d, real: f"FILE://{quote(str(real))}",
    "file-localhost": lambda d, real: f"file://localhost{quote(str(real))}",
    "file-one-slash": lambda d, real: f"file:{quote(str(real))}",
    "file-dotdot": lambda d, real: f"file://{quote(str(d))}/elsewhere/../{quote(NAME)}",
    "file-symlink": lambda d, real: f"file://{quote(str(d / 'link'))}",
}


@pytest.fixture
def real(tmp_path, monkeypatch):
    """The lake's directory (``<tmp>/my lake``), a symlink ``<tmp>/link`` to it; cwd ``<tmp>``."""
    path = tmp_path / NAME
    path.mkdir()
    (tmp_path / "link").symlink_to(path, target_is_directory=True)
    monkeypatch.chdir(tmp_path)
    return path


def spell(name: str, real: Path) -> str:
    return SPELLINGS[name](real.parent, real)


@pytest.mark.parametrize("spelling", sorted(SPELLINGS))
def test_every_spelling_of_a_local_lake_is_one_directory(real, spelling):
    st = Lake.at(spell(spelling, real)).storage
    assert st.is_local
    assert st.identity == os.path.realpath(real)
    local = st.local_path()  # where pyarrow reads and writes: the directory delta-rs uses
    assert local is not None and Path(local).resolve() == real.resolve()
    assert Storage.resolve(st.root).root == st.root  # the resolved spelling is a fixed point


@pytest.mark.parametrize("name", ["lease", "follower"])
@pytest.mark.parametrize("holder_first", [True, False], ids=["path-holds", "spelling-holds"])
@pytest.mark.parametrize("spelling", sorted(set(SPELLINGS) - {"path"}))
def test_a_lease_held_through_one_spelling_refuses_every_other(real, spelling, holder_first, name):
    a, b = Lake.at(real), Lake.at(spell(spelling, real))
    if not holder_first:
        a, b = b, a
    holder = lease_for(a, "r-holder", heartbeat=600.0, name=name).acquire()
    try:
        with (pytest.raises(LeaseHeldError, match="r-holder is running") as refused,
              lease_for(b, "r-other", wait=0, name=name)):
            pass
        assert refused.value.data["owner"] == "r-holder"
        other = lease_for(b, "r-other", name=name)
        assert type(other) is type(holder) is Lease and other.path == holder.path
        assert other.read()["token"] == holder.token
    finally:
        holder.release()
    lease_for(b, "r-other", name=name).acquire().release()


def test_processes_racing_through_different_spellings_take_the_lease_one_at_a_time(real):
    """Four processes, each naming the lake its own way: exactly one wins each round."""
    lakes = [Lake.at(spell(s, real)) for s in ("path", "file-uri", "symlink", "file-localhost")]
    losses = race_rounds(lakes, rounds=4)
    assert all(len(lost) == 3 for lost in losses)


def test_the_follower_is_seen_through_any_spelling(real):
    from engine.live.follow import follower_running

    holder = lease_for(Lake.at(real), "f-holder", heartbeat=600.0, name="follower").acquire()
    try:
        seen = follower_running(Lake.at(spell("file-uri", real)))
        assert seen is not None and seen["owner"] == "f-holder"
    finally:
        holder.release()
    assert follower_running(Lake.at(spell("file-uri", real))) is None


def test_object_store_spellings_share_one_identity_and_the_delta_lease():
    spellings = ["s3://bucket/lake", "s3://bucket/lake/", "S3://bucket/lake//", "s3a://bucket/lake"]
    assert {Storage.resolve(s).identity for s in spellings} == {"s3://bucket/lake"}
    assert {Lake.at(s).root for s in spellings[:3]} == {"s3://bucket/lake"}
    lease = lease_for(Lake.at("s3://bucket/lake/"), "r")
    assert isinstance(lease, DeltaLease) and lease._uri() == "s3://bucket/lake/_medallion_lease"


@pytest.mark.parametrize("root", ["s3://bucket/a/../lake", "s3://bucket/./lake",
                                  "file://otherhost/data/lake", "file:lake"])
def test_ambiguous_locations_are_refused(root):
    with pytest.raises(UsageError):
        Storage.resolve(root)


# -- separate processes: the CLI through one spelling, this process through another ---------------


def cli(*args: str, wait: float) -> subprocess.CompletedProcess:
    env = {**os.environ, "MEDALLION_LEASE_WAIT": str(wait)}
    return subprocess.run([sys.executable, "-m", "replay", *args], capture_output=True, text=True,
                          cwd=ROOT, env=env, timeout=300)


@pytest.mark.parametrize("holder_spelling,cli_spelling", [("path", "file-uri"),
                                                           ("file-localhost", "symlink")])
def test_a_replay_through_another_spelling_waits_for_the_holder(real, holder_spelling, cli_spelling):
    from replay import api

    api.import_file(Lake.at(real), FIXTURE / "bronze.parquet", "bronze-parquet")
    holder = lease_for(Lake.at(spell(holder_spelling, real)), "r-holder", heartbeat=600.0).acquire()
    try:
        start = time.monotonic()
        p = cli("run", "--executor", "local", "--lake", spell(cli_spelling, real),
                "--ruleset", "2026-01", "--reason", "second writer", wait=0.5)
        assert p.returncode == 1, (p.stdout, p.stderr)
        assert "r-holder is running" in p.stderr and "waited 0.5 s" in p.stderr, p.stderr
        assert time.monotonic() - start >= 0.5
        assert holder.read()["token"] == holder.token and not holder.lost
        holder.check()
    finally:
        holder.release()
    if holder_spelling == "path":  # free now: the same command goes through
        p = cli("run", "--executor", "local", "--lake", spell(cli_spelling, real),
                "--ruleset", "2026-01", "--reason", "now free", wait=0)
        assert p.returncode == 0, (p.stdout, p.stderr)
