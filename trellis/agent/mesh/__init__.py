"""The mesh: from the controller's network map to IKE peers, packet filter and revocation checks."""
