"""`make s3-up` / `make s3-down` as a user types them (from the repository root), on free ports
and a data dir of the test's own: the bucket `lake` exists, reached with the printed options."""

from __future__ import annotations

import json
import subprocess

import pytest
from pyarrow import fs

from tests import servers
from tests.servers import free_port_block, port_free

pytestmark = pytest.mark.s3


def make(target: str, port: int, data) -> subprocess.CompletedProcess:
    return servers.make(target, f"S3_PORT={port}", f"S3_DIR={data}", timeout=120)


def test_make_s3_up_then_down(tmp_path):
    port = free_port_block(8)  # the S3 gateway's port and the 7 after it
    data = tmp_path / "seaweedfs"
    try:
        up = make("s3-up", port, data)
        assert up.returncode == 0, up.stdout + up.stderr
        line = next(x for x in up.stdout.splitlines() if x.startswith("MEDALLION_STORAGE_OPTIONS="))
        opts = json.loads(line.split("=", 1)[1])
        assert opts["AWS_ENDPOINT_URL"] == f"http://127.0.0.1:{port}"
        s3 = fs.S3FileSystem(endpoint_override=opts["AWS_ENDPOINT_URL"].removeprefix("http://"),
                             scheme="http", access_key=opts["AWS_ACCESS_KEY_ID"],
                             secret_key=opts["AWS_SECRET_ACCESS_KEY"], region=opts["AWS_REGION"])
        assert s3.get_file_info("lake").type == fs.FileType.Directory
        assert (data / "weed.pid").exists()
    finally:
        down = make("s3-down", port, data)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not (data / "weed.pid").exists()
    assert all(port_free(p) for p in range(port, port + 8))
