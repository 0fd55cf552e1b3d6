"""Choose which pages run next: job priority first, then fair share between tenants.

Page rows are the ready queue. A worker claims pages with claim_pages(), which leases them by a
compare-and-set on pages.lease_token. That token then fences every write of the page. Broker
messages only wake workers, so any page message may run any claimable page, and the database
order (not the broker's) decides that a high-priority page overtakes a low-priority backlog.

A page is claimable when its job is running and the page is pending, or running under a lease
whose heartbeat is older than PAGE_LEASE_TTL_S (its worker died). A tenant with
max_pages_in_flight pages running gets nothing more until one of them ends.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import ColumnElement, and_, case, func, or_, select, update
from sqlalchemy.orm import Session

from core.db import Database
from core.settings import Settings
from core.states import JobStatus, PageStatus
from core.tables import Job, Page, Tenant, utcnow

# Sort rank of each job priority; a lower rank runs first.
PRIORITY_RANKS = {"high": 0, "normal": 1, "low": 2}
# A page task refreshes pages.heartbeat_at this often; a running page whose heartbeat is older
# than PAGE_LEASE_TTL_S has lost its worker and may be claimed again.
PAGE_HEARTBEAT_INTERVAL_S = 20.0
PAGE_LEASE_TTL_S = 90
# PostgreSQL advisory lock key that serialises claims ("ocrq" in ASCII).
CLAIM_LOCK_KEY = 0x6F637271
# claim_pages() retries this many times when another worker claimed its pick first.
_CLAIM_TRIES = 5
# Tenant key of jobs that belong to no tenant (embedded mode, auth off); they share one limit.
_NO_TENANT = ""


@dataclass(frozen=True)
class PageClaim:
    """Pages of one job leased together; `tokens[i]` fences the writes of `page_indexes[i]`."""

    job_id: str
    page_indexes: tuple[int, ...]
    tokens: tuple[int, ...]
    # Times each page has been claimed, this claim included.
    attempts: tuple[int, ...]


def claimable(now: datetime) -> ColumnElement[bool]:
    """Return the condition on Page that makes a page claimable at `now` (its job aside)."""
    stale = now - timedelta(seconds=PAGE_LEASE_TTL_S)
    abandoned = and_(
        Page.status == PageStatus.RUNNING,
        or_(Page.heartbeat_at.is_(None), Page.heartbeat_at < stale),
    )
    return or_(Page.status == PageStatus.PENDING, abandoned)


def in_flight(now: datetime) -> ColumnElement[bool]:
    """Return the condition on Page of a page running under a live lease."""
    stale = now - timedelta(seconds=PAGE_LEASE_TTL_S)
    return and_(Page.status == PageStatus.RUNNING, Page.heartbeat_at >= stale)


def claim_pages(
    database: Database,
    settings: Settings,
    *,
    job_id: str | None = None,
    max_pages: int = 1,
    fair_share: bool = True,
) -> PageClaim | None:
    """Lease up to `max_pages` claimable pages of the best job; None when nothing may run now.

    With `job_id`, only that job's pages are considered. With fair_share False the tenant limit
    is ignored (`ocrq run` works through one job in one process). On PostgreSQL claims take a
    transaction-level advisory lock, so two workers never both pass a tenant's limit check;
    SQLite serialises writers by itself.
    """
    for _ in range(_CLAIM_TRIES):
        now = utcnow()
        with database.session() as session:
            if session.get_bind().dialect.name == "postgresql":
                session.execute(select(func.pg_advisory_xact_lock(CLAIM_LOCK_KEY)))
            chosen = _pick_job(session, settings, now, job_id, fair_share)
            if chosen is None:
                return None
            claim = _lease_pages(session, chosen, now, max_pages)
        if claim is not None:
            return claim
    return None


def waiting_pages(database: Database, *, job_id: str | None = None) -> int:
    """Return how many pages of running jobs are claimable now, the tenant limits aside."""
    statement = (
        select(func.count())
        .select_from(Page)
        .join(Job, Job.id == Page.job_id)
        .where(Job.status == JobStatus.RUNNING, claimable(utcnow()))
    )
    if job_id is not None:
        statement = statement.where(Page.job_id == job_id)
    with database.session() as session:
        return int(session.scalar(statement) or 0)


def tenant_limit(settings: Settings, override: int | None) -> int:
    """Return a tenant's limit on pages in flight: its own override, else the setting."""
    return override if override is not None else settings.tenant_max_pages_in_flight


