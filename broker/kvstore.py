"""`KvStore`: the broker's one durable metadata store, an LMDB environment with named key spaces.

Raft hard state, controller state, topic metadata, producer state and group offsets each live in
their own LMDB sub-database (a `KeySpace`), so their keys never collide and each can be iterated on
its own. Segment files hold record data; this holds everything small that must survive a restart.

Durability: the environment is opened without per-commit sync, and a write with `durable=True`
(the default) calls `env.sync(True)` before returning, so when `put` returns the value is on disk.
`durable=False` is for values that can be rebuilt (caches, snapshots that have a log behind them).
`put_many` writes several keys in one transaction: all or none survive a crash.

The map grows by doubling when it fills; LMDB needs a fixed upper bound per open, and growing is
cheap (it only reserves address space).
"""

from __future__ import annotations

import enum
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb
import msgpack

MAP_SIZE_BYTES_DEFAULT = 64 * 1024 * 1024
MAP_SIZE_BYTES_MAX = 1 << 40


class KeySpace(enum.Enum):
    RAFT = "raft"
    CONTROLLER = "controller"
    TOPICS = "topics"
    PRODUCERS = "producers"
    GROUPS = "groups"


class KvStore:
    """Typed get/put/delete/iterate over named LMDB key spaces. Not thread-safe for writes."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        self._env = env
        self.path = path
        self._databases = {space: env.open_db(space.value.encode()) for space in KeySpace}

    @classmethod
    def open(cls, path: Path, *, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT) -> KvStore:
        path.mkdir(parents=True, exist_ok=True)
        env = lmdb.open(
            str(path),
            map_size=map_size_bytes,
            max_dbs=len(KeySpace),
            sync=False,
            metasync=False,
            subdir=True,
            lock=True,
        )
        return cls(env, path)

    def close(self) -> None:
        self._env.sync(True)
        self._env.close()

    # --- bytes ----------------------------------------------------------------------------------

    def get(self, space: KeySpace, key: bytes) -> bytes | None:
        with self._env.begin(db=self._databases[space]) as txn:
            value = txn.get(key)
        return None if value is None else bytes(value)

    def put(self, space: KeySpace, key: bytes, value: bytes, *, durable: bool = True) -> None:
        self.put_many(space, [(key, value)], durable=durable)

    def put_many(
        self, space: KeySpace, items: Iterable[tuple[bytes, bytes]], *, durable: bool = True
    ) -> None:
        """Write every pair in one transaction; durable on return when `durable`."""
        pairs = list(items)
        self._write(lambda txn: [txn.put(k, v, db=self._databases[space]) for k, v in pairs])
        if durable:
            self._env.sync(True)

    def delete(self, space: KeySpace, key: bytes, *, durable: bool = True) -> bool:
        """Remove `key`; returns whether it existed."""
        existed = self._write(lambda txn: txn.delete(key, db=self._databases[space]))
        if durable:
            self._env.sync(True)
        return bool(existed)

    def items(self, space: KeySpace, prefix: bytes = b"") -> list[tuple[bytes, bytes]]:
        """Every (key, value) of `space` whose key starts with `prefix`, in key order."""
        result: list[tuple[bytes, bytes]] = []
        with self._env.begin(db=self._databases[space]) as txn:
            cursor = txn.cursor()
            if not cursor.set_range(prefix):
                return result
            for key, value in cursor:
                if not key.startswith(prefix):
                    break
                result.append((bytes(key), bytes(value)))
        return result

    def _write(self, operation: Any) -> Any:
        # Retry once per doubling when the map is full; LMDB aborts the transaction for us.
        while True:
            try:
                with self._env.begin(write=True) as txn:
                    return operation(txn)
            except lmdb.MapFullError:
                size = self._env.info()["map_size"]
                if size * 2 > MAP_SIZE_BYTES_MAX:
                    raise
                self._env.set_mapsize(size * 2)

    # --- msgpack values -------------------------------------------------------------------------

    def get_obj(self, space: KeySpace, key: bytes) -> Any:
        raw = self.get(space, key)
        return None if raw is None else msgpack.unpackb(raw, raw=False, strict_map_key=False)

    def put_obj(self, space: KeySpace, key: bytes, value: Any, *, durable: bool = True) -> None:
        self.put(space, key, msgpack.packb(value, use_bin_type=True), durable=durable)

    def items_obj(self, space: KeySpace, prefix: bytes = b"") -> list[tuple[bytes, Any]]:
        return [
            (key, msgpack.unpackb(value, raw=False, strict_map_key=False))
            for key, value in self.items(space, prefix)
        ]
