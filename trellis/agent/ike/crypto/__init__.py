"""Cryptography of the sans-IO IKEv2 core: suites, prf/prf+, key exchange, key derivation,
the SK payload AEAD, AUTH payloads, peer certificate checks and Wireshark key-log lines.

Works on bytes, ints and the enums of ``trellis.agent.ike.constants``; never on codec objects.
"""
