"""Training: one YAML config -> one run directory, in one process or one per GPU under torchrun (DDP). Never
in the kernel; only the CLI and the workflows import it.

`config` (the typed, strict config), `data` (`prepare`: sources, folds, pre-flight and loaders in one call;
the crop-and-augment Dataset, the resumable sampler), `sources` (the primary set and the extra sources),
`augment` (albumentations 2.x), `losses` (smp.losses, weighted), `optim` (AdamW, SGD, RAdam; encoder and
decoder groups), `checkpoint` (atomic, EMA), `swa` (the average of the last epochs' weights), `finetune` (a
stage that starts from a run), `inputs` (the sha256 of every file a run reads), `distributed`, `run_log`,
`epoch_eval` (validation scored through `postprocess.on_device`, as the kernel scores), `loop` (the Trainer).

May import: competition, fileio, progress, formats, models, postprocess.
"""
