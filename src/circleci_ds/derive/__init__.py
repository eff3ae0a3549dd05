"""Typed facts derived from stored raw trees: pure functions, no I/O."""
