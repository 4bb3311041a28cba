"""Reliability tests: crash and resume, failing servers, hostile media, fuzzing and load."""
