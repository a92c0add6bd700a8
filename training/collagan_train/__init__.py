"""CollaGAN training for CollaGANImpute: model, losses, data, solver, export, baselines and evaluation.

Run from the repository root, e.g. ``python -m training.collagan_train.main train --config
training/collagan_train/configs/tiny.json``; see training/README.md.
"""
