"""Tests of ingest: probe, clip cutting, re-encoding, sensor alignment."""
