"""Which responder handles a request, by exchange type (the IKE SA's state table has already
said whether the state accepts the exchange at all)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType

from trellis.agent.ike.constants import ExchangeType
from trellis.agent.ike.exchanges import auth, create_child, informational
from trellis.agent.ike.message import Message
from trellis.agent.ike.sa import IkeSa
from trellis.agent.ike.window import Reply

RequestHandler = Callable[[IkeSa, Message, float], Reply]

REQUEST_HANDLERS: Mapping[ExchangeType, RequestHandler] = MappingProxyType(
    {
        ExchangeType.IKE_AUTH: auth.respond,
        ExchangeType.CREATE_CHILD_SA: create_child.respond,
        ExchangeType.INFORMATIONAL: informational.respond,
    }
)
