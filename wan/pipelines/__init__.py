"""Pipelines: one denoise loop (denoise.py) fed by a small prepare_*() per task (t2v.py, i2v.py,
ti2v.py); pipeline.py loads the components and runs a request; placement.py decides devices."""
