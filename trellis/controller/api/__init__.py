"""gRPC services of the controller: one error boundary, identity from the mTLS peer certificate."""
