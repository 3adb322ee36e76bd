"""The IKEv2 exchanges, one module each: what each request carries and how each side handles it.

``dispatch.REQUEST_HANDLERS`` maps a request's exchange type to its responder; ``timers`` maps
each IKE SA timer to what it starts.
"""
