"""Pipelines: Beam DoFns and PTransforms that compose the plain functions of the stage packages."""
