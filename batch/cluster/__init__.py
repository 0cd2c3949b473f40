"""Runs a partitioned job on a Dask cluster, with one rate limit for the whole cluster.

    client (`runner`) ─► scheduler: `extension` (one `budget` per job, the key, partition claims)
                     ─► a task per partition (`work`) on the workers: the engine, paced by `lease`

Dask is imported only in this package, and only when a run asks for a cluster (`--cluster`,
`[run] cluster`); `pip install "batch[dask]"` brings it.
"""
