"""The post-processing rules that turn probabilities into masks, and their search.

`rules` (`Rules`, thresholds.json and the exact semantics, at the OOF's 1/255 resolution: pixel threshold,
components, area, the image-level `gate` and the max-pixel `seg_gate`; numpy + OpenCV), `on_device` (steps
1-2 on the accelerator, then the CPU filter + RLE: the path the engine and training's validation score
through), `tune` (an exact grid search on OOF statistics over worker processes; it checks what the OOF is
out of and records the recipe it tuned on).

May import: competition, fileio, progress, workers, formats, models.
"""
