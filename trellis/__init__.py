"""Trellis: a zero-trust IPsec mesh (controller, site agents, lab)."""

__version__ = "0.1.0"
