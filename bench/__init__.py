"""Benchmarks: scripts that measure Trellis against an anchor in the same run and print the ratio."""
