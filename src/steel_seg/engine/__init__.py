"""The inference engine: the one path from JPEGs to a submission (the kernel, `steel-seg predict`) or to
probabilities (OOF predictions, pseudo-labels). It ships in the kernel, so it never imports training.

`ensemble` (loaded models, TTA views, one batched forward per device), `runner` (decode -> one replica per
device -> batches back in order, within the deadline), `predict` (rows streamed to the CSV; `iter_probs`),
`budget` (the time projection, drops, the hard `Deadline`), `dispatch` (the feed and device threads),
`devices` (`--devices` and the start-up check of each card), `submit` (load -> predict -> validate),
`options` (the engine's command-line flags), `locations` (the only reader of the environment: Kaggle or
local paths).

May import: competition, fileio, progress, formats, models, postprocess.
"""
