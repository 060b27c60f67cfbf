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

A damaged store must stop the broker with a clear message, never crash it or destroy data
(docs/storage.md, "Metadata damage"). LMDB maps its data file: a page past the end of a truncated
file is a SIGBUS, not an exception. So before opening, `check_data_file` reads the two meta pages
and refuses a file shorter than the pages its newest meta page says are in use, or one without
LMDB's magic. LMDB has no checksums, and a damaged page pointer inside the file is a SIGBUS or
SIGSEGV too, so `open(verify=True)` (the broker's start-up) first reads every key and value in a
child process (`python -m broker.kvstore PATH`): if that child dies or LMDB reports damage
(`lmdb.Error`), the broker is refused with a `MetadataStoreError` that names the file and what to
do, and the store is never mapped by the broker itself.
"""

from __future__ import annotations

import enum
import signal
import struct
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lmdb
import msgpack

MAP_SIZE_BYTES_DEFAULT = 64 * 1024 * 1024
MAP_SIZE_BYTES_MAX = 1 << 40
DATA_FILE = "data.mdb"

# LMDB's meta pages (mdb.c, MDB_meta after a 16-byte page header), little-endian on the platforms
# we run on: magic and version at 16, the page size (the free DB's md_pad) at 40, the last page
# in use and the transaction id at 136. Pages 0 and 1 hold the two alternating meta pages.
_META_MAGIC = 0xBEEFC0DE
_META_MAGIC_AT = 16
_META_PAGE_SIZE_AT = 40
_META_LAST_PAGE_AT = 136
_META_BYTES = 152
_PAGE_SIZES = frozenset(1 << bits for bits in range(9, 17))
# The child that reads a store through once at start-up; its status says what it found.
VERIFY_TIMEOUT_S = 300.0
_VERIFY_DAMAGED = 3

RECOVERY_ADVICE = (
    "restore the directory from a backup, or move it aside and start again: a cluster member "
    "rebuilds it from the controller, a single node needs `broker serve --recover-topics` to "
    "re-register its topics from their log directories (docs/storage.md, 'Metadata damage')"
)


class MetadataStoreError(Exception):
    """The metadata store cannot be read; the message names the file and what to do."""

    def __init__(self, path: Path, problem: str) -> None:
        super().__init__(f"the metadata store {path} is damaged: {problem}; {RECOVERY_ADVICE}")
        self.path = path
        self.problem = problem


def check_data_file(path: Path) -> None:
    """Refuse an LMDB data file that mapping would crash on (see the module docstring).

    A missing or empty file is a new store. Otherwise the newer of the two meta pages (by
    transaction id) must carry LMDB's magic and a sane page size, and the file must hold every
    page up to the last one that meta page says is in use.
    """
    data_file = path / DATA_FILE
    try:
        with data_file.open("rb") as handle:
            size = handle.seek(0, 2)
            if size == 0:
                return
            handle.seek(0)
            first = handle.read(_META_BYTES)
            metas = [first]
            page_size = _page_size(first)
            if page_size is not None and size >= 2 * page_size:
                handle.seek(page_size)
                metas.append(handle.read(_META_BYTES))
    except FileNotFoundError:
        return
    except OSError as exc:
        raise MetadataStoreError(data_file, f"cannot read it ({exc.strerror})") from exc
    valid = [meta for meta in metas if _page_size(meta) is not None]
    if not valid or size < 2 * (_page_size(valid[0]) or 0):
        raise MetadataStoreError(data_file, f"it is not an LMDB data file ({size} bytes)")
    newest = max(valid, key=lambda meta: struct.unpack_from("<Q", meta, _META_LAST_PAGE_AT + 8))
    page_size = _page_size(newest) or 0
    (last_page,) = struct.unpack_from("<Q", newest, _META_LAST_PAGE_AT)
    needed = (last_page + 1) * page_size
    if size < needed:
        raise MetadataStoreError(
            data_file, f"it is truncated: {size} bytes, but its pages in use need {needed}"
        )


def _page_size(meta: bytes) -> int | None:
    """The page size a meta page records, or None if it is not an LMDB meta page."""
    if len(meta) < _META_BYTES:
        return None
    (magic,) = struct.unpack_from("<I", meta, _META_MAGIC_AT)
    (page_size,) = struct.unpack_from("<I", meta, _META_PAGE_SIZE_AT)
    return page_size if magic == _META_MAGIC and page_size in _PAGE_SIZES else None


class KeySpace(enum.Enum):
    RAFT = "raft"
    CONTROLLER = "controller"
    TOPICS = "topics"
    PRODUCERS = "producers"
    GROUPS = "groups"
    # A single node's users: SCRAM credentials (a cluster's are in the controller's state).
    USERS = "users"
    SECURITY = "security"


class KvStore:
    """Typed get/put/delete/iterate over named LMDB key spaces. Not thread-safe for writes."""

    def __init__(self, env: lmdb.Environment, path: Path) -> None:
        self._env = env
        self.path = path
        self._databases = {space: env.open_db(space.value.encode()) for space in KeySpace}

    @classmethod
    def open(
        cls, path: Path, *, map_size_bytes: int = MAP_SIZE_BYTES_DEFAULT, verify: bool = False
    ) -> KvStore:
        """Open (creating if new) the store; raises `MetadataStoreError` if it is damaged.

        `verify` first reads the whole store in a child process (see the module docstring).
        """
        path.mkdir(parents=True, exist_ok=True)
        check_data_file(path)
        if verify:
            verify_in_child(path)
        try:
            env = lmdb.open(
                str(path),
                map_size=map_size_bytes,
                max_dbs=len(KeySpace),
                sync=False,
                metasync=False,
                subdir=True,
                lock=True,
            )
        except lmdb.Error as exc:
            raise MetadataStoreError(path / DATA_FILE, f"LMDB refuses it ({exc})") from exc
        try:
            return cls(env, path)
        except lmdb.Error as exc:
            env.close()
            raise MetadataStoreError(path / DATA_FILE, f"LMDB refuses it ({exc})") from exc

    def walk(self) -> None:
        """Read every key and value of every key space once (raises `lmdb.Error` on damage)."""
        for database in self._databases.values():
            with self._env.begin(db=database) as txn:
                for _ in txn.cursor():
                    pass

    def sync(self) -> None:
        """Make every committed write durable (writes with `durable=False` are not, until this).
        Thread-safe: `StoreSyncer` runs it in a worker thread."""
        self._env.sync(True)

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


def verify_in_child(path: Path) -> None:
    """Read the store at `path` through in a child process; raise `MetadataStoreError` if the
    child finds damage or is killed by it (a signal), so the caller never maps a bad file."""
    if not (path / DATA_FILE).exists():
        return
    try:
        child = subprocess.run(
            [sys.executable, "-m", "broker.kvstore", str(path)],
            capture_output=True,
            text=True,
            timeout=VERIFY_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise MetadataStoreError(
            path / DATA_FILE, f"reading it through took over {VERIFY_TIMEOUT_S:.0f} s"
        ) from exc
    if child.returncode == 0:
        return
    if child.returncode < 0:
        problem = f"reading it crashes LMDB ({signal.Signals(-child.returncode).name})"
    else:
        problem = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else "unknown"
    raise MetadataStoreError(path / DATA_FILE, problem)


def _verify_main(path: Path) -> int:
    try:
        store = KvStore.open(path)
        store.walk()
        store.close()
    except MetadataStoreError as exc:
        print(exc.problem, file=sys.stderr)
        return _VERIFY_DAMAGED
    except lmdb.Error as exc:
        print(f"LMDB refuses it ({exc})", file=sys.stderr)
        return _VERIFY_DAMAGED
    return 0


if __name__ == "__main__":  # the child of `verify_in_child`
    sys.exit(_verify_main(Path(sys.argv[1])))
