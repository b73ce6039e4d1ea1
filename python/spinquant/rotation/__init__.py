"""Rotations: norm fusion, R1/R2 merged into the weights, R3/R4 online Hadamards."""

from .fuse import fuse_norms
from .merge import apply_rotations, random_rotations, rotate_layer, rotate_weights, set_online_hadamards

__all__ = [
    "apply_rotations",
    "fuse_norms",
    "random_rotations",
    "rotate_layer",
    "rotate_weights",
    "set_online_hadamards",
]
