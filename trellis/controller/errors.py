"""Domain errors of the controller. The gRPC boundary maps each to a status code (api/boundary.py);
their messages are written for the caller and are safe to return."""

from __future__ import annotations


class ControllerError(Exception):
    """Base: a request the controller refuses, with a reason for the caller."""


class InvalidArgument(ControllerError):
    pass


class NotFound(ControllerError):
    pass


class AlreadyExists(ControllerError):
    pass


class FailedPrecondition(ControllerError):
    pass


class Unauthenticated(ControllerError):
    """The caller has no acceptable credential (bad token, unknown or expired certificate)."""


class PermissionDenied(ControllerError):
    """The caller is known but not allowed (revoked, or the wrong kind of identity for this API)."""
