"""The roles a trained network plays in a run: one type, spelled once.

A distillation run trains (or loads) a teacher and trains a student; a baseline run trains one
network alone. The role names checkpoints ({key}_{role}.pth), the sections of the run summary
and of the history JSON, and TensorBoard folders. Standard library only (the sweep's worker
reads summaries without PyTorch).
"""
from enum import StrEnum

__all__ = ["Role", "ROLES"]


class Role(StrEnum):
    TEACHER = "teacher"
    STUDENT = "student"
    BASELINE = "baseline"

    @property
    def array_infix(self) -> str:
        """The role's part of the original project's flat array names,
        {split}_{metric}_{role}_{key}.npy: none for a baseline ({split}_{metric}_{key}.npy)."""
        return "" if self is Role.BASELINE else self.value


ROLES = tuple(Role)  # teacher, student, baseline
