"""A study in its storage and the workers that run its trials (utils.sweep's middle layer: it
imports spec/, never report/)."""
