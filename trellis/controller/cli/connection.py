"""trellisctl's connection to the controller: admin credentials, TLS, and errors for people."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import Message

from trellis.controller.ca import CONTROLLER_TLS_NAME
from trellis.controller.credentials import AdminCredentials, CredentialsError

DEFAULT_CONTROLLER = "127.0.0.1:7400"
EXIT_REFUSED = 1
EXIT_USAGE = 2
EXIT_UNREACHABLE = 3


class CliError(Exception):
    def __init__(self, message: str, code: int = EXIT_REFUSED) -> None:
        super().__init__(message)
        self.code = code


def connect(controller: str, credentials_path: Path) -> grpc.Channel:
    try:
        credentials = AdminCredentials.load(credentials_path)
    except CredentialsError as e:
        raise CliError(str(e), EXIT_USAGE) from None
    channel_credentials = grpc.ssl_channel_credentials(
        root_certificates=credentials.ca_pem,
        private_key=credentials.key_pem,
        certificate_chain=credentials.certificate_pem,
    )
    return grpc.secure_channel(
        controller, channel_credentials, options=[("grpc.ssl_target_name_override", CONTROLLER_TLS_NAME)]
    )


def call(method: Callable[..., Any], request: Message, *, controller: str, timeout: float) -> Any:
    try:
        return method(request, timeout=timeout)
    except grpc.RpcError as e:
        code: grpc.StatusCode = e.code()
        details: str = e.details() or ""
        if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
            raise CliError(
                f"cannot reach the controller at {controller}: {details}", EXIT_UNREACHABLE
            ) from None
        raise CliError(f"{details} ({code.name.lower()})") from None
