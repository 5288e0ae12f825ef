"""The lake's lease excludes: processes racing for it, a stalled owner that loses it.

Both kinds of lease are raced by separate processes (spawned, not threads), round after
round: on a local lake (the flock-protected lease file :func:`lease_for` gives every local lake,
a path or a ``file://`` URI) and, built directly, the Delta lease (conditional commits) on a
``file://`` lake. tests/s3/test_s3_lease.py runs the same scenarios on SeaweedFS, where
:func:`lease_for` picks the Delta lease; tests/integration/test_lake_identity.py races processes
that name one lake differently.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import multiprocessing as mp
import os
import signal
import time
from collections.abc import Sequence

import pytest

from engine.contract.errors import LeaseHeldError
from engine.lake.lease import TTL_SECONDS, DeltaLease, Lease, lease_for
from engine.lake.tables import Lake

RACERS = 4
ROUNDS = 6
CTX = mp.get_context("spawn")


def delta_lease(lake: Lake, owner: str, ttl: float = TTL_SECONDS, heartbeat: float | None = None,
                wait: float = 0.0) -> DeltaLease:
    """The Delta lease, built directly: :func:`lease_for` gives it to object-store lakes only
    (a local lake always gets the file lease), so on a local lake the tests make it here."""
    lease = DeltaLease(lake, owner, ttl, heartbeat)
    lease.wait = wait
    return lease


# -- in the racing processes -------------------------------------------------------------------


def _racer(lake: Lake, i: int, rounds: int, start, read_together, results, make=lease_for) -> None:
    """Race for the lease once per round: report, hold it while the others try, release."""
    for r in range(rounds):
        lease = make(lake, f"r{r}-racer{i}", ttl=30.0, heartbeat=1.0)
        if read_together is not None:  # the Delta lease: everyone reads one version, then commits
            opened = lease._open
            first = [True]

            def _open(version=None, _opened=opened, _first=first):
                dt = _opened(version)
                if _first[0]:
                    _first[0] = False
                    read_together.wait(60)
                return dt

            lease._open = _open
        start.wait(60)
        try:
            lease.acquire()
            results.put((r, i, True, ""))
        except LeaseHeldError as exc:
            results.put((r, i, False, str(exc)))
        else:
            start.wait(60)  # every racer has tried
            lease.check()  # still ours
            assert not lease.lost
            lease.release()
            start.wait(60)
            continue
        start.wait(60)
        start.wait(60)


def _stalled_owner(lake: Lake, mode: str, events, go, make=lease_for) -> None:
    """Take the lease, get stopped (SIGSTOP) past the TTL by the test, then report what the
    lease says once resumed: via the heartbeat thread (``beat``) or a check() right away."""
    heartbeat = 0.2 if mode == "beat" else 600.0  # "check": the thread never beats first
    lease = make(lake, "r-stalled", ttl=1.0, heartbeat=heartbeat).acquire()
    events.put(("acquired", os.getpid()))
    go.wait(120)
    if mode == "beat":
        deadline = time.monotonic() + 20
        while not lease.lost and time.monotonic() < deadline:
            time.sleep(0.02)
    noticed = lease.lost
    try:
        lease.check()
        checked = ""
    except LeaseHeldError as exc:
        checked = str(exc)
    lease.release()  # must leave the new owner's lease alone
    time.sleep(3 * 0.2)  # a heartbeat that kept going would have written by now
    events.put(("done", noticed, checked))


# -- in the test process -------------------------------------------------------------------------


def plant_expired(lake: Lake, make=lease_for) -> None:
    """An expired lease left by a dead driver of another replay."""
    stale = make(lake, "r-dead", ttl=0.0)
    body = {**stale._body(), "heartbeat": time.time() - 3600}
    if isinstance(stale, DeltaLease):
        stale._write(body)
    else:
        stale.path.parent.mkdir(parents=True, exist_ok=True)
        stale.path.write_text(json.dumps(body))


def race_rounds(lake: Lake | Sequence[Lake], racers: int = RACERS, rounds: int = ROUNDS,
                make=lease_for) -> list[list[str]]:
    """Run ``rounds`` races of ``racers`` processes (odd rounds over an expired lease); assert
    exactly one winner each round; return each round's losers' messages. Given several
    spellings of one lake, racer ``i`` names it the ``i``-th way (round robin)."""
    spellings = [lake] if isinstance(lake, Lake) else list(lake)
    lake = spellings[0]
    delta = isinstance(make(lake, "probe"), DeltaLease)
    start = CTX.Barrier(racers + 1)
    read_together = CTX.Barrier(racers) if delta else None
    results = CTX.Queue()
    procs = [CTX.Process(target=_racer, args=(spellings[i % len(spellings)], i, rounds, start,
                                              read_together, results, make))
             for i in range(racers)]
    for p in procs:
        p.start()
    losses: list[list[str]] = []
    try:
        for r in range(rounds):
            if r % 2:
                plant_expired(lake, make)
            start.wait(120)  # go
            got = [results.get(timeout=120) for _ in range(racers)]
            assert {g[0] for g in got} == {r}
            winners = [g[1] for g in got if g[2]]
            assert len(winners) == 1, f"round {r}: winners {winners}"
            held = make(lake, "observer").read()
            assert held is not None and held["owner"] == f"r{r}-racer{winners[0]}"
            losses.append([g[3] for g in got if not g[2]])
            start.wait(120)  # every racer has tried: the winner checks and releases
            start.wait(120)  # released
            assert make(lake, "observer").read() is None
    except BaseException:
        start.abort()  # the racers stop waiting for this round
        if read_together is not None:
            read_together.abort()
        raise
    finally:
        for p in procs:
            p.join(60)
            if p.is_alive():
                p.kill()
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    return losses


@contextlib.contextmanager
def outside_critical_section(lake: Lake, make=lease_for):
    """For the file lease: hold its flock, so a process stopped now is not inside it."""
    lease = make(lake, "observer")
    if not isinstance(lease, Lease):
        yield
        return
    fd = os.open(lease.lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def stalled_owner_loses(lake: Lake, mode: str, make=lease_for) -> None:
    """A stalled owner (stopped past its TTL) loses cleanly to a new owner: its resumed
    heartbeat / check() reports the loss and it never writes the lease again."""
    events, go = CTX.Queue(), CTX.Event()
    p = CTX.Process(target=_stalled_owner, args=(lake, mode, events, go, make))
    p.start()
    try:
        kind, pid = events.get(timeout=120)
        assert kind == "acquired"
        with outside_critical_section(lake, make):
            os.kill(pid, signal.SIGSTOP)
        try:
            time.sleep(1.5)  # past the stalled owner's 1 s TTL
            new = make(lake, "r-new", ttl=60.0, heartbeat=600.0).acquire()
        finally:
            os.kill(pid, signal.SIGCONT)
        mark = (new._version if isinstance(new, DeltaLease) else new.read()["heartbeat"])
        go.set()
        kind, noticed, checked = events.get(timeout=120)
        assert kind == "done"
        if mode == "beat":
            assert noticed, "the resumed heartbeat did not notice the takeover"
        assert "r-stalled lost the lake's lease to replay r-new" in checked
        info = new.read()
        assert info is not None and info["token"] == new.token  # never taken back
        if isinstance(new, DeltaLease):  # nothing committed on the lease since the takeover
            from deltalake import DeltaTable

            opts = dict(lake.storage_options) if lake.storage_options else None
            assert DeltaTable(new._uri(), storage_options=opts).version() == mark
        else:
            assert info["heartbeat"] == mark
        new.check()
        assert not new.lost
        new.release()
        assert new.read() is None
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
    assert p.exitcode == 0


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(params=["file-lease", "delta-lease"])
def any_lease(request, tmp_path):
    """(a lake, a maker of its leases): the file lease of a local lake (what :func:`lease_for`
    gives), or the Delta lease built directly on a ``file://`` lake."""
    if request.param == "file-lease":
        return Lake.at(tmp_path / "lake"), lease_for
    return Lake.at(f"file://{tmp_path}/lake"), delta_lease


