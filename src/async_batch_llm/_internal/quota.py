"""Recognise errors that say a hard quota is used up, where waiting out a cooldown cannot help.

Providers answer both a per-minute rate limit and an exhausted daily or billing quota with
HTTP 429, so the status alone cannot tell them apart; the error body can:

* Gemini lists ``google.rpc.QuotaFailure`` violations; a ``quotaId`` containing ``PerDay``
  (e.g. ``GenerateRequestsPerDayPerProjectPerModel-FreeTier``) is a daily quota.
* OpenAI sends the code/type ``insufficient_quota`` for an account out of credit.
* Anthropic sends ``error_code`` ``enforced_spend_limit_reached`` (inside ``error.details``)
  when the workspace's spend limit is reached.
* pydantic-ai raises ``ModelQuotaExceededError`` for these (and for Anthropic's
  ``billing_error`` or an HTTP 402).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from async_batch_llm._internal.exception_chain import exception_chain
from async_batch_llm._internal.optional import loaded
from async_batch_llm._internal.rate_control.scope import QuotaExhaustedError

__all__ = ["QUOTA_EXHAUSTED_CATEGORY", "is_quota_exhausted"]

#: ``ErrorInfo.error_category`` of an exhausted hard quota.
QUOTA_EXHAUSTED_CATEGORY: Final = "quota_exhausted"

_HARD_QUOTA_CODES: Final = frozenset({"insufficient_quota", "enforced_spend_limit_reached"})
_QUOTA_FAILURE_TYPE: Final = "google.rpc.QuotaFailure"
_DAILY_QUOTA_MARKER: Final = "perday"


def is_quota_exhausted(exc: BaseException) -> bool:
    """Whether ``exc``, or an error it was raised from, reports an exhausted hard quota.

    Looks at pydantic-ai's ``ModelQuotaExceededError``, string ``code``/``type`` attributes
    (OpenAI SDK errors, pydantic-ai's ``provider_error_code``), the error body at ``details``
    (google-genai) or ``body``, and the message. Never raises.
    """
    for candidate in exception_chain(exc):
        try:
            if _reports_exhausted_quota(candidate):
                return True
        except Exception:
            # An attribute that raises, or a body of an unexpected shape: no evidence.
            continue
    return False


def _reports_exhausted_quota(exc: BaseException) -> bool:
    if isinstance(exc, QuotaExhaustedError):
        return True
    quota_error = loaded("pydantic_ai.exceptions", "ModelQuotaExceededError")
    if quota_error is not None and isinstance(exc, quota_error):
        return True
    for attribute in ("code", "type", "error_code", "provider_error_code", "provider_error_type"):
        if _is_hard_quota_code(getattr(exc, attribute, None)):
            return True
    for attribute in ("details", "body"):
        if _body_reports_exhausted_quota(getattr(exc, attribute, None)):
            return True
    message = str(exc).lower()
    return any(code in message for code in _HARD_QUOTA_CODES)


def _is_hard_quota_code(value: object) -> bool:
    return isinstance(value, str) and value.lower() in _HARD_QUOTA_CODES


def _body_reports_exhausted_quota(body: object) -> bool:
    # Accepted shapes: the whole body ``{"error": {...}}``, the inner error object, or a list
    # of either (some Google endpoints wrap the body in a one-element array).
    if isinstance(body, list | tuple):
        return any(_body_reports_exhausted_quota(element) for element in body)
    if not isinstance(body, Mapping):
        return False
    error = body.get("error")
    if isinstance(error, Mapping):
        body = error
    for key in ("code", "type", "status", "error_code"):
        if _is_hard_quota_code(body.get(key)):
            return True
    details = body.get("details")
    if isinstance(details, Mapping):  # Anthropic: {"details": {"error_code": ...}}
        return _is_hard_quota_code(details.get("error_code"))
    if not isinstance(details, list | tuple):
        return False
    return any(_is_daily_quota_failure(detail) for detail in details)


def _is_daily_quota_failure(detail: object) -> bool:
    if not isinstance(detail, Mapping):
        return False
    detail_type = detail.get("@type")
    if not isinstance(detail_type, str) or not detail_type.endswith(_QUOTA_FAILURE_TYPE):
        return False
    violations = detail.get("violations")
    if not isinstance(violations, list | tuple):
        return False
    for violation in violations:
        if not isinstance(violation, Mapping):
            continue
        quota_id = violation.get("quotaId")
        if isinstance(quota_id, str) and _DAILY_QUOTA_MARKER in quota_id.lower():
            return True
    return False
