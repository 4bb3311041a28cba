"""Sharding: WebDataset shards, dataset versions, manifests, lineage, verification and redaction."""
