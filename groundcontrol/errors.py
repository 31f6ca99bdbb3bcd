"""Errors that Ground Control turns into JSON responses.

Every error that reaches a client has a stable machine-readable ``code`` and a human
``message``; the HTTP status is a property of the code, and every code is registered in
``CODES`` below (a code missing from it is a bug, refused when the error is made). They
are raised deep (store, registration, publishing) and turned into
``{"error": {"code", "message"}}`` in exactly one place, the exception handler in
:mod:`groundcontrol.app`; the OpenAPI document lists the codes from the same table.

The classes name the kind of failure and give a default code::

    GroundControlError       500  internal_error
    ├── BadRequest           400  invalid_request and the invalid_* codes
    ├── Unauthorized         401  unauthorized / invalid_join_token
    ├── Forbidden            403  forbidden / satellite_revoked / csrf_failed
    ├── NotFound             404  not_found / <kind>_not_found
    ├── Conflict             409  conflict / <kind>_exists / group_in_use / publish_conflict
    ├── PayloadTooLarge      413  payload_too_large
    ├── UnsupportedMediaType 415  unsupported_media_type
    ├── Unprocessable        422  image_not_found / registry_not_configured / harbor_not_configured
    ├── TooManyRequests      429  rate_limited
    ├── UpstreamError        502  registry_unavailable / registry_unauthorized / digest_mismatch
    │   └── HarborError      502  harbor_error (with Harbor's own status)
    └── Unavailable          503  signing_unavailable / too_many_waiters / ...
"""

from __future__ import annotations

# code -> HTTP status: every code a client can see
CODES: dict[str, int] = {
    # 400
    "invalid_request": 400,
    "invalid_json": 400,
    "invalid_form": 400,
    "unknown_field": 400,
    "confirmation_required": 400,
    "invalid_checkins": 400,
    "invalid_config": 400,
    "invalid_credential": 400,
    "invalid_group": 400,
    "invalid_groups": 400,
    "invalid_image": 400,
    "invalid_images": 400,
    "invalid_labels": 400,
    "invalid_name": 400,
    "invalid_public_key": 400,
    "invalid_registry": 400,
    "invalid_satellite": 400,
    "invalid_status": 400,
    "invalid_threshold": 400,
    "invalid_ttl": 400,
    "invalid_version": 400,
    "invalid_wait": 400,
    "invalid_before": 400,
    "invalid_have": 400,
    "invalid_limit": 400,
    "invalid_page": 400,
    "invalid_q": 400,
    "invalid_sort": 400,
    "invalid_window": 400,
    "state_invalid": 400,  # a bundle export whose stored state does not verify
    "reports_invalid": 400,  # carried-back reports that cannot be read
    "inventory_invalid": 400,  # a delta bundle's inventory that cannot be read
    "reports_not_found": 404,
    "http_error": 400,  # another status the framework answered with (kept as it gave it)
    # 401, 403
    "unauthorized": 401,
    "invalid_join_token": 401,
    "forbidden": 403,
    "satellite_revoked": 403,
    "csrf_failed": 403,
    # 404, 405
    "not_found": 404,
    "credential_not_found": 404,
    "group_not_found": 404,
    "root_not_found": 404,
    "satellite_not_found": 404,
    "state_not_found": 404,
    "token_not_found": 404,
    "method_not_allowed": 405,
    # 408, 409, 413, 415
    "request_timeout": 408,
    "conflict": 409,
    "group_exists": 409,
    "group_in_use": 409,
    "publish_conflict": 409,
    "root_exists": 409,
    "satellite_exists": 409,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    # 422, 429
    "unprocessable": 422,
    "image_not_found": 422,
    "registry_not_configured": 422,
    "harbor_not_configured": 422,
    "rate_limited": 429,
    # 500, 502, 503
    "internal_error": 500,
    "registry_unavailable": 502,
    "registry_unauthorized": 502,
    "digest_mismatch": 502,
    "harbor_error": 502,
    "unavailable": 503,
    "signing_unavailable": 503,
    "root_keys_unavailable": 503,
    "no_root": 503,
    "bad_key_file": 503,
    "bad_secrets_key": 503,
    "bad_sealed_secret": 503,
    "too_many_waiters": 503,
}

# what the framework's own answers (no route, wrong method, body too large) are called
FRAMEWORK_CODES = {404: "not_found", 405: "method_not_allowed", 413: "payload_too_large"}


class GroundControlError(Exception):
    code = "internal_error"  # the class's default code

    def __init__(self, message: str, *, code: str | None = None) -> None:
        super().__init__(message)
        code = code or type(self).code
        if code not in CODES:
            raise ValueError(f"error code {code!r} is not registered in groundcontrol.errors")
        self.message = message
        self.code = code
        self.status = CODES[code]

    def to_dict(self) -> dict[str, dict[str, str]]:
        return {"error": {"code": self.code, "message": self.message}}


class BadRequest(GroundControlError):
    code = "invalid_request"


class Unauthorized(GroundControlError):
    code = "unauthorized"


class Forbidden(GroundControlError):
    code = "forbidden"


class NotFound(GroundControlError):
    code = "not_found"


class Conflict(GroundControlError):
    code = "conflict"


class PayloadTooLarge(GroundControlError):
    code = "payload_too_large"


class UnsupportedMediaType(GroundControlError):
    code = "unsupported_media_type"


class Unprocessable(GroundControlError):
    code = "unprocessable"


class TooManyRequests(GroundControlError):
    code = "rate_limited"


class UpstreamError(GroundControlError):
    code = "registry_unavailable"


class Unavailable(GroundControlError):
    code = "unavailable"


class HarborError(UpstreamError):
    code = "harbor_error"

    def __init__(self, message: str, *, http_status: int | None = None) -> None:
        super().__init__(message)
        self.http_status = http_status  # Harbor's answer, when it gave one
