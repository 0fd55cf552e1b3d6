"""Tenants and their API keys: create, list and revoke keys, and authenticate a bearer token.

Only a key's id and SHA-256 hash are stored (core.apikeys); the plaintext exists once, in the
value returned by create_api_key. Nothing here logs a key, only key ids.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from core.apikeys import generate_api_key, hash_api_key, is_well_formed, key_id_of, verify_api_key
from core.db import Database
from core.errors import InputError, NotFoundError
from core.logging import get_logger
from core.tables import ApiKey, Tenant, new_id, utcnow
from core.webhooks import generate_secret

# last_used_at is rewritten at most this often per key, so busy keys cost no write per request.
LAST_USED_RESOLUTION_S = 60
KEY_NAME_MAX_LENGTH = 128
_TENANT_NAME_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
# Compared against when a key id is unknown, so unknown and wrong keys take about the same time.
_UNKNOWN_KEY_HASH = hash_api_key("ocrq_unknown")

log = get_logger(__name__)


@dataclass(frozen=True)
class CreatedKey:
    """A new API key; `plaintext` is shown to the user once and is not stored anywhere."""

    plaintext: str
    key_id: str
    tenant_id: str
    tenant_name: str


@dataclass(frozen=True)
class KeyInfo:
    """One API key as listings show it: never the key itself."""

    key_id: str
    name: str | None
    created_at: datetime
    last_used_at: datetime | None
    revoked_at: datetime | None


def check_tenant_name(name: str) -> str:
    """Return `name` if it is a valid tenant name; raise InputError otherwise."""
    if _TENANT_NAME_PATTERN.fullmatch(name) is None:
        message = (
            f"Expected a tenant name of 1-128 letters, digits, '.', '_' or '-' starting with a "
            f"letter or digit, got {name[:140]!r}."
        )
        raise InputError(message, code="invalid_tenant_name")
    return name


def find_tenant(database: Database, name: str) -> Tenant | None:
    """Return the tenant called `name`, or None."""
    with database.session() as session:
        return session.scalars(select(Tenant).where(Tenant.name == name)).first()


def get_or_create_tenant(database: Database, name: str) -> tuple[Tenant, bool]:
    """Return the tenant called `name`, creating it (with a new webhook secret) if missing.

    The boolean is True when this call created it. Two concurrent calls create one tenant: the
    loser of the unique-name race reads the winner's row.
    """
    check_tenant_name(name)
    existing = find_tenant(database, name)
    if existing is not None:
        return existing, False

    tenant = Tenant(id=new_id(), name=name, webhook_secret=generate_secret())
    try:
        with database.session() as session:
            session.add(tenant)
    except IntegrityError:
        winner = find_tenant(database, name)
        if winner is None:
            raise
        return winner, False
    log.info("tenant.created", tenant_id=tenant.id, tenant=name)
    return tenant, True


def create_api_key(database: Database, tenant_name: str, key_name: str | None = None) -> CreatedKey:
    """Create an API key for the tenant `tenant_name`, creating the tenant if it is missing."""
    if key_name is not None and len(key_name) > KEY_NAME_MAX_LENGTH:
        message = (
            f"Expected a key name of at most {KEY_NAME_MAX_LENGTH} characters, got {len(key_name)}."
        )
        raise InputError(message, code="invalid_key_name")
    tenant, _ = get_or_create_tenant(database, tenant_name)

    new_key = generate_api_key()
    with database.session() as session:
        session.add(
            ApiKey(
                key_id=new_key.key_id,
                tenant_id=tenant.id,
                key_hash=new_key.key_hash,
                name=key_name,
            )
        )
    log.info("api_key.created", key_id=new_key.key_id, tenant_id=tenant.id)
    return CreatedKey(new_key.plaintext, new_key.key_id, tenant.id, tenant.name)


def list_api_keys(database: Database, tenant_name: str) -> list[KeyInfo]:
    """Return the tenant's keys, oldest first, revoked ones included."""
    tenant = find_tenant(database, tenant_name)
    if tenant is None:
        raise NotFoundError(f"Tenant {tenant_name!r} was not found.", code="tenant_not_found")
    with database.session() as session:
        statement = select(ApiKey).where(ApiKey.tenant_id == tenant.id).order_by(ApiKey.created_at)
        return [
            KeyInfo(key.key_id, key.name, key.created_at, key.last_used_at, key.revoked_at)
            for key in session.scalars(statement)
        ]


