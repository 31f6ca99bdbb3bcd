"""The OpenAPI 3.1 document, generated from the endpoint table so it cannot drift."""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

from groundcontrol.api.base import Endpoint
from groundcontrol.errors import CODES

_PARAM = re.compile(r"{(\w+)}")

# the codes and their statuses come from the one table in groundcontrol.errors
ERROR_SCHEMA = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string", "enum": sorted(CODES)},
                "message": {"type": "string"},
                # internal_error only: the id its traceback is logged under
                "request_id": {"type": "string"},
            },
        }
    },
    "x-error-codes": {code: CODES[code] for code in sorted(CODES)},
}

_SECURITY: dict[str, list[dict[str, list[str]]]] = {
    "public": [],
    "join": [],
    "operator": [{"operatorToken": []}],
    "satellite": [{"satelliteCredential": []}, {"operatorToken": []}],
    "self": [{"satelliteCredential": []}],
    "any": [{"satelliteCredential": []}, {"operatorToken": []}],
    "dashboard": [{"operatorToken": []}],
    "login": [],
}
_ERROR_CONTENT = {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}


def openapi_document(endpoints: Iterable[Endpoint]) -> dict[str, Any]:
    paths: dict[str, dict[str, Any]] = {}
    for ep in endpoints:
        op: dict[str, Any] = {
            "summary": ep.summary,
            "operationId": ep.handler.__name__,
            "security": _SECURITY[ep.access],
            "x-access": ep.access,
            "responses": {
                "default": {
                    "description": "error",
                    "content": _ERROR_CONTENT,
                },
                "200": {"description": "success"},
            },
        }
        params = _PARAM.findall(ep.path)
        if params:
            op["parameters"] = [
                {"name": p, "in": "path", "required": True, "schema": {"type": "string"}}
                for p in params
            ]
        if ep.method in ("POST", "PUT", "PATCH"):
            op["requestBody"] = {"content": {"application/json": {"schema": {"type": "object"}}}}
        if ep.method in ("POST", "PUT", "PATCH", "DELETE"):
            op["responses"]["415"] = {
                "description": "unsupported_media_type: a body (or a Content-Type) that is "
                "not application/json",
                "content": _ERROR_CONTENT,
            }
        paths.setdefault(ep.path, {})[ep.method.lower()] = op
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Ground Control",
            "version": "1",
            "description": "Fleet controller for Satellite edge registries. "
            'Errors are {"error": {"code", "message"}} with a stable code. Credentials are '
            "accepted only as Authorization: Bearer; a state-changing request whose body is "
            "not application/json is refused with 415 unsupported_media_type.",
        },
        "paths": paths,
        "components": {
            "schemas": {"Error": ERROR_SCHEMA},
            "securitySchemes": {
                "operatorToken": {"type": "http", "scheme": "bearer", "description": "gco_… token"},
                "satelliteCredential": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "gcs_… credential issued at registration",
                },
            },
        },
    }