def _pick_job(
    session: Session, settings: Settings, now: datetime, job_id: str | None, fair_share: bool
) -> str | None:
    """Return the job whose pages run next, or None when no page may start now.

    Tenants are ordered by their best job's priority, then by fewest pages in flight, then by
    the longest wait since their last page started, so tenants of equal priority take turns.
    """
    statement = (
        select(Job.id, Job.tenant_id, Job.priority, Job.created_at)
        .where(Job.status == JobStatus.RUNNING)
        .where(select(Page.id).where(Page.job_id == Job.id, claimable(now)).exists())
        .order_by(Job.created_at)
    )
    if job_id is not None:
        statement = statement.where(Job.id == job_id)
    candidates = session.execute(statement).all()
    if not candidates:
        return None

    # Each tenant's best job: highest priority, then oldest.
    best: dict[str, tuple[int, datetime, str]] = {}
    for row in candidates:
        tenant = row.tenant_id or _NO_TENANT
        key = (PRIORITY_RANKS.get(row.priority, 1), row.created_at, row.id)
        if tenant not in best or key < best[tenant]:
            best[tenant] = key
    if not fair_share:
        return min(best.values())[2]

    running, last_started = _tenant_activity(session, now, list(best))
    limits = _tenant_limits(session, settings, list(best))
    allowed = [tenant for tenant in best if running.get(tenant, 0) < limits[tenant]]
    if not allowed:
        return None
    never = datetime.min
    chosen = min(
        allowed,
        key=lambda tenant: (
            best[tenant][0],
            running.get(tenant, 0),
            _naive(last_started.get(tenant)) or never,
            best[tenant][1],
        ),
    )
    return best[chosen][2]


def _tenant_activity(
    session: Session, now: datetime, tenants: list[str]
) -> tuple[dict[str, int], dict[str, datetime]]:
    """Return each tenant's pages in flight and the start time of its latest page."""
    tenant = func.coalesce(Job.tenant_id, _NO_TENANT)
    live = func.sum(case((in_flight(now), 1), else_=0))
    statement = (
        select(tenant, live, func.max(Page.started_at))
        .select_from(Page)
        .join(Job, Job.id == Page.job_id)
        .where(Job.status == JobStatus.RUNNING, tenant.in_(tenants))
        .group_by(tenant)
    )
    running: dict[str, int] = {}
    last_started: dict[str, datetime] = {}
    for name, count, started in session.execute(statement).all():
        running[name] = int(count or 0)
        if started is not None:
            last_started[name] = started
    return running, last_started


def _tenant_limits(session: Session, settings: Settings, tenants: list[str]) -> dict[str, int]:
    overrides = dict(
        session.execute(
            select(Tenant.id, Tenant.max_pages_in_flight).where(Tenant.id.in_(tenants))
        ).all()
    )
    return {tenant: tenant_limit(settings, overrides.get(tenant)) for tenant in tenants}


def _lease_pages(session: Session, job_id: str, now: datetime, max_pages: int) -> PageClaim | None:
    """Lease up to `max_pages` claimable pages of `job_id`, lowest index first."""
    statement = (
        select(Page.id, Page.page_index, Page.lease_token, Page.attempts)
        .where(Page.job_id == job_id, claimable(now))
        .order_by(Page.page_index)
        .limit(max_pages)
    )
    indexes, tokens, attempts = [], [], []
    for row in session.execute(statement).all():
        # The compare-and-set on lease_token: of two workers racing for a page, one wins.
        leased = session.execute(
            update(Page)
            .where(Page.id == row.id, Page.lease_token == row.lease_token, claimable(now))
            .values(
                status=PageStatus.RUNNING,
                lease_token=row.lease_token + 1,
                heartbeat_at=now,
                attempts=row.attempts + 1,
                started_at=now,
            )
        )
        if int(leased.rowcount) == 1:  # type: ignore[attr-defined]
            indexes.append(row.page_index)
            tokens.append(row.lease_token + 1)
            attempts.append(row.attempts + 1)
    if not indexes:
        return None
    return PageClaim(job_id, tuple(indexes), tuple(tokens), tuple(attempts))


def _naive(moment: datetime | None) -> datetime | None:
    # SQLite returns naive datetimes and PostgreSQL aware ones; compare them as naive UTC.
    if moment is None or moment.tzinfo is None:
        return moment
    return moment.replace(tzinfo=None) - (moment.utcoffset() or timedelta(0))
