"""A Severstal-like synthetic data set for the demo and the tests: `dataset` (the generator) and `stats.json`
(the real train set's class and area statistics it follows; `scripts/synthetic_stats.py` derives them).

May import: competition, fileio, progress, formats.
"""
