"""Errors that Ground Control turns into JSON responses.

Every error that reaches a client has a stable machine-readable ``code`` and a human
``message``; the HTTP status is a property of the code. They are raised deep (store,
registration, publishing) and turned into ``{"error": {"code", "message"}}`` in exactly
one place, the exception handler in :mod:`groundcontrol.app`.

    GroundControlError
    ├── BadRequest          400  invalid_request / invalid_json / invalid_form / invalid_<field>
    │                            state_invalid / reports_invalid / inventory_invalid (bundles)
    │                            confirmation_required (a dashboard revocation unconfirmed)
    ├── Unauthorized        401  unauthorized
    ├── Forbidden           403  forbidden / satellite_revoked / csrf_failed
    ├── NotFound            404  not_found / <kind>_not_found (state_not_found: no state to
    │                            bundle; reports_not_found: no reports in the directory)
    ├── Conflict            409  <kind>_exists / group_in_use / ...
    ├── PayloadTooLarge     413  payload_too_large
    ├── UnsupportedMediaType 415 unsupported_media_type
    ├── Unprocessable       422  image_not_found / registry_not_configured / harbor_not_configured
    ├── TooManyRequests     429  rate_limited
    ├── UpstreamError       502  registry_unavailable / image_unresolvable / digest_mismatch
    └── Unavailable         503  signing_unavailable
"""

from __future__ import annotations


class GroundControlError(Exception):
    status = 500
    code = "internal_error"

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(GroundControlError):
    status = 400
    code = "invalid_request"


class Unauthorized(GroundControlError):
    status = 401
    code = "unauthorized"


class Forbidden(GroundControlError):
    status = 403
    code = "forbidden"


class NotFound(GroundControlError):
    status = 404
    code = "not_found"


class Conflict(GroundControlError):
    status = 409
    code = "conflict"


class PayloadTooLarge(GroundControlError):
    status = 413
    code = "payload_too_large"


class UnsupportedMediaType(GroundControlError):
    status = 415
    code = "unsupported_media_type"


class Unprocessable(GroundControlError):
    status = 422
    code = "unprocessable"


class TooManyRequests(GroundControlError):
    status = 429
    code = "rate_limited"


class UpstreamError(GroundControlError):
    status = 502
    code = "registry_unavailable"


class Unavailable(GroundControlError):
    status = 503
    code = "unavailable"
