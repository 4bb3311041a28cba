"""Curation: quality signals, exact and near duplicates, embeddings, semantic dedup and balance."""
