"""Client quotas: produce and fetch byte rates and a request rate per user and/or client id
(Kafka's client quotas, with token buckets as in KIP-599), pure.

A quota is set on an entity: a user, a client id, or both, where either may be the default
(`<default>`, Kafka's `--entity-default`). A connection (user U, client id C) takes, for each
quota kind, the value of the most specific entity that sets it, in Kafka's order:

    (U, C)  (U, <default>)  (U, -)  (<default>, C)  (<default>, <default>)  (<default>, -)
    (-, C)  (-, <default>)

Every (kind, user, client id) the chosen entity distinguishes gets one token bucket: a default
user quota gives each user a bucket of its own, a quota on user U one bucket shared by all of U's
connections. A bucket holds up to `rate * burst_s` tokens and refills at `rate` per second; a
request takes its cost (bytes, or 1 request) even past zero, and the debt is the throttle time:
`-tokens / rate` seconds, capped at `throttle_ms_max`. The broker returns it as `throttle_time_ms`
and reads nothing more from the connection for that long (Kafka mutes the channel), so a greedy
client is held to its rate while others keep theirs.

Request rate is in requests per second (not Kafka's request-percentage of handler time: a rate is
what an operator can reason about without knowing the broker's thread model).

Rules: pure; time enters as `now_s` (any monotonic clock, in seconds). Buckets are bounded by
`bucket_count_max`: the least recently used bucket is dropped first (it would have refilled).
"""

from __future__ import annotations

import dataclasses
import enum
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Final

# Kafka's name for the default entity.
DEFAULT: Final = "<default>"
# Bounds on names and values, so a bad request or record cannot build huge objects.
ENTITY_NAME_LENGTH_MAX: Final = 255
RATE_MAX: Final = 2**53


class QuotaError(ValueError):
    """A quota entity or value is not valid; the message names the field and what to do."""


class QuotaKind(enum.Enum):
    """The quota keys (Kafka's names); values are per second."""

    PRODUCER_BYTE_RATE = "producer_byte_rate"
    CONSUMER_BYTE_RATE = "consumer_byte_rate"
    REQUEST_RATE = "request_rate"


def parse_kind(key: str) -> QuotaKind:
    try:
        return QuotaKind(key.strip().lower().replace("-", "_").replace(".", "_"))
    except (ValueError, AttributeError):
        choices = ", ".join(kind.value for kind in QuotaKind)
        raise QuotaError(f"quota key {key!r} is not one of {choices}") from None


def check_rate(kind: QuotaKind, value: object) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 1 <= value <= RATE_MAX:
        raise QuotaError(
            f"{kind.value}: expected a whole number from 1 to {RATE_MAX}, got {value!r}"
        )
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaEntity:
    """`user` and `client_id`: a name, DEFAULT, or None (not part of the entity)."""

    user: str | None = None
    client_id: str | None = None

    def __post_init__(self) -> None:
        if self.user is None and self.client_id is None:
            raise QuotaError("a quota entity names a user, a client id, or both")
        for field, value in (("user", self.user), ("client_id", self.client_id)):
            if value is not None and (
                not isinstance(value, str) or not value or len(value) > ENTITY_NAME_LENGTH_MAX
            ):
                raise QuotaError(
                    f"{field}: expected a name of 1 to {ENTITY_NAME_LENGTH_MAX} characters"
                )

    def sort_key(self) -> tuple[str, str]:
        return (self.user or "", self.client_id or "")

    def describe(self) -> str:
        parts = []
        if self.user is not None:
            parts.append(f"user={self.user}")
        if self.client_id is not None:
            parts.append(f"client-id={self.client_id}")
        return " ".join(parts)


def resolution_order(user: str, client_id: str) -> tuple[QuotaEntity, ...]:
    """The entities that may set the quota of (user, client_id), most specific first. An empty
    user or client id (a client that sent none) can only get the defaults."""
    users: tuple[str | None, ...] = (user, DEFAULT, None) if user else (DEFAULT, None)
    clients: tuple[str | None, ...] = (client_id, DEFAULT, None) if client_id else (DEFAULT, None)
    return tuple(QuotaEntity(u, c) for u in users for c in clients if (u, c) != (None, None))


