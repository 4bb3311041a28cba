"""Ingest: probing, decoding, cutting and re-encoding video, and aligning sensor streams (PyAV, no Beam)."""
