"""The agent's control plane: enrollment, renewal, the Sync stream, and the state directory."""
