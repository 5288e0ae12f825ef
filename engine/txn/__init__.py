"""The transaction protocol every multi-table write goes through (protocol.py)."""

from engine.txn.protocol import (
    ERASURE_FORWARD,
    NEUTRAL_KINDS,
    POLICY,
    SHARED,
    Transaction,
    begin,
    publish,
    recover,
    start,
    undo,
    versions_after,
)

__all__ = ["ERASURE_FORWARD", "NEUTRAL_KINDS", "POLICY", "SHARED", "Transaction", "begin",
           "publish", "recover", "start", "undo", "versions_after"]
