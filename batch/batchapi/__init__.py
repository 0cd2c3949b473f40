"""Groq's Batch API mode: the same requests, as JSONL files and batches, at half the price.

    run       the pass the engine calls in batch mode, and how its batches ended
    mode      the flow: files, submissions, polling, merging results into the store
    submit    one submission from a local file to a batch, never twice (asks Groq what a dead run left)
    files     the JSONL formats going in and coming back, and the local folder they wait in
    ledger    which submission holds which request (two tables in the job's store)
    endpoints /files and /batches on the client's HTTP session
    cancel    `python -m batch cancel`
"""
