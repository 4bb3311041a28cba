"""Tests of the kernel: settings, store, catalog, CLI."""
