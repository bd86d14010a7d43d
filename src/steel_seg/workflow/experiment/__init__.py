"""One experiment file, one resumable command: `steel-seg experiment plan|run|status EXP.yaml`.

`schema` reads the typed, strict experiment.yaml; `steps` turns it into the kit's own commands (folds, train
per model and fold, manifest, OOF of that ensemble, tune, pseudo-label rounds, reports, the kernel build, its
dry run and validation); `fingerprints` and `records` say what each step was made from; `plan` judges each
step done, stale or to do; `checks` refuses what would fail or replace another's files before any step runs;
`scheduler` runs the jobs on the devices given, `jobs` as child processes or SLURM jobs (submitit); `results`
reads a finished step's figures; `summary` says it all; `runner` joins them.
"""
