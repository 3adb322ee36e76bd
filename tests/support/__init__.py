"""Test support code shared by several test folders (not tests themselves)."""
