"""The real-data path: NSD files and CLIP weights -> the :class:`~braincorl_lite.data.SubjectData`
files that ``load_dataset("nsd")`` reads. It uses the core; the core never imports it.

Modules, in the order data flow through them: ``fetch`` (cached, hash-checked downloads of
the files in ``data_manifests/``), ``design`` (NSD's design, sessions and ROI label tables),
``features`` (CLIP embeddings with open_clip), ``prepare`` (one subject's container) and
``cli`` (the ``fetch``, ``extract-features`` and ``prepare-nsd`` commands). Their public names
are importable from ``braincorl_lite.nsd``.
"""

from .design import (FLOC_FILES, FLOC_LABELS, NSD_PUBLIC_SESSIONS, NSD_SESSIONS_COMPLETED, ROI_MAP,
                     NSDFormatError, read_design, parse_sessions, subject_image_ids)
from .features import (ClipEncoder, clip_weights_status, encode_text, extract_folder_features, extract_nsd_features,
                       load_clip, load_clip_offline, load_features, sample_photographs, save_features)
from .fetch import MissingDataError, cache_dir, locate
from .prepare import VOXEL_SETS, prepare_subject

__all__ = ["FLOC_FILES", "FLOC_LABELS", "NSD_PUBLIC_SESSIONS", "NSD_SESSIONS_COMPLETED", "ROI_MAP", "VOXEL_SETS",
           "NSDFormatError", "MissingDataError", "ClipEncoder", "read_design", "parse_sessions", "subject_image_ids",
           "clip_weights_status", "encode_text", "extract_folder_features", "extract_nsd_features", "load_clip",
           "load_clip_offline", "load_features", "sample_photographs", "save_features", "cache_dir", "locate",
           "prepare_subject"]
