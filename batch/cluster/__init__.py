"""Runs a partitioned job on a Dask cluster, with one rate limit and one spend cap for the whole cluster.

    client (`runner`, reaching the scheduler through `connect`)
      ─► scheduler: `extension` (per job: one `rate`, one `spend` ledger, the key, partition claims)
      ─► a task per partition (`work`) on the workers: the engine, paced by `lease`, capped by `spend`

Dask is imported only in this package, and only when a run asks for a cluster (`--cluster`,
`[run] cluster`); `pip install "batch[dask]"` brings it.
"""
