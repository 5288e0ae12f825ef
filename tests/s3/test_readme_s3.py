"""The README's block "A lake on an S3-compatible server" as a user types it (tests/readme.py):
`make s3-up`, the `export MEDALLION_STORAGE_OPTIONS=...` line, `replay generate` of the
Bronze Parquet file, `replay import` and `replay run` on s3://lake/demo, `make s3-down`.

The `make` lines run in the repository root (the venv they use lives there; see
tests.servers.make), on the README's default 127.0.0.1:8333 (and the 7 ports after it) and data
dir <repo>/.seaweedfs; the `replay` lines run in a fresh clone, in one terminal
(tests.readme.Shell).

That data dir outlives `make s3-down`: on a second run the bucket still holds s3://lake/demo,
and the import adds no row (every (topic, partition, offset) is there already) and the run finds
the lake up to date, so the block shows nothing of a first build. Right after `make s3-up` the
test therefore removes s3://lake/demo (only the lake this block creates, nothing else of the
store: the developer's other objects and the data dir stay), so that every run sees what a user
sees the first time; it removes it again before `make s3-down`.
"""

from __future__ import annotations

import contextlib
import json
import re
import shlex
import time

import pytest
from deltalake import DeltaTable
from pyarrow import fs

from engine.contract import schemas
from tests.readme import Shell, blocks, without_options
from tests.servers import make, port_free
from tests.servers.seaweedfs import DEFAULT_PORT, SeaweedS3

pytestmark = [pytest.mark.s3, pytest.mark.slow]

SECTION = "A lake on an S3-compatible server"
LAKE = "s3://lake/demo"
PORTS = range(DEFAULT_PORT, DEFAULT_PORT + 8)  # the S3 gateway and the 7 ports after it


def _ok(r) -> None:
    assert r.returncode == 0, (getattr(r, "line", r.args), r.stdout[-3000:], r.stderr[-3000:])
    assert "Traceback" not in r.stderr, r.stderr[-3000:]


def _make(line: str):
    assert line.startswith("make "), line
    r = make(*shlex.split(line)[1:], timeout=120)
    _ok(r)
    return r


def _remove_demo_lake() -> None:
    """Delete every object under s3://lake/demo. (SeaweedFS lists an emptied folder for a while
    after its last object went, then refuses to delete it as missing: such a folder is empty.)"""
    s3 = SeaweedS3().filesystem()  # the README's server: default port and keys
    path = LAKE.removeprefix("s3://")
    s3.delete_dir_contents(path, missing_dir_ok=True)
    with contextlib.suppress(FileNotFoundError):
        s3.delete_dir(path)
    left = [i.path for i in s3.get_file_info(fs.FileSelector(path, allow_not_found=True,
                                                             recursive=True))
            if i.type == fs.FileType.File]
    assert not left, left


@pytest.mark.timeout(900)
def test_readme_s3_block(clone):
    (b,) = [b for b in blocks() if b.section == SECTION]
    lines = [without_options(line) for line in b.lines]
    assert [ln.split()[:2] for ln in lines] == [
        ["make", "s3-up"], ["export", lines[1].split()[1]], ["replay", "generate"],
        ["replay", "import"], ["replay", "run"], ["make", "s3-down"]], lines
    busy = [p for p in PORTS if not port_free(p)]
    assert not busy, (f"ports {busy} are in use: `make s3-up` as typed needs 127.0.0.1:"
                      f"{PORTS[0]}..{PORTS[-1]}; stop what listens there (`make s3-down`?)")
    sh = Shell(clone)
    up = None
    try:
        up = _make(lines[0])
        printed = next(x for x in up.stdout.splitlines()
                       if x.startswith("MEDALLION_STORAGE_OPTIONS="))
        opts = json.loads(printed.split("=", 1)[1])
        name, value = shlex.split(lines[1])[1].split("=", 1)
        assert name == "MEDALLION_STORAGE_OPTIONS"
        assert json.loads(value) == opts, "the README's options are not what `make s3-up` prints"
        _remove_demo_lake()
        for line in lines[1:-1]:
            _ok(sh.run(line, timeout=600))
        gen, imp, run = sh.ran[1:]
        rows = int(re.search(r"^rows: (\d+)$", gen.stdout, re.M).group(1))
        assert f"rows_added: {rows}" in imp.stdout, imp.stdout
        assert re.search(r"^\s*conservation .*: ok$", run.stdout, re.M), run.stdout
        assert "validation gate: " in run.stdout and "FAILED" not in run.stdout, run.stdout
        bronze = DeltaTable(f"{LAKE}/{schemas.BRONZE}", storage_options=opts)
        assert bronze.to_pyarrow_dataset().count_rows() == rows
        silver = DeltaTable(f"{LAKE}/{schemas.SILVER}", storage_options=opts)
        assert silver.version() >= 1 and silver.to_pyarrow_dataset().count_rows() > 0
    finally:
        try:
            if up is not None and up.returncode == 0:
                _remove_demo_lake()
        finally:
            down = make(*shlex.split(lines[-1])[1:], timeout=120)
    _ok(down)
    deadline = time.monotonic() + 15
    while not all(port_free(p) for p in PORTS) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert all(port_free(p) for p in PORTS), "`make s3-down` left SeaweedFS listening"
