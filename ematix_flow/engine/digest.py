"""A digest of how this process hash-partitions a known input.

Peers must send the same key to the same partition; a peer built from another wheel or CPU
architecture could differ and silently corrupt joins. Peers compare digests at hello.
"""

from __future__ import annotations

import functools
import hashlib

import pyarrow as pa

from ematix_flow.engine.settings import PLANNING_SETTINGS

_KEYS = 512
_WIDTH = 4


@functools.cache
def hash_digest() -> str:
    """Digest of which hash partition each of a fixed set of keys lands in."""
    from datafusion import SessionConfig, SessionContext

    config = SessionConfig().with_target_partitions(_WIDTH)
    for k, v in PLANNING_SETTINGS.items():
        config = config.set(k, v)
    ctx = SessionContext(config)
    table = pa.table({"k": pa.array(range(_KEYS), pa.int64()), "s": [f"key-{i}" for i in range(_KEYS)]})
    ctx.register_record_batches("digest_input", [table.to_batches()])
    df = ctx.sql("SELECT k, s, count(*) AS c FROM digest_input GROUP BY k, s")
    plan = df.execution_plan()
    h = hashlib.sha256()
    for p in range(plan.partition_count):
        keys = sorted(k for rb in ctx.execute(plan, p) for k in rb.to_pyarrow().column("k").to_pylist())
        h.update(f"{p}:{keys}".encode())
    return h.hexdigest()[:16]
