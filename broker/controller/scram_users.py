"""The users: SCRAM credentials by (user name, mechanism), and how a change to them is checked.

One `ScramUsers` lives in the controller state machine (a cluster: applied from the metadata
log's `ScramCredentialSet` / `ScramCredentialRemoved` records on every broker, so any broker can
check any login) and one in a single node's `broker.auth.users.LocalUsers` (persisted in LMDB).
`prepare_alter` turns an AlterUserScramCredentials request into the records to apply and a
result per user, the same way in both modes.

Rules: pure (no I/O); a user exists while it has at least one credential; iteration order is
by name then mechanism, so snapshots are deterministic.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from broker.controller.records import (
    MetadataRecordError,
    ScramCredentialRemoved,
    ScramCredentialSet,
)
from wire import codec
from wire.error_codes import ErrorCode
from wire.scram import ScramCredential, ScramMechanism, check_credential_shape

# A request may change at most this many credentials (it becomes one metadata batch).
ALTERATIONS_MAX = 256


class ScramUsers:
    """Credentials by (name, mechanism); changed only by `apply_set` / `apply_removed`."""

    def __init__(self) -> None:
        self._credentials: dict[tuple[str, ScramMechanism], ScramCredential] = {}

    def lookup(self, name: str, mechanism: ScramMechanism) -> ScramCredential | None:
        return self._credentials.get((name, mechanism))

    def names(self) -> list[str]:
        return sorted({name for name, _ in self._credentials})

    def credentials_of(self, name: str) -> list[ScramCredential]:
        return [
            self._credentials[(user, mechanism)]
            for user, mechanism in sorted(self._credentials, key=_order)
            if user == name
        ]

    def __len__(self) -> int:
        return len(self._credentials)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ScramUsers):
            return NotImplemented
        return self._credentials == other._credentials

    __hash__ = None  # type: ignore[assignment]  # mutable

    def apply_set(self, record: ScramCredentialSet, index: int = 0) -> bool:
        credential = ScramCredential(
            ScramMechanism(record.mechanism),
            record.salt,
            record.iterations,
            record.stored_key,
            record.server_key,
        )
        key = (record.name, credential.mechanism)
        if self._credentials.get(key) == credential:
            return False  # the same change proposed twice
        self._credentials[key] = credential
        return True

    def apply_removed(self, record: ScramCredentialRemoved, index: int = 0) -> bool:
        return (
            self._credentials.pop((record.name, ScramMechanism(record.mechanism)), None) is not None
        )

    def to_records(self) -> list[ScramCredentialSet]:
        """Every credential as the record that sets it (snapshots, the single node's store)."""
        return [
            ScramCredentialSet(
                name,
                mechanism.value,
                credential.salt,
                credential.iterations,
                credential.stored_key,
                credential.server_key,
            )
            for (name, mechanism), credential in sorted(self._credentials.items(), key=_item_order)
        ]

    def to_rows(self) -> list[list[Any]]:
        """The snapshot form: one `[name, mechanism, salt, iterations, stored, server]` row each."""
        return [
            [r.name, r.mechanism, r.salt, r.iterations, r.stored_key, r.server_key]
            for r in self.to_records()
        ]

    def load_rows(self, rows: Any) -> None:
        """Fill from `to_rows()` output; MetadataRecordError if a row is malformed."""
        if not isinstance(rows, list):
            raise MetadataRecordError("scram credentials: expected a list of rows")
        for row in rows:
            if not isinstance(row, list) or len(row) != 6:
                raise MetadataRecordError(f"scram credentials: bad row {row!r:.100}")
            record = ScramCredentialSet(*row)
            if not self.apply_set(record):
                raise MetadataRecordError(f"scram credentials: {record.name!r} appears twice")


def _order(key: tuple[str, ScramMechanism]) -> tuple[str, str]:
    return key[0], key[1].value


def _item_order(item: tuple[tuple[str, ScramMechanism], ScramCredential]) -> tuple[str, str]:
    return _order(item[0])


def prepare_alter(
    users: ScramUsers,
    upsertions: Iterable[codec.ScramCredentialUpsertion],
    deletions: Iterable[codec.ScramCredentialDeletion],
) -> tuple[list[ScramCredentialSet | ScramCredentialRemoved], list[codec.UserScramResult]]:
    """The records an AlterUserScramCredentials request makes, and one result per user named.

    A user whose changes are not all acceptable gets an error and no change (unknown mechanism:
    UNSUPPORTED_SASL_MECHANISM; a credential out of bounds: UNACCEPTABLE_CREDENTIAL; deleting
    what does not exist: RESOURCE_NOT_FOUND; a user changed twice in one request:
    INVALID_REQUEST); the other users' changes still apply.
    """
    changes: list[tuple[str, Any]] = [(u.name, u) for u in upsertions]
    changes += [(d.name, d) for d in deletions]
    records: dict[str, list[ScramCredentialSet | ScramCredentialRemoved]] = {}
    errors: dict[str, tuple[ErrorCode, str]] = {}
    seen: set[tuple[str, str]] = set()
    if len(changes) > ALTERATIONS_MAX:
        error = (ErrorCode.INVALID_REQUEST, f"at most {ALTERATIONS_MAX} changes per request")
        return [], [_result(name, error) for name in dict.fromkeys(n for n, _ in changes)]
    for name, change in changes:
        if (name, change.mechanism) in seen:
            errors[name] = (ErrorCode.INVALID_REQUEST, "the user is changed twice in one request")
            continue
        seen.add((name, change.mechanism))
        try:
            record = _record_for(users, name, change)
        except _Refused as exc:
            errors.setdefault(name, (exc.code, exc.message))
            continue
        records.setdefault(name, []).append(record)
    ordered = [r for name, found in records.items() if name not in errors for r in found]
    names = dict.fromkeys(name for name, _ in changes)
    return ordered, [_result(name, errors.get(name)) for name in names]


class _Refused(Exception):
    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def _record_for(users: ScramUsers, name: str, change: Any) -> Any:
    try:
        mechanism = ScramMechanism.parse(change.mechanism)
    except ValueError as exc:
        raise _Refused(ErrorCode.UNSUPPORTED_SASL_MECHANISM, str(exc)) from None
    if not name or len(name) > 256:
        raise _Refused(ErrorCode.INVALID_REQUEST, "a user name is 1 to 256 characters")
    if isinstance(change, codec.ScramCredentialDeletion):
        if users.lookup(name, mechanism) is None:
            raise _Refused(
                ErrorCode.RESOURCE_NOT_FOUND,
                f"user {name!r} has no {mechanism.value} credential: see `broker-cli users list`",
            )
        return ScramCredentialRemoved(name, mechanism.value)
    try:
        check_credential_shape(
            mechanism.hash_name,
            change.salt,
            change.iterations,
            change.stored_key,
            change.server_key,
        )
    except ValueError as exc:
        raise _Refused(ErrorCode.UNACCEPTABLE_CREDENTIAL, str(exc)) from None
    return ScramCredentialSet(
        name, mechanism.value, change.salt, change.iterations, change.stored_key, change.server_key
    )


def _result(name: str, error: tuple[ErrorCode, str] | None) -> codec.UserScramResult:
    if error is None:
        return codec.UserScramResult(name=name)
    return codec.UserScramResult(name=name, error=error[0], error_message=error[1])


def describe(
    users: ScramUsers, names: tuple[str, ...] | None
) -> codec.DescribeUserScramCredentialsResponse:
    """DescribeUserScramCredentials' answer: mechanisms and iterations, never keys or salts."""
    described = []
    for name in names if names is not None else users.names():
        credentials = users.credentials_of(name)
        if not credentials:
            described.append(
                codec.DescribedUser(
                    name=name,
                    error=ErrorCode.RESOURCE_NOT_FOUND,
                    error_message=f"user {name!r} does not exist",
                )
            )
            continue
        infos = tuple(
            codec.ScramCredentialInfo(mechanism=c.mechanism.value, iterations=c.iterations)
            for c in credentials
        )
        described.append(codec.DescribedUser(name=name, credentials=infos))
    return codec.DescribeUserScramCredentialsResponse(users=tuple(described))
