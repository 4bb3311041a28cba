"""Tests of the sharding stage: shard writing, dataset versions, the streaming reader, the shard pipeline."""
