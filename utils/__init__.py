"""Shared code for the training, evaluation and analysis scripts."""
