"""Which cloud failures are transient, and how the cloud's errors become snapbuild's (DESIGN rule 7).

Only idempotent calls (GET, DELETE) are retried, and only on 5xx or a dropped connection.
Creates are never retried: a failed create is undone and the build fails.
Over-quota answers (Nova 403, Neutron 409 OverQuota, Cinder 413) are never retried.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import TypeVar

import tenacity
from keystoneauth1 import exceptions as ksa_exc
from openstack import exceptions as sdk_exc

from snapbuild.errors import CloudError

log = logging.getLogger(__name__)

T = TypeVar("T")

_QUOTA_WORDS = ("quota", "overquota", "over quota", "exceeded")


class QuotaExceeded(CloudError):
    """The cloud refused a create because a quota is used up."""


def is_transient(exc: BaseException) -> bool:
    if isinstance(exc, sdk_exc.HttpException):
        return exc.status_code is not None and exc.status_code >= 500 and exc.status_code != 501
    # keystoneauth connection errors come unwrapped (connection reset, refused, timeout)
    return isinstance(exc, ksa_exc.ConnectionError)


def may_still_be_made(exc: BaseException) -> bool:
    """Whether a create that failed so may still be carried out by the cloud. Only the service's own refusal (a
    4xx answer) says it made nothing; no answer (an interrupt, a dropped or timed-out connection), a gateway's
    5xx (the service behind it may be working on it) or anything unrecognised leaves it open."""
    cause = exc.__cause__ if isinstance(exc, CloudError) and exc.__cause__ is not None else exc
    status = cause.status_code if isinstance(cause, sdk_exc.HttpException) else \
        cause.http_status if isinstance(cause, ksa_exc.HttpError) else None
    if isinstance(status, int):
        return status >= 500
    return True


def is_over_quota(exc: BaseException) -> bool:
    if not isinstance(exc, sdk_exc.HttpException):
        return False
    text = f"{exc.message} {exc.details or ''}".lower()
    if exc.status_code == 413:
        return True
    return exc.status_code in (403, 409) and any(word in text for word in _QUOTA_WORDS)


def cloud_message(exc: BaseException) -> str:
    """The cloud's own words, without openstacksdk's URL noise."""
    if isinstance(exc, sdk_exc.HttpException):
        details = str(exc.details or "").strip()
        status = f"HTTP {exc.status_code}" if exc.status_code else "HTTP error"
        return f"{status}: {details}" if details else f"{status}: {exc.message}"
    if isinstance(exc, ksa_exc.ClientException):
        return f"{type(exc).__name__}: {exc}"
    return str(exc)


def translate(exc: BaseException, what: str) -> CloudError:
    """A CloudError (or QuotaExceeded) that says what snapbuild was doing and what the cloud said."""
    if is_over_quota(exc):
        return QuotaExceeded(f"{what}: quota exceeded: {cloud_message(exc)}",
                             hint="free resources (snapbuild cleanup) or ask for more quota; "
                                  "a smaller --flavor may fit")
    return CloudError(f"{what}: {cloud_message(exc)}")


def retrying(sleep: Callable[[float], None], *, attempts: int = 4, max_delay: float = 60.0) -> tenacity.Retrying:
    """A retry policy for idempotent calls only; never wrap a create in this."""
    return tenacity.Retrying(
        retry=tenacity.retry_if_exception(is_transient),
        stop=tenacity.stop_after_attempt(attempts) | tenacity.stop_before_delay(max_delay),
        wait=tenacity.wait_exponential_jitter(initial=1, max=10),
        sleep=sleep,
        reraise=True,
        before_sleep=lambda state: log.warning("transient cloud error (%s); retrying",
                                               state.outcome.exception() if state.outcome else "?"),
    )
