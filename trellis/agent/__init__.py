"""Site agent: control client, IKEv2, ESP, data planes, mesh."""
