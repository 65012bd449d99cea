"""Learned connector mapping a student hint (B, Cs, Hs, Ws) to the teacher's (B, Ct, Ht, Wt).

It is trained with the student and is not part of the exported student.
"""
import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Connector", "build_connector"]


class Connector(nn.Module):
    def __init__(self, student_shape, teacher_shape):
        super().__init__()
        cs, hs, ws = student_shape
        ct, ht, wt = teacher_shape
        self.out_size = (ht, wt)
        if (hs, ws) == (ht, wt):
            conv = nn.Conv2d(cs, ct, 1, bias=False)
        elif ht % hs == 0 and wt % ws == 0 and ht // hs == wt // ws:
            k = ht // hs     # student is coarser: learned upsampling
            conv = nn.ConvTranspose2d(cs, ct, k, stride=k, bias=False)
        elif hs % ht == 0 and ws % wt == 0 and hs // ht == ws // wt:
            k = hs // ht     # student is finer: learned strided downsampling
            conv = nn.Conv2d(cs, ct, k, stride=k, bias=False)
        else:
            conv = nn.Conv2d(cs, ct, 1, bias=False)  # resized by interpolation in forward
        self.proj = nn.Sequential(conv, nn.BatchNorm2d(ct))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != self.out_size and isinstance(self.proj[0], nn.Conv2d) \
                and self.proj[0].stride == (1, 1):
            x = F.interpolate(x, size=self.out_size, mode="bilinear", align_corners=False)
        return self.proj(x)


def build_connector(student_shape, teacher_shape) -> nn.Module | None:
    """None when the shapes already match (the original method: plain MSE)."""
    if tuple(student_shape) == tuple(teacher_shape):
        return None
    return Connector(student_shape, teacher_shape)
