"""Test suite: every stage against real components."""
