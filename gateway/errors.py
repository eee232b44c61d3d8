"""OpenAI-shaped errors, as vLLM sends them: `{"error": {"message", "type", "param", "code"}}`.

`code` carries the HTTP status, as in vLLM. Every error the gateway raises on purpose is an `APIError`;
the app turns it into a JSON response (or an SSE error event once a stream has started).
"""

from __future__ import annotations

from http import HTTPStatus

import orjson

_TYPE_BY_STATUS = {
    400: "BadRequestError",
    401: "AuthenticationError",
    403: "PermissionDeniedError",
    404: "NotFoundError",
    405: "MethodNotAllowedError",
    408: "RequestTimeoutError",
    413: "RequestEntityTooLargeError",
    415: "UnsupportedMediaTypeError",
    422: "UnprocessableEntityError",
    429: "RateLimitError",
    502: "BadGatewayError",
    503: "ServiceUnavailableError",
    504: "GatewayTimeoutError",
}


class APIError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, type_: str | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = (
            type_ or _TYPE_BY_STATUS.get(status) or HTTPStatus(status).phrase.replace(" ", "") + "Error"
        )

    def body(self) -> dict:
        return {
            "error": {"message": self.message, "type": self.type, "param": self.param, "code": self.status}
        }

    def json(self) -> bytes:
        return orjson.dumps(self.body())

    def sse(self) -> bytes:
        """The error as vLLM ends a broken stream: an error event, then the end marker."""
        return b"data: " + self.json() + b"\n\ndata: [DONE]\n\n"


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, param)
