"""Fuzz the authentication exchange against a real in-process broker with `--auth scram`.

Goal: whatever a client sends before or during its login (frames of every API before a login,
malformed or mutated SCRAM messages, SASL requests out of order, replayed messages), the broker
stays up, answers only with frames that decode, never answers a non-SASL request with anything
but an error while the connection is not logged in, writes nothing, and keeps serving a client
that logs in properly.

Size: AUTH_FUZZ_CASES (default 300 connections); seed: AUTH_FUZZ_SEED (default: random, printed
on failure).
"""

from __future__ import annotations

import logging
import os
import random
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
import trio

from broker.config import BrokerConfig
from broker.server import Broker
from tests.unit.server.wire_client import WireClient, make_batch
from wire import codec
from wire.error_codes import ErrorCode
from wire.sasl_client import credential_upsertion
from wire.scram import ScramClient, ScramMechanism

CASES = int(os.environ.get("AUTH_FUZZ_CASES", "300"))
ADMIN_PASSWORD = "fuzz-admin-pw"
SASL = {codec.ApiKey.SASL_HANDSHAKE.value, codec.ApiKey.SASL_AUTHENTICATE.value}
EXCHANGE_TIMEOUT_S = 10


@pytest.fixture
async def auth_broker(nursery: trio.Nursery, tmp_path: Path) -> AsyncIterator[Broker]:
    config = BrokerConfig.from_mapping(
        {
            "listen": "127.0.0.1:0",
            "metrics_listen": "",
            "data_dir": str(tmp_path / "data"),
            "auth": "scram",
            "super_users": "admin",
        }
    )
    broker = Broker(config, admin_password=ADMIN_PASSWORD)
    await nursery.start(broker.run)
    yield broker
    broker.request_stop()
    with trio.fail_after(30):
        await broker.stopped.wait()


async def _login(client: WireClient, user: str, password: str) -> ErrorCode:
    await client.request(codec.SaslHandshakeRequest(mechanism="SCRAM-SHA-256"))
    scram = ScramClient(ScramMechanism.SCRAM_SHA_256, user, password, client_nonce="g" * 24)
    first = await client.request(codec.SaslAuthenticateRequest(auth_bytes=scram.client_first()))
    final = scram.receive_server_first(first.auth_bytes)
    answer = await client.request(codec.SaslAuthenticateRequest(auth_bytes=final))
    return answer.error


def _mutate(rng: random.Random, data: bytes) -> bytes:
    choice = rng.randrange(5)
    if choice == 0 or not data:
        return rng.randbytes(rng.randrange(64))
    if choice == 1:
        return data[: rng.randrange(len(data))]
    if choice == 2:
        position = rng.randrange(len(data))
        return data[:position] + bytes([rng.randrange(256)]) + data[position + 1 :]
    if choice == 3:
        return data + rng.choice([b",", b"=", b",p=", b"\xff", b",m=x"])
    return data.replace(b",", b"", 1)


def _before_login_request(rng: random.Random) -> object:
    return rng.choice(
        [
            codec.MetadataRequest(),
            codec.DescribeUserScramCredentialsRequest(),
            codec.AlterUserScramCredentialsRequest(
                upsertions=(credential_upsertion("intruder", "pw"),)
            ),
            codec.CreateTopicsRequest(topics=(codec.NewTopic(name="intruded"),)),
            codec.ProduceRequest(
                acks=codec.ACKS_ALL,
                partitions=(
                    codec.ProducePartition(
                        topic="data", partition=0, records=make_batch([b"forged"])
                    ),
                ),
            ),
            codec.FetchRequest(
                partitions=(codec.FetchPartition(topic="data", partition=0, fetch_offset=0),)
            ),
        ]
    )


async def _one_case(address: tuple[str, int], rng: random.Random, captured: list[bytes]) -> None:
    """One connection doing something wrong; every answer must decode and refuse."""
    client = await WireClient.connect(*address)
    try:
        for _ in range(rng.randrange(1, 5)):
            kind = rng.randrange(4)
            if kind == 0:
                request: object = _before_login_request(rng)
            elif kind == 1:
                request = codec.SaslHandshakeRequest(
                    mechanism=rng.choice(["SCRAM-SHA-256", "SCRAM-SHA-512", "PLAIN", "", "x" * 99])
                )
            else:
                pool = captured or [b"n,,n=admin,r=" + b"q" * 24]
                request = codec.SaslAuthenticateRequest(auth_bytes=_mutate(rng, rng.choice(pool)))
            response = await client.request(request, timeout_s=EXCHANGE_TIMEOUT_S)
            api = request.API.value  # type: ignore[attr-defined]
            if api not in SASL:
                assert isinstance(response, codec.ErrorResponse), response
                assert response.error is ErrorCode.ILLEGAL_SASL_STATE
                return  # the broker closes the connection
            if response.error is not ErrorCode.NONE:
                return
            if isinstance(response, codec.SaslAuthenticateResponse):
                # A mutated message that still parses gets a challenge; a final never succeeds.
                assert response.auth_bytes.startswith(b"r=") or not response.auth_bytes
    except (ConnectionError, trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # closed by the broker after a refusal: expected
    finally:
        await client.aclose()


async def test_auth_fuzz_never_hurts_the_broker_nor_lets_anyone_in(
    auth_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    seed = int(os.environ.get("AUTH_FUZZ_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    assert auth_broker.addresses is not None
    address = auth_broker.addresses.listen
    admin = await WireClient.connect(*address)
    assert await _login(admin, "admin", ADMIN_PASSWORD) is ErrorCode.NONE
    assert (await admin.create_topic("data")).error is ErrorCode.NONE
    # Real client messages to mutate and replay.
    scram = ScramClient(
        ScramMechanism.SCRAM_SHA_256, "admin", ADMIN_PASSWORD, client_nonce="z" * 24
    )
    captured = [scram.client_first()]
    captured.append(scram.receive_server_first(b"r=" + b"z" * 24 + b"S,s=c2FsdHNhbHQ=,i=4096"))
    try:
        with trio.fail_after(max(60, CASES)):
            for _ in range(CASES):
                await _one_case(address, rng, captured)
        # Nothing got in: no user, no topic, no record was added; the admin still works.
        users = await admin.request(codec.DescribeUserScramCredentialsRequest())
        assert [user.name for user in users.users] == ["admin"]
        topics = await admin.request(codec.MetadataRequest())
        assert sorted(t.name for t in topics.topics if not t.name.startswith("__")) == ["data"]
        fetched = await admin.fetch("data", 0, 0)
        assert fetched.high_watermark == 0
    except BaseException:
        print(f"auth fuzz failed: reproduce with AUTH_FUZZ_SEED={seed} AUTH_FUZZ_CASES={CASES}")
        raise
    finally:
        await admin.aclose()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert not errors, errors[:5]


async def test_a_user_added_by_the_admin_logs_in(auth_broker: Broker) -> None:
    assert auth_broker.addresses is not None
    admin = await WireClient.connect(*auth_broker.addresses.listen)
    user = await WireClient.connect(*auth_broker.addresses.listen)
    try:
        assert await _login(admin, "admin", ADMIN_PASSWORD) is ErrorCode.NONE
        answer = await admin.request(
            codec.AlterUserScramCredentialsRequest(
                upsertions=(credential_upsertion("frank", "frank-pw"),)
            )
        )
        assert [r.error for r in answer.results] == [ErrorCode.NONE]
        assert await _login(user, "frank", "frank-pw") is ErrorCode.NONE
        assert isinstance(await user.request(codec.MetadataRequest()), codec.MetadataResponse)
    finally:
        await admin.aclose()
        await user.aclose()
