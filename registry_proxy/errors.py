"""The protocol's error codes, in one table, and the one exception that carries them.

Handlers raise ``RegistryError(code, message)`` anywhere; registry_proxy/edge.py turns
it (and the framework's own 404/405s, and unexpected exceptions) into the OCI error body
``{"errors": [{"code", "message", "detail"}]}`` with the status of the code. A code that
is not in the table is a bug, refused when the error is made.
"""

from __future__ import annotations

from typing import Any

# code -> HTTP status (distribution-spec v1.1 error codes, plus the statuses that
# distribution answers them with)
STATUS: dict[str, int] = {
    "BLOB_UNKNOWN": 404,
    "BLOB_UPLOAD_INVALID": 400,
    "BLOB_UPLOAD_UNKNOWN": 404,
    "DIGEST_INVALID": 400,
    "MANIFEST_BLOB_UNKNOWN": 400,
    "MANIFEST_INVALID": 400,
    "MANIFEST_UNKNOWN": 404,
    "NAME_INVALID": 400,
    "NAME_UNKNOWN": 404,
    "SIZE_INVALID": 400,
    "UNAUTHORIZED": 401,
    "DENIED": 403,
    "UNSUPPORTED": 405,
    "TOOMANYREQUESTS": 429,
    # not in the spec's table, but needed to answer every failure with the same body
    "RANGE_INVALID": 416,
    "PAGINATION_NUMBER_INVALID": 400,
    "NOT_FOUND": 404,  # a path that is no endpoint of the API
    "REQUEST_TIMEOUT": 408,  # a request body slower than the configured floor
    "UNAVAILABLE": 503,
    "UNKNOWN": 500,
}


class RegistryError(Exception):
    """A protocol error: code from STATUS, human message, optional JSON detail."""

    def __init__(
        self,
        code: str,
        message: str,
        detail: Any = None,
        *,
        status: int | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(f"{code}: {message}")
        if code not in STATUS:
            raise ValueError(f"{code} is not in registry_proxy.errors.STATUS")
        self.code = code
        self.message = message
        self.detail = detail
        self.status = status if status is not None else STATUS[code]
        self.headers = headers or {}

    def body(self) -> dict[str, Any]:
        entry: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.detail is not None:
            entry["detail"] = self.detail
        return {"errors": [entry]}
