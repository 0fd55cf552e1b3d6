"""Result file routes under /v1: one page's JSON and one figure crop of a job.

These are also the links GET /v1/jobs/{id}/result?links=true gives when the storage is a local
folder (file://), which has no presigned URLs.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Response

from api.auth import AUTH_DEPENDENCIES, AUTH_RESPONSES, CallerDep
from api.deps import JobServiceDep
from api.routes.jobs import API_PREFIX, parse_job_id
from api.schemas import ErrorBody, PageResultPublic
from core.errors import NotFoundError
from core.results import page_document, read_figure
from core.states import PageStatus

# Far above any page limit; keeps the path parameter a small integer.
MAX_PAGE_INDEX = 1_000_000

router = APIRouter(
    prefix=API_PREFIX, tags=["results"], dependencies=AUTH_DEPENDENCIES, responses=AUTH_RESPONSES
)

_STORAGE_DOWN: dict[int | str, dict[str, Any]] = {
    503: {
        "model": ErrorBody,
        "description": "the storage is unreachable for now",
        "headers": {
            "Retry-After": {"description": "seconds to wait", "schema": {"type": "integer"}}
        },
    }
}


@router.get(
    "/jobs/{job_id}/pages/{page_index}",
    response_model=PageResultPublic,
    responses={404: {"model": ErrorBody, "description": "no such job, or the page is not done"}},
)
def read_page(
    job_id: str,
    page_index: Annotated[int, Path(ge=0, le=MAX_PAGE_INDEX, description="0-based")],
    service: JobServiceDep,
    caller: CallerDep,
) -> dict[str, Any]:
    """Return one finished page's result (blocks, markdown, figure names), even mid-job."""
    job_id = parse_job_id(job_id)
    job = service.get_job(job_id, tenant_id=caller.tenant_id)
    for page in job.pages:
        if page.page_index == page_index and page.status in (
            PageStatus.SUCCEEDED,
            PageStatus.FAILED,
        ):
            return page_document(page)
    message = f"Job {job_id} has no finished page {page_index} (0-based) yet."
    raise NotFoundError(message, code="page_not_found")


@router.get(
    "/jobs/{job_id}/figures/{name}",
    response_class=Response,
    responses={
        200: {
            "content": {"image/jpeg": {"schema": {"type": "string", "format": "binary"}}},
            "description": "the figure crop",
        },
        404: {"model": ErrorBody, "description": "no such job or figure"},
        **_STORAGE_DOWN,
    },
)
def read_figure_file(job_id: str, name: str, service: JobServiceDep, caller: CallerDep) -> Response:
    """Return one figure crop, named `{page}_{k}.jpg` as in the markdown's image links."""
    job_id = parse_job_id(job_id)
    service.get_job(job_id, tenant_id=caller.tenant_id)
    data = read_figure(service.storage, job_id, name)
    return Response(data, media_type="image/jpeg")
