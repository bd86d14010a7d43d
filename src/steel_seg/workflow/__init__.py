"""The user's steps that join the engine to the data: `oof_predict` (`steel-seg oof`: the held-out folds of
the ensemble a weights dir ships, or of one run, through the engine into an OOF directory), `provenance`
(where a model dir comes from: its run, fold, folds file and config) and `pseudo` (`steel-seg pseudo`: the
ensemble's sure test images as a train.csv for training's extra sources).

May import: competition, fileio, progress, formats, models, postprocess, engine, train.
"""
