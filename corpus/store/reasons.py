"""One line for a storage SDK error, wherever it is printed (CLI, upload failures, status).

The SDK is imported inside the function: callers such as ``corpus upload`` must not pay for
loading it unless an SDK error actually happened.
"""

from __future__ import annotations

AZURITE_HINT = "is Azurite running? `./dev azurite` starts it"


def azure_reason(exc: BaseException, unreachable_hint: str = "") -> str:
    """Status, service error code and the first line of the message; for an unreachable service,
    ``unreachable_hint`` is appended (the CLI suggests starting Azurite). Credentials redacted."""
    from corpus.domain.display import redact

    return redact(_reason(exc, unreachable_hint))


def _reason(exc: BaseException, unreachable_hint: str) -> str:
    from azure.core.exceptions import ClientAuthenticationError, HttpResponseError, ServiceRequestError

    if isinstance(exc, ServiceRequestError):
        return f"cannot reach storage ({exc.message})" + (f"; {unreachable_hint}" if unreachable_hint else "")
    if isinstance(exc, ClientAuthenticationError):
        return f"storage refused our credentials: {_first_line(exc.message or str(exc))}"
    if isinstance(exc, HttpResponseError):
        code = getattr(exc, "error_code", None)
        code = str(getattr(code, "value", code) or "")
        return f"storage error {exc.status_code} {code}: {_first_line(exc.message or str(exc))}".replace("  ", " ")
    return f"{type(exc).__name__}: {exc}"


def _first_line(text: str) -> str:
    return text.splitlines()[0] if text else ""
