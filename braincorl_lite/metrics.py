"""Voxelwise metrics: explained variance, Pearson r, NSD-style noise ceiling, ROI summaries.

All functions take arrays of shape ``(n_images, n_voxels)`` and return one value per voxel.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = ["explained_variance", "pearson_r", "noise_ceiling_from_repeats", "ncsnr_from_repeats",
           "roi_summary"]


def explained_variance(y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """Voxelwise explained variance ``EV = 1 - Var(y - y_hat) / Var(y)``, as in the paper.

    Variances are taken over images (axis 0), so a constant offset in ``y_hat`` is not
    penalised. EV can be negative when the prediction is worse than a constant.

    Parameters
    ----------
    y, y_hat : ndarray, shape (n_images, n_voxels) or (n_images,)
        Measured and predicted responses.

    Returns
    -------
    ndarray, shape (n_voxels,) (or a float for 1-D input)

    Examples
    --------
    >>> y = np.array([[1.0], [2.0], [3.0]])
    >>> float(explained_variance(y, y)[0])
    1.0
    """
    y = np.asarray(y, dtype=np.float64)
    y_hat = np.asarray(y_hat, dtype=np.float64)
    if y.shape != y_hat.shape:
        raise ValueError(f"y and y_hat must have the same shape, got {y.shape} and {y_hat.shape}")
    if y.shape[0] < 2:
        raise ValueError("explained variance needs at least 2 images")
    var_y = y.var(axis=0)
    var_res = (y - y_hat).var(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ev = 1.0 - var_res / var_y
    return np.where(var_y > 0, ev, np.nan)


def pearson_r(y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """Voxelwise Pearson correlation between measured and predicted responses (over images)."""
    y = np.asarray(y, dtype=np.float64)
    y_hat = np.asarray(y_hat, dtype=np.float64)
    if y.shape != y_hat.shape:
        raise ValueError(f"y and y_hat must have the same shape, got {y.shape} and {y_hat.shape}")
    yc = y - y.mean(axis=0)
    pc = y_hat - y_hat.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (yc * pc).sum(axis=0) / np.sqrt((yc ** 2).sum(axis=0) * (pc ** 2).sum(axis=0))


def ncsnr_from_repeats(repeats: np.ndarray) -> np.ndarray:
    """NSD's noise-ceiling signal-to-noise ratio from repeated presentations.

    Parameters
    ----------
    repeats : ndarray, shape (n_repeats, n_images, n_voxels)
        Single-trial responses, the same images in each repeat.

    Returns
    -------
    ndarray (n_voxels,)
        ``ncsnr = sd_signal / sd_noise``, where the noise variance is the mean over images of
        the variance across repeats, and the signal variance is the total variance minus the
        noise variance (clipped at zero), as in Allen et al. (2022).
    """
    repeats = np.asarray(repeats, dtype=np.float64)
    if repeats.ndim != 3 or repeats.shape[0] < 2:
        raise ValueError("repeats must have shape (n_repeats >= 2, n_images, n_voxels)")
    noise_var = repeats.var(axis=0, ddof=1).mean(axis=0)
    total_var = repeats.reshape(-1, repeats.shape[2]).var(axis=0, ddof=1)
    signal_var = np.clip(total_var - noise_var, 0, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(noise_var > 0, np.sqrt(signal_var / noise_var), 0.0)


def noise_ceiling_from_repeats(repeats: np.ndarray, n_average: Optional[int] = None) -> np.ndarray:
    """Noise ceiling (fraction of variance) of responses averaged over ``n_average`` repeats.

    ``NC = ncsnr^2 / (ncsnr^2 + 1 / n_average)``; NSD reports ``100 * NC``. By default
    ``n_average`` is the number of repeats given.
    """
    repeats = np.asarray(repeats)
    n = repeats.shape[0] if n_average is None else n_average
    snr2 = ncsnr_from_repeats(repeats) ** 2
    return snr2 / (snr2 + 1.0 / n)


def roi_summary(values: Dict[str, np.ndarray], roi: np.ndarray, order=None, stat: str = "mean"):
    """Per-ROI summary table of voxelwise values.

    Parameters
    ----------
    values : dict of name -> ndarray (n_voxels,)
        E.g. ``{"ridge": ev_ridge, "oracle": ev_oracle}``.
    roi : ndarray of str (n_voxels,)
    order : list of str, optional
        ROI order of the rows; ``"all"`` (every voxel) is always the last row.
    stat : {"mean", "median"}

    Returns
    -------
    pandas.DataFrame
        One row per ROI, one column per entry of ``values``, plus ``n_voxels``.
    """
    import pandas as pd

    roi = np.asarray(roi).astype(str)
    if order is None:
        order = sorted(set(roi.tolist()) - {"other"}) + (["other"] if "other" in roi else [])
    agg = np.nanmean if stat == "mean" else np.nanmedian
    rows = []
    for name in list(order) + ["all"]:
        mask = np.ones(len(roi), bool) if name == "all" else roi == name
        row = {"roi": name, "n_voxels": int(mask.sum())}
        for key, v in values.items():
            v = np.asarray(v)
            if v.shape != roi.shape:
                raise ValueError(f"values[{key!r}] has shape {v.shape}, expected {roi.shape}")
            row[key] = float(agg(v[mask])) if mask.any() else np.nan
        rows.append(row)
    return pd.DataFrame(rows).set_index("roi")
