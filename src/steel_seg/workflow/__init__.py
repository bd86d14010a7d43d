"""The user's steps that join the engine to the data: `oof_predict` (`steel-seg oof`: a run's held-out fold
through the engine into an OOF directory) and `pseudo` (`steel-seg pseudo`: the ensemble's sure test images
as a train.csv for training's extra sources).

May import: competition, fileio, progress, formats, models, postprocess, engine, train.
"""
