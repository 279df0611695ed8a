"""Interaction data: format readers, ingest (`prepare`), statistics, synthetic data, downloads."""
