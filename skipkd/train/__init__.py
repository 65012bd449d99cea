"""Training: the run set-up (setup.py), the stage loop (stage.py) over the engine's
train_one_epoch / evaluate (engine.py), the optimiser and schedule (optim.py), checkpoints and
the run's outputs (checkpoint.py, outputs.py), --resume (resume.py), torchrun
(distributed.py), Ctrl-C / SIGTERM (signals.py), TensorBoard (tensorboard.py), progress bars
(progress.py)."""
