"""skipkd: skip-connection knowledge distillation with Efficient Channel Attention.

The library the scripts at the top of the repository are built on:

    skipkd.models     the networks (the feature contract, ResNets, the CIFAR benchmark zoo),
                      attention types and where attention goes
    skipkd.kd         the distillation terms and the loss that combines them
    skipkd.data       dataset readers, the held-out split, the on-device loader
    skipkd.train      a run's lifecycle: set-up, the teacher and student stages, the epoch loop
    skipkd.io         what a run writes and reads back: checkpoints, history, summary, its files
    skipkd.cli        the training scripts' flags and presets

`utils.sweep` (studies) and `utils.analysis` (the analysis tools) are its clients; nothing in
skipkd imports them. Importing this package imports nothing else (no torch).
"""
