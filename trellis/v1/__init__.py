"""The wire contract shared by controller and agent (generated from proto/trellis/v1)."""
