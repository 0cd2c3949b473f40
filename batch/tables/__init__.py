"""Arrow in and out: CSV, Parquet and JSONL readers, the Python door's kinds, spools, the output writer."""
