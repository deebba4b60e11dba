"""How close two results are: per-tensor figures for parity, PSNR and SSIM for images."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Comparison:
    rel_l2: float
    max_abs: float
    cosine: float
    psnr_db: float  # against the reference's own peak |value|, for tensors that are not images
    non_finite: int  # NaN / Inf values in `actual`: any is a failure, whatever the other figures say

    @classmethod
    def of(cls, actual: np.ndarray, expected: np.ndarray) -> Comparison:
        a, e = (np.asarray(x, dtype=np.float64).ravel() for x in (actual, expected))
        if a.shape != e.shape:
            raise ValueError(f"shape {actual.shape} vs reference {expected.shape}")
        norm = np.linalg.norm(e)
        with np.errstate(invalid="ignore", divide="ignore"):  # NaN / Inf in `actual` are counted instead
            return cls._figures(a, e, norm)

    @classmethod
    def _figures(cls, a: np.ndarray, e: np.ndarray, norm: float) -> Comparison:
        return cls(
            rel_l2=float(np.linalg.norm(a - e) / norm) if norm else float(np.linalg.norm(a)),
            max_abs=float(np.abs(a - e).max(initial=0.0)),
            cosine=float(a @ e / (np.linalg.norm(a) * norm)) if norm and np.linalg.norm(a) else 1.0,
            psnr_db=psnr(a, e, peak=float(np.abs(e).max(initial=0.0))) if a.size else float("inf"),
            non_finite=int(a.size - np.isfinite(a).sum()),
        )


def psnr(a: np.ndarray, b: np.ndarray, peak: float = 255.0) -> float:
    """PSNR in dB; `peak` is the largest pixel value (255 for uint8, 1.0 for float images)."""
    mse = float(np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(peak**2 / mse)


def ssim(a: np.ndarray, b: np.ndarray, window: int = 8) -> float:
    """Mean SSIM over non-overlapping window x window tiles of every channel (uint8 images)."""
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    n, h, w, c = a.shape

    def tiles(x):
        return (
            x[:, : h - h % window, : w - w % window]
            .astype(np.float64)
            .reshape(n, h // window, window, w // window, window, c)
        )

    x, y = tiles(a), tiles(b)
    mx, my = x.mean((2, 4)), y.mean((2, 4))
    vx, vy = x.var((2, 4)), y.var((2, 4))
    cov = ((x - mx[:, :, None, :, None]) * (y - my[:, :, None, :, None])).mean((2, 4))
    return float(np.mean((2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))))
