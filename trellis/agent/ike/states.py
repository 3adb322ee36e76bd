"""The states of an IKE SA and of a CHILD SA, and the tables that say what each state accepts.

Fail closed: an input missing from a table is refused (a request is dropped or answered with an
error, a local action raises IkeLocalError); a state change missing from ``*_EDGES`` is a bug and
raises IkeLocalError rather than leaving an SA half-way.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Generic, TypeVar

from trellis.agent.ike.constants import ExchangeType
from trellis.agent.ike.errors import IkeLocalError


class IkeState(enum.Enum):
    INIT_SENT = "init-sent"  # initiator: IKE_SA_INIT request out
    AUTH_SENT = "auth-sent"  # initiator: IKE_AUTH request out
    HALF_OPEN = "half-open"  # responder: IKE_SA_INIT answered, waiting for IKE_AUTH
    ESTABLISHED = "established"
    REKEYED = "rekeyed"  # replaced by a rekeyed IKE SA; waiting for (or sending) its DELETE
    DELETING = "deleting"  # our DELETE is out
    CLOSED = "closed"


class ChildState(enum.Enum):
    INSTALLED = "installed"
    REKEYING = "rekeying"  # our rekey request is out
    REKEYED = "rekeyed"  # replaced; its DELETE is coming or going
    DELETING = "deleting"  # our DELETE is out
    DELETED = "deleted"


class LocalAction(enum.Enum):
    CREATE_CHILD = "create-child"
    REKEY_CHILD = "rekey-child"
    DELETE_CHILD = "delete-child"
    REKEY_IKE = "rekey-ike"
    DELETE_IKE = "delete-ike"
    LIVENESS = "liveness"
    REAUTHENTICATE = "reauthenticate"


_ALL_STATES = frozenset(IkeState)

IKE_EDGES: Mapping[IkeState, frozenset[IkeState]] = MappingProxyType(
    {
        IkeState.INIT_SENT: frozenset({IkeState.INIT_SENT, IkeState.AUTH_SENT, IkeState.CLOSED}),
        IkeState.AUTH_SENT: frozenset({IkeState.ESTABLISHED, IkeState.CLOSED}),
        IkeState.HALF_OPEN: frozenset({IkeState.ESTABLISHED, IkeState.CLOSED}),
        IkeState.ESTABLISHED: frozenset({IkeState.REKEYED, IkeState.DELETING, IkeState.CLOSED}),
        IkeState.REKEYED: frozenset({IkeState.DELETING, IkeState.CLOSED}),
        IkeState.DELETING: frozenset({IkeState.CLOSED}),
        IkeState.CLOSED: frozenset(),
    }
)

# Requests from the peer each state accepts (by exchange type); anything else is dropped.
IKE_REQUESTS: Mapping[IkeState, frozenset[ExchangeType]] = MappingProxyType(
    {
        IkeState.HALF_OPEN: frozenset({ExchangeType.IKE_AUTH}),
        IkeState.ESTABLISHED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
        # A replaced SA still answers INFORMATIONAL (its DELETE, liveness checks) and refuses
        # CREATE_CHILD_SA with TEMPORARY_FAILURE (RFC 7296 section 2.25).
        IkeState.REKEYED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
        IkeState.DELETING: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
    }
)

# Responses each state waits for; the outstanding request must also match the message ID.
IKE_RESPONSES: Mapping[IkeState, frozenset[ExchangeType]] = MappingProxyType(
    {
        IkeState.INIT_SENT: frozenset({ExchangeType.IKE_SA_INIT}),
        IkeState.AUTH_SENT: frozenset({ExchangeType.IKE_AUTH}),
        IkeState.ESTABLISHED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
        IkeState.REKEYED: frozenset({ExchangeType.CREATE_CHILD_SA, ExchangeType.INFORMATIONAL}),
        IkeState.DELETING: frozenset({ExchangeType.INFORMATIONAL}),
    }
)

# What we may start ourselves in each state.
IKE_ACTIONS: Mapping[IkeState, frozenset[LocalAction]] = MappingProxyType(
    {
        IkeState.ESTABLISHED: frozenset(LocalAction),
        # A replaced SA only deletes itself (and what is left on it).
        IkeState.REKEYED: frozenset({LocalAction.DELETE_IKE, LocalAction.DELETE_CHILD}),
    }
)

CHILD_EDGES: Mapping[ChildState, frozenset[ChildState]] = MappingProxyType(
    {
        ChildState.INSTALLED: frozenset(
            {ChildState.REKEYING, ChildState.REKEYED, ChildState.DELETING, ChildState.DELETED}
        ),
        ChildState.REKEYING: frozenset(
            {ChildState.INSTALLED, ChildState.REKEYED, ChildState.DELETING, ChildState.DELETED}
        ),
        ChildState.REKEYED: frozenset({ChildState.DELETING, ChildState.DELETED}),
        ChildState.DELETING: frozenset({ChildState.DELETED}),
        ChildState.DELETED: frozenset(),
    }
)


class ChildInput(enum.Enum):
    START_REKEY = "start-rekey"
    PEER_REKEY = "peer-rekey"
    START_DELETE = "start-delete"


# What a CHILD SA accepts; RFC 7296 section 2.25.1 says how the collisions are answered.
CHILD_INPUTS: Mapping[ChildState, frozenset[ChildInput]] = MappingProxyType(
    {
        ChildState.INSTALLED: frozenset(ChildInput),
        ChildState.REKEYING: frozenset({ChildInput.PEER_REKEY, ChildInput.START_DELETE}),
        ChildState.REKEYED: frozenset({ChildInput.START_DELETE}),
        ChildState.DELETING: frozenset(),
        ChildState.DELETED: frozenset(),
    }
)

S = TypeVar("S", bound=enum.Enum)


class Machine(Generic[S]):
    """A current state that moves only along the edges of its table."""

    __slots__ = ("_edges", "_what", "state")

    def __init__(self, what: str, initial: S, edges: Mapping[S, frozenset[S]]) -> None:
        self._what = what
        self._edges = edges
        self.state = initial

    def move(self, new: S) -> None:
        if new not in self._edges.get(self.state, frozenset()):
            raise IkeLocalError(f"{self._what}: no transition from {self.state.value} to {new.value}")
        self.state = new

    def __repr__(self) -> str:
        return f"{self._what}({self.state.value})"


assert set(IKE_EDGES) == _ALL_STATES  # every state has a row (checked once, at import)
