"""The machinery of medallion-replay: lake, importers, pipeline, executors, queries."""

from __future__ import annotations

import contextlib
import os

import pyarrow as _pa


def _use_memory_pool() -> None:
    """Arrow's allocator for this process: ``MEDALLION_ARROW_POOL`` (system|mimalloc|jemalloc).

    Default ``system``: on these machines most of a replay's and the generator's Arrow
    work writes large fresh buffers, and glibc's allocator measured ~1.4x faster there
    than mimalloc (Arrow's default). ``make bench`` prints the numbers this rests on.
    """
    name = os.environ.get("MEDALLION_ARROW_POOL", "system")
    pools = {"system": _pa.system_memory_pool, "mimalloc": _pa.mimalloc_memory_pool,
             "jemalloc": _pa.jemalloc_memory_pool}
    with contextlib.suppress(KeyError, NotImplementedError):  # unknown or not built: Arrow's default
        _pa.set_memory_pool(pools[name]())


_use_memory_pool()
