"""The cortex: category-selective ROIs, their categories, and the fsaverage5 surface.

Two different category lists are easy to confuse:

* NSD's functional localiser (fLoc; Stigliani et al. 2015) shows **characters, bodies, faces,
  places and objects** (:data:`FLOC_CATEGORIES`);
* NSD's category ROIs derived from it are selective for **faces, bodies, places and words**
  (:data:`NSD_ROI_CATEGORIES`).

SimNSD adds a food-selective region (food selectivity was found in NSD by Khosla et al. 2022
and Jain et al. 2023, but it is not a localiser category), so its ROIs prefer one of
:data:`ROI_CATEGORIES`.

>>> ROI_CATEGORY["FFA"], ROI_CATEGORY["VWFA"]
('faces', 'words')
>>> [c for c in ROI_CATEGORIES if c not in NSD_ROI_CATEGORIES]
['food']
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

__all__ = ["FLOC_CATEGORIES", "NSD_ROI_CATEGORIES", "ROI_CATEGORIES", "ROIS", "ROI_CATEGORY",
           "N_VERTICES", "fsaverage5_mesh", "roi_labels", "cortex_template"]

#: the categories of NSD's functional localiser (fLoc)
FLOC_CATEGORIES = ("characters", "bodies", "faces", "places", "objects")
#: the categories of NSD's category-selective ROIs
NSD_ROI_CATEGORIES = ("faces", "bodies", "places", "words")
#: the categories preferred by SimNSD's ROIs, NSD's four plus food (a SimNSD extra)
ROI_CATEGORIES = ("faces", "bodies", "places", "words", "food")

#: ROI -> (preferred category, [(hemisphere, x, y, z), ...], radius in mm). Approximate published
#: peak coordinates (MNI, mm) from the category-localiser literature; "food" is SimNSD's extra.
#:
#: :meta hide-value:
ROIS: Dict[str, Tuple[str, List[tuple], float]] = {
    "FFA": ("faces", [("R", 40, -52, -18), ("L", -40, -54, -18)], 15.0),
    "OFA": ("faces", [("R", 42, -78, -10), ("L", -40, -80, -10)], 13.0),
    "FBA": ("bodies", [("R", 42, -44, -22), ("L", -42, -46, -22)], 10.0),
    "EBA": ("bodies", [("R", 48, -70, 4), ("L", -46, -72, 4)], 16.0),
    "PPA": ("places", [("R", 26, -44, -10), ("L", -26, -46, -10)], 14.0),
    "OPA": ("places", [("R", 34, -82, 22), ("L", -32, -84, 22)], 14.0),
    "RSC": ("places", [("R", 16, -54, 12), ("L", -14, -56, 12)], 13.0),
    "VWFA": ("words", [("L", -44, -56, -14)], 13.0),
    "food": ("food", [("R", 32, -60, -14), ("L", -32, -62, -14)], 11.0),
}

#: ROI -> the category it prefers (FFA -> faces, PPA -> places, ...)
ROI_CATEGORY: Dict[str, str] = {roi: spec[0] for roi, spec in ROIS.items()}

#: vertices per fsaverage5 hemisphere (left ``0..10241``, right ``10242..20483``)
N_VERTICES = 10242

_MESH_CACHE: dict = {}


def fsaverage5_mesh():
    """Pial coordinates of both fsaverage5 hemispheres, shape (20484, 3), and hemisphere labels.

    Bundled with nilearn (no download); cached after the first call. Vertex ids ``0..10241``
    are the left hemisphere, ``10242..20483`` the right one.

    >>> coords, hemi = fsaverage5_mesh()
    >>> coords.shape, hemi.tolist().count("L")
    ((20484, 3), 10242)
    """
    if "coords" not in _MESH_CACHE:
        from nilearn import datasets, surface

        fs = datasets.fetch_surf_fsaverage("fsaverage5")
        halves = [surface.load_surf_mesh(fs[f"pial_{side}"]) for side in ("left", "right")]
        lc, rc = (np.asarray(m.coordinates if hasattr(m, "coordinates") else m[0]) for m in halves)
        _MESH_CACHE["coords"] = np.vstack([lc, rc]).astype(np.float64)
        _MESH_CACHE["hemi"] = np.array(["L"] * len(lc) + ["R"] * len(rc))
    return _MESH_CACHE["coords"], _MESH_CACHE["hemi"]


def roi_labels(coords, hemi, centres: Dict[str, list], radii: Dict[str, float]) -> np.ndarray:
    """Label each vertex with the nearest ROI centre within that ROI's radius, else ``"other"``.

    ``centres`` maps ROI -> [(hemisphere, xyz array), ...]; ``radii`` maps ROI -> mm.

    >>> roi_labels(np.zeros((2, 3)), np.array(["L", "R"]), {"A": [("L", np.zeros(3))]}, {"A": 1.0})
    array(['A', 'other'], dtype='<U5')
    """
    best = np.full(len(coords), np.inf)
    label = np.full(len(coords), "other", dtype=object)
    for roi, points in centres.items():
        for h, centre in points:
            d = np.linalg.norm(coords - centre, axis=1)
            d[hemi != h] = np.inf
            inside = (d <= radii[roi]) & (d < best)
            best[inside] = d[inside]
            label[inside] = roi
    return label.astype(str)


def cortex_template(mask_radius: float) -> np.ndarray:
    """Vertex ids of occipito-temporal cortex: within ``mask_radius`` mm beyond any ROI's radius."""
    coords, hemi = fsaverage5_mesh()
    keep = np.zeros(len(coords), bool)
    for _, points, radius in ROIS.values():
        for h, x, y, z in points:
            d = np.linalg.norm(coords - np.array([x, y, z], float), axis=1)
            keep |= (d <= radius + mask_radius) & (hemi == h)
    return np.flatnonzero(keep)
