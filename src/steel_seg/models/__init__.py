"""Models and their files: `factory` (a `ModelSpec` -> an smp segmenter or a classifier, the one input
normalisation `to_tensor`, save/load as spec.json + model.safetensors), `encoders` (pretrained encoder
weights through smp's own Hugging Face cache; the offline export), `manifest` (weights/manifest.json, each
model's provenance, `collect_models` for `steel-seg manifest`, and `load_model`: a model dir loaded exactly as
the kernel loads it), `recipe` (an ensemble's members, folds and weights; rules tuned on another recipe are
named), `precision` (the one autocast rule of training and inference).

May import: competition, fileio, progress, formats.
"""
