"""core.tenants and core.idempotency_store against PostgreSQL: keys, authentication, records."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from datetime import timedelta

import pytest
from sqlalchemy import func, select, text, update

from core.apikeys import hash_api_key
from core.db import Database, upgrade_database
from core.errors import ConflictError, InputError, NotFoundError
from core.idempotency_store import (
    IdempotencyKeyTaken,
    IdempotentRequest,
    find_original,
    purge_expired,
    record_key,
)
from core.jobs import JobService
from core.settings import Settings
from core.storage import open_storage
from core.tables import ApiKey, IdempotencyRecord, Tenant, utcnow
from core.tenants import (
    LAST_USED_RESOLUTION_S,
    authenticate,
    check_tenant_name,
    create_api_key,
    get_or_create_tenant,
    list_api_keys,
    revoke_api_key,
)
from tests.conftest import PostgresServer

pytestmark = pytest.mark.services


@pytest.fixture(scope="module")
def database(postgres_server: PostgresServer) -> Iterator[Database]:
    """A migrated PostgreSQL database of this module's own."""
    url = postgres_server.create_database()
    upgrade_database(url)
    built = Database(url)
    yield built
    built.dispose()


def unique_name(prefix: str = "tenant") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def make_request(key: str, fingerprint: str = "f1", ttl_s: int = 60) -> IdempotentRequest:
    return IdempotentRequest.build("scope-tenant", key, fingerprint, "job", ttl_s)


def test_create_api_key_creates_tenant_with_webhook_secret(database: Database) -> None:
    name = unique_name()

    created = create_api_key(database, name, "ci")

    with database.session() as session:
        tenant = session.get(Tenant, created.tenant_id)
    assert tenant is not None
    assert tenant.name == name
    assert tenant.webhook_secret.startswith("whsec_")
    assert created.tenant_name == name
    assert created.plaintext.startswith(created.key_id)


def test_create_api_key_reuses_existing_tenant(database: Database) -> None:
    name = unique_name()

    first = create_api_key(database, name)
    second = create_api_key(database, name)

    assert first.tenant_id == second.tenant_id
    assert first.key_id != second.key_id


def test_api_key_stored_only_as_hash(database: Database) -> None:
    """No column of any row in tenants or api_keys contains the plaintext key."""
    created = create_api_key(database, unique_name())

    with database.session() as session:
        key = session.get(ApiKey, created.key_id)
        dumps = [
            str(row)
            for table in ("tenants", "api_keys")
            for row in session.execute(text(f"SELECT * FROM {table}"))
        ]
    assert key is not None
    assert key.key_hash == hash_api_key(created.plaintext)
    assert all(created.plaintext not in dump for dump in dumps)
    assert any(created.key_id in dump for dump in dumps)


def test_authenticate_returns_tenant_of_valid_key(database: Database) -> None:
    created = create_api_key(database, unique_name())

    assert authenticate(database, created.plaintext) == created.tenant_id


@pytest.mark.parametrize(
    "token",
    [
        "",
        "not-a-key",
        "ocrq_" + "A" * 43,  # well-formed, unknown key id
        "ocrq_" + "A" * 42,  # one character short
    ],
)
def test_authenticate_rejects_unknown_token(database: Database, token: str) -> None:
    assert authenticate(database, token) is None


def test_authenticate_rejects_wrong_secret_of_known_key_id(database: Database) -> None:
    created = create_api_key(database, unique_name())
    last_char = "B" if created.plaintext[-1] != "B" else "C"
    forged = created.plaintext[:-1] + last_char

    assert authenticate(database, forged) is None


def test_authenticate_rejects_revoked_key(database: Database) -> None:
    created = create_api_key(database, unique_name())

    first_revoke = revoke_api_key(database, created.key_id)
    second_revoke = revoke_api_key(database, created.key_id)

    assert authenticate(database, created.plaintext) is None
    assert first_revoke is True
    assert second_revoke is False


def test_revoke_unknown_key_raises_not_found(database: Database) -> None:
    with pytest.raises(NotFoundError) as caught:
        revoke_api_key(database, "ocrq_unknown1")

    assert caught.value.code == "key_not_found"


def test_authenticate_updates_last_used_at_sparingly(database: Database) -> None:
    """The first use is recorded; a use within LAST_USED_RESOLUTION_S writes nothing."""
    created = create_api_key(database, unique_name())

    authenticate(database, created.plaintext)
    with database.session() as session:
        first = session.get(ApiKey, created.key_id)
    authenticate(database, created.plaintext)
    with database.session() as session:
        second = session.get(ApiKey, created.key_id)
    with database.session() as session:
        stale = utcnow() - timedelta(seconds=LAST_USED_RESOLUTION_S + 5)
        session.execute(
            update(ApiKey).where(ApiKey.key_id == created.key_id).values(last_used_at=stale)
        )
    authenticate(database, created.plaintext)
    with database.session() as session:
        third = session.get(ApiKey, created.key_id)

    assert first is not None
    assert second is not None
    assert third is not None
    assert first.last_used_at is not None
    assert second.last_used_at == first.last_used_at
    assert third.last_used_at is not None
    assert third.last_used_at > stale


