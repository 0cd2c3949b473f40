"""Everything SQLite: answers by fingerprint, the journal, the runs, the Batch API ledger, and the one
list of migrations that makes every table of them; each row's fingerprints and the recall file.
"""
