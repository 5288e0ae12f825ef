"""A real S3-compatible store (SeaweedFS) started by the project's own module
(tests/servers/seaweedfs.py) for these tests."""

from __future__ import annotations

import itertools
import os
import uuid

import pytest

from tests.servers.seaweedfs import SeaweedS3

_prefixes = itertools.count()


@pytest.fixture(scope="session")
def s3(tmp_path_factory):
    server = SeaweedS3(tmp_path_factory.mktemp("seaweedfs"),
                       port=int(os.environ.get("MEDALLION_TEST_S3_PORT", "18333")))
    server.start()  # a server that cannot start fails the run: these tests never skip
    yield server
    server.stop()


@pytest.fixture
def s3_lake_uri(s3):
    """A fresh lake location per test: s3://<bucket>/<unique prefix>."""
    return s3.uri(f"t{next(_prefixes)}-{uuid.uuid4().hex[:12]}")
