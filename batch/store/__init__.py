"""Everything SQLite: answers by fingerprint, the journal, the runs, the Batch API ledger; each row's
fingerprints and the recall file.
"""
