"""The one place where domain errors become gRPC status codes, and where callers are identified.

The caller's identity is read from the TLS client certificate that gRPC verified against the
controller's CA; nothing in a request body can claim an identity.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from cryptography import x509

from trellis.controller.ca import identity_of, serial_hex
from trellis.controller.errors import (
    AlreadyExists,
    ControllerError,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    Unauthenticated,
)
from trellis.controller.service import Caller
from trellis.v1.identity import IdentityError

log = logging.getLogger(__name__)

STATUS_OF: dict[type[ControllerError], grpc.StatusCode] = {
    InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
    NotFound: grpc.StatusCode.NOT_FOUND,
    AlreadyExists: grpc.StatusCode.ALREADY_EXISTS,
    FailedPrecondition: grpc.StatusCode.FAILED_PRECONDITION,
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    PermissionDenied: grpc.StatusCode.PERMISSION_DENIED,
}


def status_of(error: ControllerError) -> grpc.StatusCode:
    for cls in type(error).__mro__:
        if cls in STATUS_OF:
            return STATUS_OF[cls]
    return grpc.StatusCode.FAILED_PRECONDITION


def caller_of(context: grpc.aio.ServicerContext[Any, Any]) -> Caller:
    """The verified client certificate's identity, or an anonymous caller with only its address."""
    peer = context.peer()
    pems = list(context.auth_context().get("x509_pem_cert", ()))
    if not pems:
        return Caller(identity=None, serial="", not_after=None, peer=peer)
    certificate = x509.load_pem_x509_certificate(pems[0])
    try:
        identity = identity_of(certificate)
    except IdentityError:
        identity = None
    return Caller(
        identity=identity,
        serial=serial_hex(certificate),
        not_after=certificate.not_valid_after_utc,
        peer=peer,
    )


class ErrorBoundary(grpc.aio.ServerInterceptor):
    """Maps ControllerError raised by any handler to its status code and message."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler[Any, Any] | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(
                _guard_unary(handler.unary_unary),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(
                _guard_stream(handler.stream_stream),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
        return handler  # kinds we do not serve (health's unary-stream Watch has no domain errors)


def _guard_unary(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            return await behavior(request, context)
        except ControllerError as e:
            await context.abort(status_of(e), str(e))

    return guarded


def _guard_stream(behavior: Callable[..., Any]) -> Callable[..., Any]:
    async def guarded(requests: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
        try:
            async for response in behavior(requests, context):
                yield response
        except ControllerError as e:
            await context.abort(status_of(e), str(e))

    return guarded
