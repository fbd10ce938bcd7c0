"""Experiments: GLUE / SQuAD / CoNLL-2003 data and tasks, metrics, training, a run's identity (``RunSpec``) and
``run``, the protocol and papermill batches on Dask, result files with provenance, and the tables the chapters show.
The top layer: nothing in qlib imports it but the public API.
"""
