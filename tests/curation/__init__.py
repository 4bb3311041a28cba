"""Tests of curation: quality, duplicates, embeddings, semantic dedup, balance, report, pipeline."""