def test_list_api_keys_shows_only_tenants_keys(database: Database) -> None:
    name = unique_name()
    mine = create_api_key(database, name, "first")
    create_api_key(database, unique_name(), "someone else's")
    revoke_api_key(database, mine.key_id)

    keys = list_api_keys(database, name)

    assert [key.key_id for key in keys] == [mine.key_id]
    assert keys[0].name == "first"
    assert keys[0].revoked_at is not None


def test_list_api_keys_of_unknown_tenant_raises(database: Database) -> None:
    with pytest.raises(NotFoundError) as caught:
        list_api_keys(database, unique_name())

    assert caught.value.code == "tenant_not_found"


@pytest.mark.parametrize("name", ["", "has space", "-leading-dash", "x" * 129, "naïve"])
def test_check_tenant_name_rejects_invalid(name: str) -> None:
    with pytest.raises(InputError) as caught:
        check_tenant_name(name)

    assert caught.value.code == "invalid_tenant_name"


def test_get_or_create_tenant_reports_creation(database: Database) -> None:
    name = unique_name()

    first, first_created = get_or_create_tenant(database, name)
    second, second_created = get_or_create_tenant(database, name)

    assert (first_created, second_created) == (True, False)
    assert second.id == first.id


def test_find_original_returns_resource_for_same_fingerprint(database: Database) -> None:
    request = make_request(unique_name("key"))
    with database.session() as session:
        record_key(session, request, "resource-1")

    assert find_original(database, request) == "resource-1"


def test_find_original_rejects_different_fingerprint(database: Database) -> None:
    key = unique_name("key")
    with database.session() as session:
        record_key(session, make_request(key, "f1"), "resource-1")

    with pytest.raises(ConflictError) as caught:
        find_original(database, make_request(key, "f2"))

    assert caught.value.code == "idempotency_key_reused"
    assert key in caught.value.message


def test_record_key_raises_taken_for_live_record(database: Database) -> None:
    request = make_request(unique_name("key"))
    with database.session() as session:
        record_key(session, request, "resource-1")

    with pytest.raises(IdempotencyKeyTaken), database.session() as session:
        record_key(session, request, "resource-2")

    assert find_original(database, request) == "resource-1"


def test_record_key_replaces_expired_record(database: Database) -> None:
    request = make_request(unique_name("key"))
    with database.session() as session:
        record_key(session, request, "resource-1")
    expire(database, request)

    missing_after_expiry = find_original(database, request)
    with database.session() as session:
        record_key(session, make_request(request.key, "other"), "resource-2")

    assert missing_after_expiry is None
    assert find_original(database, make_request(request.key, "other")) == "resource-2"


def test_purge_expired_deletes_only_expired_records(database: Database) -> None:
    live = make_request(unique_name("key"))
    old = make_request(unique_name("key"))
    with database.session() as session:
        record_key(session, live, "resource-live")
        record_key(session, old, "resource-old")
    expire(database, old)

    purged = purge_expired(database)

    assert purged >= 1
    assert count_records(database, old.key) == 0
    assert count_records(database, live.key) == 1


def test_sweep_purges_expired_records(
    database: Database, make_settings: Callable[..., Settings]
) -> None:
    """The workers' periodic JobService.sweep() is what removes expired records."""
    settings = make_settings(database_url=database.url)
    service = JobService(settings, database, open_storage(settings))
    old = make_request(unique_name("key"))
    with database.session() as session:
        record_key(session, old, "resource-old")
    expire(database, old)

    service.sweep()

    assert count_records(database, old.key) == 0


def test_idempotent_request_scopes_no_tenant_to_dash() -> None:
    request = IdempotentRequest.build(None, "k", "f", "batch", 60)

    assert request.scope == "-"
    assert request.resource_type == "batch"


def test_idempotent_request_rejects_invalid_key() -> None:
    with pytest.raises(InputError) as caught:
        IdempotentRequest.build("tenant", "bad\nkey", "f", "job", 60)

    assert caught.value.code == "invalid_idempotency_key"


def expire(database: Database, request: IdempotentRequest) -> None:
    """Move the record's expiry one second into the past."""
    with database.session() as session:
        session.execute(
            update(IdempotencyRecord)
            .where(IdempotencyRecord.scope == request.scope)
            .where(IdempotencyRecord.key == request.key)
            .values(expires_at=utcnow() - timedelta(seconds=1))
        )


def count_records(database: Database, key: str) -> int:
    with database.session() as session:
        statement = select(func.count()).where(IdempotencyRecord.key == key)
        return session.scalar(statement) or 0
