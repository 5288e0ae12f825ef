"""The shuffle's files: written by map tasks, read back (memory-mapped) by reduce tasks."""

from __future__ import annotations

import os
import time

import pyarrow as pa
import pytest

from engine.execution.shuffle import ALIVE, AREA, ShuffleArea, heartbeat, stale_areas
from engine.lake.storage import Storage


def buckets() -> list[pa.Table]:
    big = pa.table({"tenant_id": pa.array([f"t{i % 7}" for i in range(200_000)]),
                    "n": pa.array(range(200_000), pa.int64())})
    return [big.slice(0, 150_000), big.slice(0, 0), big.slice(150_000)]


def test_pieces_round_trip_in_order_and_empty_buckets_write_nothing(tmp_path):
    area = ShuffleArea.create(str(tmp_path))
    assert area.root.startswith(f"{tmp_path}/{AREA}/")
    pieces = area.write(buckets())
    assert pieces[1] is None and [p.rows for p in (pieces[0], pieces[2])] == [150_000, 50_000]
    assert sorted(os.listdir(area.root)) == sorted(p.name for p in pieces if p)
    assert all(os.path.getsize(os.path.join(area.root, p.name)) == p.size for p in pieces if p)
    back = area.read([pieces[2], pieces[1], pieces[0]])
    assert [t.num_rows for t in back] == [50_000, 150_000]
    assert back[0].equals(buckets()[2]) and back[1].equals(buckets()[0])


def test_a_local_piece_is_read_memory_mapped_not_copied(tmp_path):
    area = ShuffleArea.create(str(tmp_path))
    (piece,) = area.write([pa.table({"x": pa.array(range(2_000_000), pa.int64())})])
    before = pa.total_allocated_bytes()
    (table,) = area.read([piece])
    assert table.column("x")[1_999_999].as_py() == 1_999_999
    assert pa.total_allocated_bytes() - before < 1 << 20  # 16 MB of rows: none allocated


def test_each_write_names_new_files_so_a_retried_map_never_meets_its_dead_attempt(tmp_path):
    area = ShuffleArea.create(str(tmp_path))
    first, second = area.write(buckets()), area.write(buckets())
    assert {p.name for p in first if p}.isdisjoint(p.name for p in second if p)
    assert area.read([second[0]])[0].equals(buckets()[0])


def test_delete_removes_the_area_and_only_it(tmp_path):
    a, b = ShuffleArea.create(str(tmp_path)), ShuffleArea.create(str(tmp_path))
    a.write(buckets())
    b.write(buckets())
    a.delete()
    assert not os.path.exists(a.root) and os.path.isdir(b.root)
    a.delete()  # twice: nothing to do, no error


def test_stale_areas_are_those_untouched_for_longer_than_the_grace(tmp_path):
    fresh, old, empty_old = (ShuffleArea.create(str(tmp_path)) for _ in range(3))
    fresh.write(buckets())
    old.write(buckets())
    past = time.time() - 7200
    for area in (old, empty_old):
        for name in os.listdir(area.root):
            os.utime(os.path.join(area.root, name), (past, past))
        os.utime(area.root, (past, past))
    found = {s.root for s in stale_areas(Storage(str(tmp_path)), 3600)}
    assert found == {old.root, empty_old.root}
    assert stale_areas(Storage(str(tmp_path / "nothing-here")), 3600) == []


@pytest.mark.parametrize("rows", [0, 1])
def test_a_bucket_of_one_row_or_none(tmp_path, rows):
    area = ShuffleArea.create(str(tmp_path))
    t = pa.table({"a": pa.array(["x"] * rows, pa.string())})
    (piece,) = area.write([t])
    assert (piece is None) == (rows == 0)
    assert [x.num_rows for x in area.read([piece])] == ([1] if rows else [])


def test_a_running_driver_keeps_its_area_fresh_for_vacuum(tmp_path):
    """The heartbeat touches the area at once and on every beat, and stops with its block; an
    area whose files all look old but whose heartbeat is recent is not stale."""
    area = ShuffleArea.create(str(tmp_path))
    area.write(buckets())
    past = time.time() - 7200
    for name in os.listdir(area.root):
        os.utime(os.path.join(area.root, name), (past, past))
    os.utime(area.root, (past, past))
    assert [a.root for a in stale_areas(Storage(str(tmp_path)), 3600)] == [area.root]
    alive = os.path.join(area.root, ALIVE)
    with heartbeat(area, every_s=0.05):
        first = os.path.getmtime(alive)
        time.sleep(0.3)
        assert os.path.getmtime(alive) > first
        assert stale_areas(Storage(str(tmp_path)), 3600) == []
    last = os.path.getmtime(alive)
    time.sleep(0.2)
    assert os.path.getmtime(alive) == last  # the beat stopped with the block
    with heartbeat(None):  # no area (a run without map tasks): nothing to do
        pass


def test_every_area_when_no_age_is_asked(tmp_path):
    """Under the lake's lease no replay of the lake runs: vacuum takes every area of the lake's
    own, whatever its files' times (a clock ahead of this host's included)."""
    areas = [ShuffleArea.create(str(tmp_path)) for _ in range(2)]
    areas[0].write(buckets())
    future = time.time() + 3600
    os.utime(areas[0].root, (future, future))
    found = {a.root for a in stale_areas(Storage(str(tmp_path)), None)}
    assert found == {a.root for a in areas}
