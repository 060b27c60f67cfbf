"""Goal: users are stored as SCRAM credentials only, the same way on a single node (LMDB) and in
a cluster (metadata records applied by the controller state machine, kept by its snapshots),
and a change is checked per user before anything is written."""

from __future__ import annotations

from pathlib import Path

from broker.auth.users import LocalUsers, ensure_super_user_locally
from broker.controller.scram_users import prepare_alter
from broker.controller.state import ControllerStateMachine
from broker.kvstore import KeySpace, KvStore
from wire import codec
from wire.error_codes import ErrorCode
from wire.sasl_client import credential_upsertion
from wire.scram import ScramClient, ScramMechanism, ScramServer

SHA256 = ScramMechanism.SCRAM_SHA_256


def _apply(machine: ControllerStateMachine, records: list) -> None:
    for record in records:
        machine.apply(record, machine.applied_index + 1)


def test_the_controller_keeps_users_through_a_snapshot() -> None:
    machine = ControllerStateMachine(validate=True)
    upsertions = [
        credential_upsertion("alice", "pw"),
        credential_upsertion("bob", "pw", ScramMechanism.SCRAM_SHA_512),
    ]
    records, results = prepare_alter(machine.scram_users, upsertions, [])
    assert [r.error for r in results] == [ErrorCode.NONE, ErrorCode.NONE]
    _apply(machine, records)
    restored = ControllerStateMachine.from_bytes(machine.to_bytes())
    assert restored == machine
    assert restored.scram_users.names() == ["alice", "bob"]
    # What is stored is enough to verify a login, and holds no password.
    assert b"pw" not in machine.to_bytes().replace(b"bob", b"").replace(b"alice", b"")
    server = ScramServer(SHA256, restored.scram_users.lookup, server_nonce="S" * 24,
                         fake_salt_key=b"k" * 32)  # fmt: skip
    client = ScramClient(SHA256, "alice", "pw", client_nonce="c" * 24)
    final = client.receive_server_first(server.receive_client_first(client.client_first()))
    client.receive_server_final(server.receive_client_final(final))


def test_a_snapshot_without_users_is_byte_equal_to_before() -> None:
    assert b"scram" not in ControllerStateMachine().to_bytes()


def test_bad_changes_are_refused_per_user() -> None:
    machine = ControllerStateMachine()
    weak = codec.ScramCredentialUpsertion(
        name="weak", mechanism="SCRAM-SHA-256", iterations=10, salt=b"s" * 16,
        stored_key=b"k" * 32, server_key=b"k" * 32,
    )  # fmt: skip
    plain = codec.ScramCredentialUpsertion(
        name="x", mechanism="PLAIN", iterations=4096, salt=b"s" * 16,
        stored_key=b"k" * 32, server_key=b"k" * 32,
    )  # fmt: skip
    records, results = prepare_alter(
        machine.scram_users,
        [credential_upsertion("good", "pw"), weak, plain],
        [codec.ScramCredentialDeletion(name="ghost", mechanism="SCRAM-SHA-256")],
    )
    errors = {r.name: r.error for r in results}
    assert errors == {
        "good": ErrorCode.NONE,
        "weak": ErrorCode.UNACCEPTABLE_CREDENTIAL,
        "x": ErrorCode.UNSUPPORTED_SASL_MECHANISM,
        "ghost": ErrorCode.RESOURCE_NOT_FOUND,
    }
    assert [r.name for r in records] == ["good"]


def test_a_single_node_keeps_users_in_lmdb(tmp_path: Path) -> None:
    store = KvStore.open(tmp_path / "meta.lmdb")
    try:
        users = LocalUsers(store)
        assert ensure_super_user_locally(users, "admin", "adminpw")
        results = users.alter([credential_upsertion("alice", "pw")], [])
        assert results[0].error is ErrorCode.NONE
        users.alter([], [codec.ScramCredentialDeletion(name="alice", mechanism="SCRAM-SHA-256")])
    finally:
        store.close()
    store = KvStore.open(tmp_path / "meta.lmdb")
    try:
        again = LocalUsers(store)
        assert again.users.names() == ["admin"]
        assert again.lookup("admin", ScramMechanism.SCRAM_SHA_512) is not None
        assert not ensure_super_user_locally(LocalUsers(store), "other", None)
    finally:
        store.close()


def test_a_damaged_credential_locks_out_only_its_user(tmp_path: Path) -> None:
    store = KvStore.open(tmp_path / "meta.lmdb")
    try:
        users = LocalUsers(store)
        users.alter([credential_upsertion("alice", "pw"), credential_upsertion("bob", "pw")], [])
        store.put(KeySpace.USERS, b"bob\0SCRAM-SHA-256", b"\xc1 not msgpack")
        assert LocalUsers(store).users.names() == ["alice"]
    finally:
        store.close()