def test_lease_kind_follows_the_physical_lake(tmp_path):
    """A local lake gets the file lease whatever its spelling; an object store the Delta lease."""
    plain, uri = lease_for(Lake.at(tmp_path / "a"), "r"), lease_for(Lake.at(f"file://{tmp_path}/a"), "r")
    assert isinstance(plain, Lease) and isinstance(uri, Lease) and plain.path == uri.path
    assert isinstance(lease_for(Lake.at("s3://bucket/lake"), "r"), DeltaLease)


def test_exactly_one_of_racing_processes_takes_the_lease(any_lease):
    lake, make = any_lease
    losses = race_rounds(lake, make=make)
    assert all(len(lost) == RACERS - 1 for lost in losses)
    if make is delta_lease:
        # every racer read the same version: the losers lost the conditional commit itself
        assert all("at the same time" in m for lost in losses for m in lost), losses


@pytest.mark.parametrize("mode", ["beat", "check"])
def test_a_stalled_owner_loses_to_the_new_owner_and_knows_it(any_lease, mode):
    lake, make = any_lease
    stalled_owner_loses(lake, mode, make)


def test_a_live_lease_is_refused_and_released_by_its_owner_only(any_lease):
    lake, make = any_lease
    holder = make(lake, "r-holder", heartbeat=0.05).acquire()
    try:
        other = make(lake, "r-other")
        with pytest.raises(LeaseHeldError, match="r-holder is running"):
            other.acquire()
        other.release()  # not its lease: nothing happens
        assert holder.read()["token"] == holder.token
        time.sleep(0.3)  # a few heartbeats
        holder.check()
        assert not holder.lost and holder.read()["token"] == holder.token
    finally:
        holder.release()
    assert holder.read() is None
    make(lake, "r-other").acquire().release()


