"""Float64 weight norm in NumPy: the tests' reference, independent of PyTorch.

Written straight from the paper's equations (Salimans & Kingma 2016, eqs 2-3), with
eps as fastwn defines it: the norm is clamped from below, n = max(||v||, eps).
dim=None means one norm over the whole array; other dims may be negative.
"""
from __future__ import annotations

import numpy as np


def _rows(a: np.ndarray, dim: int | None) -> np.ndarray:
    """a as a 2-D array (D, rest): row d holds the slice whose norm is norm[d]."""
    a = np.asarray(a, dtype=np.float64)
    if dim is None:
        return a.reshape(1, -1)
    return np.moveaxis(a, dim, 0).reshape(a.shape[dim], -1)


def _unrows(rows: np.ndarray, shape: tuple[int, ...], dim: int | None) -> np.ndarray:
    if dim is None:
        return rows.reshape(shape)
    moved = (shape[dim],) + tuple(s for i, s in enumerate(shape) if i != dim % len(shape))
    return np.moveaxis(rows.reshape(moved), 0, dim)


def forward(v, g, dim: int | None, eps: float = 0.0):
    """(w, norm): w = g v / max(||v||, eps) (eq 2); norm = ||v|| per slice, shaped like g."""
    v = np.asarray(v, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64)
    V = _rows(v, dim)
    norm = np.sqrt(np.einsum("dk,dk->d", V, V))
    with np.errstate(divide="ignore", invalid="ignore"):
        W = V * (g.reshape(-1) / np.maximum(norm, eps))[:, None]
    return _unrows(W, v.shape, dim), norm.reshape(g.shape)


def backward(grad_w, v, g, dim: int | None, eps: float = 0.0):
    """(grad_v, grad_g) by eq 3: grad_g = grad_w . v / ||v||,
    grad_v = (g/||v||) grad_w - (g grad_g / ||v||^2) v; where eps clamps the norm,
    w = g v / eps is linear in v and the projection term vanishes."""
    v = np.asarray(v, dtype=np.float64)
    g = np.asarray(g, dtype=np.float64).reshape(-1)
    V, G = _rows(v, dim), _rows(grad_w, dim)
    norm = np.sqrt(np.einsum("dk,dk->d", V, V))
    n = np.maximum(norm, eps)
    with np.errstate(divide="ignore", invalid="ignore"):
        grad_g = np.einsum("dk,dk->d", G, V) / n
        clamped = norm < eps
        proj = np.where(clamped, 0.0, g * grad_g / (n * n))
        grad_v = (g / n)[:, None] * G - proj[:, None] * V
    return _unrows(grad_v, v.shape, dim), grad_g
