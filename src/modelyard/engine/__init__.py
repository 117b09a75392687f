"""The engine: model manager, batcher, runtimes glue, trainer and optimizer.

Everything here is plain Python with no HTTP and no database; the core layer drives it.
``dataframes`` reads and describes dataset files; ``trainer`` trains, checkpoints, evaluates and
exports models.
"""
