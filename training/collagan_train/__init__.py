"""CollaGAN training for CollaGANImpute: model, losses, data, solver, export, baselines and evaluation.

Run from the repository root, e.g. ``python -m training.collagan_train.main train --recipe brats ~/data/brats
--out runs/brats``; see training/README.md.
"""
