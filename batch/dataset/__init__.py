"""A partitioned input (a folder, glob or URL of files) run part by part, on one machine or a cluster.

    partitions  finding a dataset's files through fsspec, fetching remote ones, publishing each part
    agree       the partitions' columns, which must agree for the output to read as one table
    parts       the engine once per partition, with a journal and a done marker each
    local       the parts one after the other on this machine (`PartitionedRun`)
    bought      what earlier attempts of the same run bought for a part (a lost worker's answers)
    summary     the parts' reports added up into one, beside the output folder

The Dask runner (`batch.cluster`) hands these same parts to its workers.
"""
