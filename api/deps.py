"""Dependencies of the routes: the job service (settings, database, storage) of this app.

create_app builds one JobService per app and routes read it through FastAPI's Depends, so tests
can build an app on their own settings.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from core.jobs import JobService


def get_job_service(request: Request) -> JobService:
    service: JobService = request.app.state.job_service
    return service


JobServiceDep = Annotated[JobService, Depends(get_job_service)]
