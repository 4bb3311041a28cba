"""Tests of the Beam pipelines run end to end."""
