"""The fake Runflow's HTTP helpers: Runflow's error answers and request-body parsing.

A handler raises :class:`AnswerError` to answer at once with the response it carries; the
fake's endpoint wrappers catch it.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

from starlette.responses import JSONResponse

if TYPE_CHECKING:
    from starlette.requests import Request

__all__ = ["AnswerError", "error", "json_object", "optional_str", "validation"]


def error(
    status: int, code: str, message: str, errors: list[dict[str, Any]] | None = None
) -> JSONResponse:
    """Runflow's error answer ``{code, message, errors}``."""
    return JSONResponse({"code": code, "message": message, "errors": errors or []}, status)


def validation(message: str, *, error_type: str, field: str | None = None) -> JSONResponse:
    """A 422 ``validation_error`` with one error of ``error_type`` on ``field``."""
    return error(
        422,
        "validation_error",
        message,
        [{"error_type": error_type, "field": field, "message": message}],
    )


class AnswerError(Exception):
    """Answer the request with ``response`` now (raised by a handler, caught by its wrapper)."""

    def __init__(self, response: JSONResponse) -> None:
        self.response = response


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


async def json_object(request: Request, *, required: bool = True) -> dict[str, Any]:
    """The request body as a JSON object (an empty body is ``{}`` unless ``required``)."""
    body = await request.body()
    if not body.strip() and not required:
        return {}
    try:
        data = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        raise AnswerError(error(400, "bad_request", "the request body is not JSON")) from None
    if not isinstance(data, dict):
        raise AnswerError(error(400, "bad_request", "the request body must be a JSON object"))
    return data


def optional_str(data: dict[str, Any], name: str) -> str | None:
    """``data[name]`` when it is a string or absent/null; else a 422 answer."""
    value = data.get(name)
    if value is not None and not isinstance(value, str):
        raise AnswerError(validation(f"{name} must be a string", error_type="type", field=name))
    return value
