"""Voxelwise metrics: explained variance, Pearson r, NSD-style noise ceiling, ROI summaries.

All functions take arrays of shape ``(n_images, n_voxels)`` and return one value per voxel.
"""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

__all__ = ["explained_variance", "pearson_r", "ncsnr_from_repeats", "noise_ceiling_from_ncsnr",
           "noise_ceiling_from_repeats", "roi_summary"]


def _pair(y, y_hat):
    y, y_hat = np.asarray(y, dtype=np.float64), np.asarray(y_hat, dtype=np.float64)
    if y.shape != y_hat.shape:
        raise ValueError(f"y and y_hat must have the same shape, got {y.shape} and {y_hat.shape}")
    return y, y_hat


def explained_variance(y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """Voxelwise explained variance ``EV = 1 - Var(y - y_hat) / Var(y)``, as in the paper.

    Variances are taken over images (axis 0), so a constant offset in ``y_hat`` is not
    penalised; this is sklearn's ``explained_variance_score(..., multioutput="raw_values")``,
    except that a constant voxel gets NaN. EV can be negative when the prediction is worse
    than a constant.

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
    y, y_hat = _pair(y, y_hat)
    if y.shape[0] < 2:
        raise ValueError("explained variance needs at least 2 images")
    var_y = y.var(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ev = 1.0 - (y - y_hat).var(axis=0) / var_y
    return np.where(var_y > 0, ev, np.nan)


def pearson_r(y: np.ndarray, y_hat: np.ndarray) -> np.ndarray:
    """Voxelwise Pearson correlation between measured and predicted responses (over images)."""
    y, y_hat = _pair(y, y_hat)
    yc, pc = y - y.mean(axis=0), y_hat - y_hat.mean(axis=0)
    with np.errstate(divide="ignore", invalid="ignore"):
        return (yc * pc).sum(axis=0) / np.sqrt((yc ** 2).sum(axis=0) * (pc ** 2).sum(axis=0))


def ncsnr_from_repeats(repeats: np.ndarray) -> np.ndarray:
    """NSD's noise-ceiling signal-to-noise ratio from repeated presentations.

    ``repeats`` (n_repeats, n_images, n_voxels) holds single-trial responses, the same images in
    each repeat. Returns ``ncsnr = sd_signal / sd_noise`` per voxel: the noise variance is the mean
    over images of the variance across repeats, the signal variance the total variance minus the
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


def noise_ceiling_from_ncsnr(ncsnr: np.ndarray, n_per_image) -> np.ndarray:
    """Noise ceiling (fraction of variance) of betas averaged over repeats, from NSD's ncsnr.

    ``nc = ncsnr**2 / (ncsnr**2 + mean(1 / n_i))``, where ``n_i`` is the number of trials averaged
    for image i (NSD's formula; ``1/n`` when every image has ``n`` trials). NSD reports
    ``100 * nc``. Infinite ncsnr gives 1.

    Parameters
    ----------
    ncsnr : ndarray
        Noise-ceiling signal-to-noise ratio per voxel.
    n_per_image : int or array of int
        Trials averaged per image.

    Examples
    --------
    >>> float(noise_ceiling_from_ncsnr(np.array([1.0]), 3)[0])
    0.75
    """
    n = np.atleast_1d(np.asarray(n_per_image, dtype=float))
    if np.any(n < 1):
        raise ValueError("every image needs at least one trial")
    s2 = np.asarray(ncsnr, dtype=float) ** 2
    with np.errstate(invalid="ignore"):
        return np.where(np.isinf(s2), 1.0, s2 / (s2 + float(np.mean(1.0 / n))))


def noise_ceiling_from_repeats(repeats: np.ndarray, n_average: Optional[int] = None) -> np.ndarray:
    """Noise ceiling (fraction) of responses averaged over ``n_average`` repeats (default: all given).

    :func:`noise_ceiling_from_ncsnr` of :func:`ncsnr_from_repeats`.
    """
    n = np.shape(repeats)[0] if n_average is None else n_average
    return noise_ceiling_from_ncsnr(ncsnr_from_repeats(repeats), n)


def roi_summary(values: Dict[str, np.ndarray], roi: np.ndarray, order=None, stat: str = "mean"):
    """Per-ROI summary table of voxelwise values (NaNs skipped).

    Parameters
    ----------
    values : dict of name -> ndarray (n_voxels,)
        E.g. ``{"ridge": ev_ridge, "oracle": ev_oracle}``.
    roi : ndarray of str (n_voxels,)
    order : list of str, optional
        ROI order of the rows (default: sorted, ``"other"`` last); ``"all"`` (every voxel) is
        always the last row.
    stat : {"mean", "median"}

    Returns
    -------
    pandas.DataFrame
        One row per ROI, ``n_voxels`` and one column per entry of ``values``.

    Examples
    --------
    >>> table = roi_summary({"ev": np.array([0.1, 0.3, 0.2])}, np.array(["FFA", "FFA", "other"]))
    >>> table.index.tolist(), table["n_voxels"].tolist(), round(float(table.loc["FFA", "ev"]), 3)
    (['FFA', 'other', 'all'], [2, 1, 3], 0.2)
    """
    import pandas as pd

    roi = np.asarray(roi).astype(str)
    for key, v in values.items():
        if np.shape(v) != roi.shape:
            raise ValueError(f"values[{key!r}] has shape {np.shape(v)}, expected {roi.shape}")
    if order is None:
        order = sorted(set(roi.tolist()) - {"other"}) + (["other"] if "other" in roi else [])
    table = pd.DataFrame({key: np.asarray(v, dtype=float) for key, v in values.items()})
    table.insert(0, "n_voxels", 1)
    rows = [table.groupby(roi).agg({"n_voxels": "sum", **{k: stat for k in values}}).reindex(list(order)),
            table.agg({"n_voxels": "sum", **{k: stat for k in values}}).to_frame("all").T]
    out = pd.concat(rows).rename_axis("roi")
    out["n_voxels"] = out["n_voxels"].fillna(0).astype(int)
    return out
