"""Controller: CA, store, policy engine, gRPC services, admin CLI."""
