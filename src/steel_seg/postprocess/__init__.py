"""The post-processing rules that turn probabilities into masks, and their search.

`rules` (`Rules`, thresholds.json and the exact semantics: pixel threshold, components, area, gate; numpy +
OpenCV), `on_device` (steps 1-2 on the accelerator, then the CPU filter + RLE: the path the engine and
training's validation score through), `tune` (an exact grid search on OOF statistics, over worker processes).

May import: competition, fileio, progress, workers, formats, models.
"""
