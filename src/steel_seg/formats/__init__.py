"""The files the competition and the kit exchange, read strictly (errors name the file and row) and written
whole.

`rle` (mask <-> Kaggle RLE), `labels` (train.csv in every layout -> one tidy table), `submission` (the
sample's layout, the streaming writer, `validate`), `metric` (the competition's mean Dice), `images` (the one
image reader and the header pre-flight), `folds` (folds.csv, near-duplicate-aware stratified folds, a run's
folds policy), `oof` (the OOF directory), `runs` (a training run's directory and its run.json). No torch.

May import: competition, fileio, progress.
"""