def revoke_api_key(database: Database, key_id: str) -> bool:
    """Revoke the key `key_id`; return False when it was already revoked.

    Raises NotFoundError for an unknown key id.
    """
    with database.session() as session:
        key = session.get(ApiKey, key_id, with_for_update=True)
        if key is None:
            raise NotFoundError(f"API key {key_id[:40]!r} was not found.", code="key_not_found")
        if key.revoked_at is not None:
            return False
        key.revoked_at = utcnow()
        tenant_id = key.tenant_id
    log.info("api_key.revoked", key_id=key_id, tenant_id=tenant_id)
    return True


def authenticate(database: Database, token: str) -> str | None:
    """Return the tenant id of a valid, unrevoked API key, or None for any other token.

    The hash comparison is constant-time, and an unknown key id is compared against a dummy
    hash, so response times do not tell an unknown key from a wrong one.
    """
    if not is_well_formed(token):
        return None
    key_id = key_id_of(token)
    with database.session() as session:
        row = session.execute(
            select(ApiKey.key_hash, ApiKey.tenant_id, ApiKey.revoked_at, ApiKey.last_used_at).where(
                ApiKey.key_id == key_id
            )
        ).first()

    stored_hash = row.key_hash if row is not None else _UNKNOWN_KEY_HASH
    matches = verify_api_key(token, stored_hash)
    if row is None or not matches or row.revoked_at is not None:
        return None

    _touch_last_used(database, key_id, row.last_used_at)
    return str(row.tenant_id)


def _touch_last_used(database: Database, key_id: str, last_used_at: datetime | None) -> None:
    """Record the key's use, at most once per LAST_USED_RESOLUTION_S."""
    now = utcnow()
    stale_before = now - timedelta(seconds=LAST_USED_RESOLUTION_S)
    if last_used_at is not None and _aware(last_used_at) >= stale_before:
        return
    # The condition repeats in SQL, so of many concurrent requests at most one writes.
    with database.session() as session:
        session.execute(
            update(ApiKey)
            .where(ApiKey.key_id == key_id)
            .where((ApiKey.last_used_at.is_(None)) | (ApiKey.last_used_at < stale_before))
            .values(last_used_at=now)
        )


def _aware(moment: datetime) -> datetime:
    # SQLite returns naive datetimes; every stored time is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


def tenant_webhook_secret(
    database: Database, *, tenant_id: str | None = None, name: str = ""
) -> str:
    """Return the secret that signs the tenant's job and batch webhook_url deliveries.

    The tenant is named by id (API routes) or by name (the CLI). Raises NotFoundError when it
    does not exist.
    """
    with database.session() as session:
        tenant = _load_tenant(session, tenant_id, name)
        return tenant.webhook_secret


def rotate_webhook_secret(
    database: Database, *, tenant_id: str | None = None, name: str = ""
) -> str:
    """Replace the tenant's webhook_url signing secret with a new one and return it.

    Deliveries are signed when they are sent, so pending retries use the new secret too. No
    grace period signs with both secrets.
    """
    secret = generate_secret()
    with database.session() as session:
        tenant = _load_tenant(session, tenant_id, name, for_update=True)
        tenant.webhook_secret = secret
        rotated_id = tenant.id
    log.info("tenant.webhook_secret_rotated", tenant_id=rotated_id)
    return secret


def _load_tenant(
    session: Session, tenant_id: str | None, name: str, *, for_update: bool = False
) -> Tenant:
    if tenant_id is not None:
        tenant = session.get(Tenant, tenant_id, with_for_update=for_update)
    else:
        statement = select(Tenant).where(Tenant.name == name)
        tenant = session.scalars(statement.with_for_update() if for_update else statement).first()
    if tenant is None:
        shown = tenant_id if tenant_id is not None else name
        raise NotFoundError(f"Tenant {shown[:64]!r} was not found.", code="tenant_not_found")
    return tenant