def test_check_renews_an_owner_that_stalled_while_nobody_took_over(any_lease):
    lake, make = any_lease
    lease = make(lake, "r-slow", ttl=2.0, heartbeat=600.0).acquire()
    try:
        time.sleep(2.2)  # expired by its own clock, but nobody took over
        before = lease.read()["heartbeat"]
        lease.check()  # renews, conditionally
        assert lease.read()["heartbeat"] > before and not lease.lost
        with pytest.raises(LeaseHeldError, match="r-slow is running"):
            make(lake, "r-late").acquire()
    finally:
        lease.release()


def test_a_replay_whose_plan_went_stale_while_waiting_plans_again(tmp_path, monkeypatch):
    """Another replay (a follower's step, say) lands between this replay's plan and its lease:
    ``run`` plans again on the new tables instead of failing, and the result is exact."""
    from engine.batch import apply
    from engine.execution.local import LocalExecutor
    from replay import api
    from rules.ruleset import load_ruleset
    from tests.lakes import FIXTURE

    lake = api.open_lake(tmp_path / "lake")
    api.import_file(lake, FIXTURE / "bronze.parquet", "bronze-parquet")
    api.run(lake, "2026-01")
    real = apply.execute
    plans = []

    def execute_after_another_replay(lake_, plan, *a, **k):
        plans.append(plan)
        if len(plans) == 1:  # the other replay lands first: Gold changes under this plan
            real(lake_, api.plan(lake_, "free-100"), load_ruleset("free-100"), LocalExecutor())
        return real(lake_, plan, *a, **k)

    monkeypatch.setattr(apply, "execute", execute_after_another_replay)
    res = api.run(lake, "2026-02", reason="rules change")
    assert len(plans) == 2 and plans[0].replay_id != plans[1].replay_id
    assert res.plan is plans[1] and res.conservation_ok
    assert lake.commit_metadata("tenant_usage_1min")["ruleset_name"] == "2026-02"
