"""Idempotency records: per-tenant Idempotency-Key bookkeeping in the idempotency_keys table.

A POST that carries a key runs create_or_replay(). The first request with a key creates its
resource (a job or a batch) and, in the same transaction, inserts the record (scope, key) with the
request's fingerprint. A later request with the same key and fingerprint gets the original
resource back. One with another fingerprint is rejected with 409 idempotency_key_reused.

Two concurrent requests with one key both miss the lookup and both try to insert. The primary key
(scope, key) lets one commit. The other's insert raises IntegrityError (PostgreSQL makes it wait
for the winner's commit first), its transaction rolls back with the resource row in it, and it
replays the winner's record. So exactly one resource is created and enqueued.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, timedelta
from typing import TypeVar

from sqlalchemy import delete
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.db import Database
from core.errors import ConflictError, NotFoundError, TransientError
from core.idempotency import validate_idempotency_key
from core.logging import get_logger
from core.tables import IdempotencyRecord, utcnow

# Scope of requests that belong to no tenant (OCRQ_AUTH_REQUIRED=false), so the primary key
# never contains a null.
NO_TENANT_SCOPE = "-"
RESOURCE_TYPES = ("job", "batch", "endpoint", "redelivery")

Resource = TypeVar("Resource")

log = get_logger(__name__)


class IdempotencyKeyTaken(Exception):
    """Another request inserted the same (scope, key) first; this transaction must roll back."""


@dataclass(frozen=True)
class IdempotentRequest:
    """A POST's Idempotency-Key with the fingerprint of its request and its lifetime."""

    scope: str
    key: str
    fingerprint: str
    resource_type: str
    ttl_s: int

    @classmethod
    def build(
        cls, tenant_id: str | None, key: str, fingerprint: str, resource_type: str, ttl_s: int
    ) -> IdempotentRequest:
        """Validate the key (InputError when malformed) and scope it to the tenant."""
        if resource_type not in RESOURCE_TYPES:
            message = f"resource_type must be one of {RESOURCE_TYPES}, got {resource_type!r}"
            raise ValueError(message)
        validate_idempotency_key(key)
        scope = tenant_id if tenant_id is not None else NO_TENANT_SCOPE
        return cls(scope, key, fingerprint, resource_type, ttl_s)


def find_original(database: Database, request: IdempotentRequest) -> str | None:
    """Return the id of the resource an unexpired record of this key created, or None.

    Raises ConflictError (409, idempotency_key_reused) when the record's fingerprint differs,
    because the key was first used for a different request.
    """
    with database.session() as session:
        record = session.get(IdempotencyRecord, (request.scope, request.key))
    if record is None or _is_expired(record):
        return None
    if record.fingerprint != request.fingerprint or record.resource_type != request.resource_type:
        message = (
            f"Idempotency-Key {request.key[:64]!r} was already used for a different request "
            f"(another {record.resource_type}, file or option); send a new key for a new request. "
            "Keys are kept for OCRQ_IDEMPOTENCY_TTL_S seconds."
        )
        raise ConflictError(message, code="idempotency_key_reused")
    return record.resource_id


def record_key(session: Session, request: IdempotentRequest, resource_id: str) -> None:
    """Insert the record in the creator's transaction; raise IdempotencyKeyTaken on a lost race.

    An expired record of the same key is deleted first, so the key can be used again. The session
    is flushed here, so the caller learns of the race before anything is committed or enqueued.
    """
    session.flush()
    now = utcnow()
    session.execute(
        delete(IdempotencyRecord).where(
            IdempotencyRecord.scope == request.scope,
            IdempotencyRecord.key == request.key,
            IdempotencyRecord.expires_at <= now,
        )
    )
    session.add(
        IdempotencyRecord(
            scope=request.scope,
            key=request.key,
            fingerprint=request.fingerprint,
            resource_type=request.resource_type,
            resource_id=resource_id,
            created_at=now,
            expires_at=now + timedelta(seconds=request.ttl_s),
        )
    )
    try:
        session.flush()
    except IntegrityError as exc:
        raise IdempotencyKeyTaken(request.key) from exc


def create_or_replay(
    database: Database,
    request: IdempotentRequest,
    create: Callable[[], Resource],
    load: Callable[[str], Resource],
) -> tuple[Resource, bool]:
    """Create the resource once per key; return it with True, or the original with False.

    `create` must call record_key() inside the transaction that inserts the resource and let
    IdempotencyKeyTaken propagate after undoing anything it stored outside the database.
    `load` reads a resource by id. ConflictError (409) comes from find_original().
    """
    original_id = find_original(database, request)
    if original_id is not None:
        try:
            original = load(original_id)
        except NotFoundError:
            # The client deleted the resource; a replay now creates a new one rather than
            # returning 404 for the rest of the key's lifetime.
            _drop_record(database, request, original_id)
        else:
            log.info(
                "idempotency.replayed", resource=request.resource_type, resource_id=original_id
            )
            return original, False

    try:
        return create(), True
    except IdempotencyKeyTaken:
        original_id = find_original(database, request)
        if original_id is None:
            # The winner's record expired or was purged in between; the client may retry.
            message = "A concurrent request with the same Idempotency-Key did not finish; retry."
            raise TransientError(message, code="idempotency_key_busy") from None
        log.info("idempotency.race_lost", resource=request.resource_type, resource_id=original_id)
        return load(original_id), False


def _drop_record(database: Database, request: IdempotentRequest, resource_id: str) -> None:
    with database.session() as session:
        session.execute(
            delete(IdempotencyRecord).where(
                IdempotencyRecord.scope == request.scope,
                IdempotencyRecord.key == request.key,
                IdempotencyRecord.resource_id == resource_id,
            )
        )
    log.info("idempotency.resource_gone", resource=request.resource_type, resource_id=resource_id)


def purge_expired(database: Database) -> int:
    """Delete expired records; return how many went."""
    with database.session() as session:
        result = session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.expires_at <= utcnow())
        )
        purged = int(getattr(result, "rowcount", 0) or 0)
    if purged:
        log.info("idempotency.purged", records=purged)
    return purged


def _is_expired(record: IdempotencyRecord) -> bool:
    expires_at = record.expires_at
    if expires_at.tzinfo is None:
        # SQLite returns naive datetimes; every stored time is UTC.
        expires_at = expires_at.replace(tzinfo=UTC)
    return expires_at <= utcnow()