class QuotaConfigs:
    """The configured quotas: entity -> {kind: rate}. Replicated state (the controller log, or
    the single node's store)."""

    def __init__(self) -> None:
        self._values: dict[QuotaEntity, dict[QuotaKind, int]] = {}

    def __len__(self) -> int:
        return len(self._values)

    def set(self, entity: QuotaEntity, kind: QuotaKind, rate: int | None) -> bool:
        """Set (or with None remove) one quota; False if nothing changed."""
        values = self._values.get(entity, {})
        if rate is None:
            if kind not in values:
                return False
            del values[kind]
            if not values:
                self._values.pop(entity, None)
            return True
        if values.get(kind) == rate:
            return False
        self._values.setdefault(entity, values)[kind] = check_rate(kind, rate)
        return True

    def get(self, entity: QuotaEntity) -> Mapping[QuotaKind, int]:
        return self._values.get(entity, {})

    def entries(self) -> list[tuple[QuotaEntity, dict[QuotaKind, int]]]:
        """Every entity with its quotas, sorted by entity."""
        return [
            (entity, dict(self._values[entity]))
            for entity in sorted(self._values, key=QuotaEntity.sort_key)
        ]

    def resolve(self, kind: QuotaKind, user: str, client_id: str) -> tuple[QuotaEntity, int] | None:
        """The entity whose `kind` quota applies to (user, client_id), with its rate."""
        if not self._values:
            return None
        for entity in resolution_order(user, client_id):
            rate = self._values.get(entity, {}).get(kind)
            if rate is not None:
                return entity, rate
        return None

    def __eq__(self, other: object) -> bool:
        return isinstance(other, QuotaConfigs) and self._values == other._values

    __hash__ = None  # type: ignore[assignment]  # mutable


@dataclasses.dataclass(slots=True)
class TokenBucket:
    """Refills at `rate` per second up to `capacity`; `take` may drive it below zero."""

    rate: float
    capacity: float
    tokens: float
    updated_s: float

    def take(self, amount: float, now_s: float) -> float:
        """Take `amount` tokens at `now_s`; the seconds until the bucket is back at zero (0.0
        when it did not go negative)."""
        assert self.rate > 0 and amount >= 0
        elapsed = max(0.0, now_s - self.updated_s)
        self.tokens = min(self.capacity, self.tokens + elapsed * self.rate)
        self.updated_s = max(self.updated_s, now_s)
        self.tokens -= amount
        return -self.tokens / self.rate if self.tokens < 0 else 0.0


@dataclasses.dataclass(frozen=True, slots=True)
class QuotaLimits:
    """`burst_s`: a bucket holds this many seconds of its rate. `throttle_ms_max`: the longest
    throttle one request earns. `bucket_count_max`: buckets kept at once (memory bound)."""

    burst_s: float = 1.0
    throttle_ms_max: int = 30_000
    bucket_count_max: int = 100_000


class QuotaCore:
    """The buckets of the connections' (user, client id) pairs over `QuotaConfigs`."""

    def __init__(self, limits: QuotaLimits) -> None:
        assert limits.burst_s > 0 and limits.throttle_ms_max >= 0 and limits.bucket_count_max > 0
        self.limits = limits
        self._buckets: OrderedDict[tuple[QuotaKind, str, str], TokenBucket] = OrderedDict()

    @property
    def bucket_count(self) -> int:
        return len(self._buckets)

    def record(
        self,
        configs: QuotaConfigs,
        charges: Iterable[tuple[QuotaKind, float]],
        *,
        user: str,
        client_id: str,
        now_s: float,
    ) -> int:
        """Charge (kind, amount) pairs to the buckets of (user, client_id); the throttle time in
        ms the worst of them earned (0: within every quota)."""
        throttle_s = 0.0
        for kind, amount in charges:
            resolved = configs.resolve(kind, user, client_id)
            if resolved is None:
                continue
            entity, rate = resolved
            key = (
                kind,
                user if entity.user is not None else "",
                client_id if entity.client_id is not None else "",
            )
            bucket = self._bucket(key, rate, now_s)
            throttle_s = max(throttle_s, bucket.take(amount, now_s))
        return min(self.limits.throttle_ms_max, int(throttle_s * 1000 + 0.999))

    def _bucket(self, key: tuple[QuotaKind, str, str], rate: int, now_s: float) -> TokenBucket:
        capacity = rate * self.limits.burst_s
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(rate=rate, capacity=capacity, tokens=capacity, updated_s=now_s)
            self._buckets[key] = bucket
            if len(self._buckets) > self.limits.bucket_count_max:
                self._buckets.popitem(last=False)
        else:
            self._buckets.move_to_end(key)
            if bucket.rate != rate:  # the quota changed: the new rate applies from now
                bucket.rate, bucket.capacity = rate, capacity
                bucket.tokens = min(bucket.tokens, capacity)
        return bucket
