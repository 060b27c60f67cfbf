"""KvStore: key spaces are separate, values round-trip, durable writes survive a killed process,
and a damaged store is refused with a message naming the file (never mapped into a crash)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from broker.kvstore import DATA_FILE, KeySpace, KvStore, MetadataStoreError


def test_spaces_are_separate_and_values_round_trip(tmp_path: Path) -> None:
    store = KvStore.open(tmp_path / "meta.lmdb")
    store.put(KeySpace.RAFT, b"hard-state", b"raft-value")
    store.put(KeySpace.TOPICS, b"hard-state", b"topic-value")
    assert store.get(KeySpace.RAFT, b"hard-state") == b"raft-value"
    assert store.get(KeySpace.TOPICS, b"hard-state") == b"topic-value"
    assert store.get(KeySpace.GROUPS, b"hard-state") is None
    assert store.delete(KeySpace.RAFT, b"hard-state") is True
    assert store.delete(KeySpace.RAFT, b"hard-state") is False
    assert store.get(KeySpace.RAFT, b"hard-state") is None
    assert store.get(KeySpace.TOPICS, b"hard-state") == b"topic-value"
    store.close()


def test_items_by_prefix_in_key_order(tmp_path: Path) -> None:
    store = KvStore.open(tmp_path / "meta.lmdb")
    store.put_many(
        KeySpace.GROUPS,
        [(b"g2/b", b"3"), (b"g1/a", b"1"), (b"g1/b", b"2"), (b"h", b"4")],
    )
    assert store.items(KeySpace.GROUPS, b"g1/") == [(b"g1/a", b"1"), (b"g1/b", b"2")]
    assert [key for key, _ in store.items(KeySpace.GROUPS)] == [b"g1/a", b"g1/b", b"g2/b", b"h"]
    assert store.items(KeySpace.GROUPS, b"zzz") == []
    store.close()


def test_objects_round_trip_and_reopen(tmp_path: Path) -> None:
    path = tmp_path / "meta.lmdb"
    store = KvStore.open(path)
    store.put_obj(KeySpace.CONTROLLER, b"state", {"term": 3, "vote": None, "voters": [1, 2, 3]})
    store.close()
    store = KvStore.open(path)
    assert store.get_obj(KeySpace.CONTROLLER, b"state") == {
        "term": 3,
        "vote": None,
        "voters": [1, 2, 3],
    }
    assert store.items_obj(KeySpace.CONTROLLER) == [
        (b"state", {"term": 3, "vote": None, "voters": [1, 2, 3]})
    ]
    store.close()


def test_map_grows_when_full(tmp_path: Path) -> None:
    store = KvStore.open(tmp_path / "meta.lmdb", map_size_bytes=256 * 1024)
    value = b"v" * 4096
    for number in range(200):  # ~800 KiB: more than the initial map
        store.put(KeySpace.PRODUCERS, b"%05d" % number, value, durable=False)
    assert len(store.items(KeySpace.PRODUCERS)) == 200
    store.close()


def test_durable_put_survives_a_killed_process(tmp_path: Path) -> None:
    # The child writes and dies at once with os._exit (no close, no atexit): only what put()
    # made durable before returning can be read back.
    path = tmp_path / "meta.lmdb"
    script = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from broker.kvstore import KeySpace, KvStore\n"
        "store = KvStore.open(Path(sys.argv[1]))\n"
        "store.put(KeySpace.RAFT, b'term', b'7')\n"
        "os._exit(0)\n"
    )
    subprocess.run([sys.executable, "-c", script, str(path)], check=True, timeout=60)
    store = KvStore.open(path)
    assert store.get(KeySpace.RAFT, b"term") == b"7"
    store.close()


def _filled_store(path: Path) -> Path:
    store = KvStore.open(path)
    store.put_many(KeySpace.TOPICS, [(b"t%04d" % i, b"v" * 100) for i in range(2000)])
    store.close()
    return path / DATA_FILE


def test_truncated_data_file_is_refused_before_mapping(tmp_path: Path) -> None:
    # Mapping it would be a SIGBUS on the first read past the end: refused with the file named.
    data_file = _filled_store(tmp_path / "meta.lmdb")
    with data_file.open("r+b") as handle:
        handle.truncate(handle.seek(0, 2) // 2)
    with pytest.raises(MetadataStoreError, match="truncated") as refused:
        KvStore.open(tmp_path / "meta.lmdb")
    assert str(data_file) in str(refused.value)
    assert "--recover-topics" in str(refused.value)


def test_file_that_is_not_lmdb_is_refused(tmp_path: Path) -> None:
    (tmp_path / "meta.lmdb").mkdir()
    (tmp_path / "meta.lmdb" / DATA_FILE).write_bytes(b"\x00" * 10_000)
    with pytest.raises(MetadataStoreError, match="not an LMDB data file"):
        KvStore.open(tmp_path / "meta.lmdb")


def test_garbled_pages_are_refused_by_the_verifying_child(tmp_path: Path) -> None:
    # Page pointers into garbage may crash LMDB; the child reading it through dies instead of us.
    data_file = _filled_store(tmp_path / "meta.lmdb")
    size = data_file.stat().st_size
    with data_file.open("r+b") as handle:
        handle.seek(2 * 4096)
        handle.write(b"\xff" * (size - 2 * 4096))
    with pytest.raises(MetadataStoreError) as refused:
        KvStore.open(tmp_path / "meta.lmdb", verify=True)
    assert str(data_file) in str(refused.value)


def test_verify_accepts_a_sound_store_and_a_new_one(tmp_path: Path) -> None:
    _filled_store(tmp_path / "meta.lmdb")
    store = KvStore.open(tmp_path / "meta.lmdb", verify=True)
    assert len(store.items(KeySpace.TOPICS)) == 2000
    store.close()
    KvStore.open(tmp_path / "new.lmdb", verify=True).close()
