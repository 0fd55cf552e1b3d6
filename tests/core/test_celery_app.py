"""core.celery_app: worker settings, and enqueueing by task name or in-process."""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator

import pytest
import redis

from core.celery_app import (
    MESSAGE_PRIORITIES,
    QUEUE_OCR,
    TASK_PROCESS_JOB,
    create_celery_app,
    enqueue_job,
    set_embedded_runner,
)
from core.errors import ConfigError, TransientError
from core.settings import Settings


@pytest.fixture(autouse=True)
def no_embedded_runner() -> Iterator[None]:
    set_embedded_runner(None)
    yield
    set_embedded_runner(None)


def test_app_acks_late_and_prefetches_one(make_settings: Callable[..., Settings]) -> None:
    conf = create_celery_app(make_settings(broker_url="redis://127.0.0.1:6379/0")).conf

    assert conf.task_acks_late is True
    assert conf.task_reject_on_worker_lost is True
    assert conf.worker_prefetch_multiplier == 1
    assert conf.task_ignore_result is True
    assert conf.task_default_queue == QUEUE_OCR


def test_visibility_timeout_exceeds_twice_time_limit(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(broker_url="redis://127.0.0.1:6379/0", task_time_limit_s=900)

    conf = create_celery_app(settings).conf

    assert conf.task_time_limit == 900
    assert conf.broker_transport_options["visibility_timeout"] > 2 * 900
    assert conf.task_soft_time_limit < conf.task_time_limit


def test_app_without_broker_is_config_error(make_settings: Callable[..., Settings]) -> None:
    with pytest.raises(ConfigError, match="OCRQ_BROKER_URL"):
        create_celery_app(make_settings())


def test_embedded_enqueue_calls_registered_runner(make_settings: Callable[..., Settings]) -> None:
    calls: list[str] = []
    set_embedded_runner(calls.append)

    enqueue_job("job-1", make_settings())

    assert calls == ["job-1"]


def test_embedded_enqueue_without_runner_is_transient(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(TransientError, match="in-process runner"):
        enqueue_job("job-1", make_settings())


def test_enqueue_sends_task_by_name_to_redis(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    client = redis.Redis.from_url(redis_url)
    client.delete(QUEUE_OCR)

    enqueue_job("job-2", make_settings(broker_url=redis_url), priority="high")

    messages = client.lrange(QUEUE_OCR, 0, -1)
    client.delete(QUEUE_OCR)
    assert len(messages) == 1
    envelope = json.loads(messages[0])
    assert envelope["headers"]["task"] == TASK_PROCESS_JOB
    assert envelope["headers"]["argsrepr"] == "['job-2']"


def test_enqueue_to_unreachable_broker_fails_fast(make_settings: Callable[..., Settings]) -> None:
    settings = make_settings(broker_url="redis://127.0.0.1:1/0")
    started = time.monotonic()

    with pytest.raises(TransientError, match="did not accept job"):
        enqueue_job("job-3", settings)

    assert time.monotonic() - started < 15


def test_low_priority_goes_to_its_own_redis_list(
    make_settings: Callable[..., Settings], redis_url: str
) -> None:
    """kombu keeps one Redis list per priority step; the worker drains step 0 first."""
    client = redis.Redis.from_url(redis_url)
    low_list = f"{QUEUE_OCR}\x06\x16{MESSAGE_PRIORITIES['low']}"
    client.delete(QUEUE_OCR, low_list)

    enqueue_job("job-4", make_settings(broker_url=redis_url), priority="low")

    low_length = client.llen(low_list)
    high_length = client.llen(QUEUE_OCR)
    client.delete(QUEUE_OCR, low_list)
    assert low_length == 1
    assert high_length == 0
