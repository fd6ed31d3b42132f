"""SimNSD: a simulated, NSD-like fMRI experiment with known ground truth.

The real Natural Scenes Dataset needs a data-use agreement and hundreds of gigabytes, so the book
runs on a simulation generated deterministically from two seeds:

* the **world seed** fixes the stimulus world: a CLIP-like 512-d embedding space with named
  concepts grouped in categories, captions, and the population prior over voxel weights.
* the **subject seed** draws the people: their cortical vertices, each voxel's mixture
  component, weights and noise, and the images they saw. A new subject seed gives new subjects
  in the same world; that is what "held-out subject" means.

Generative model of one voxel ``j`` of subject ``s`` (Gaussian given the component, so the
Bayes-optimal estimator is exactly computable, see :func:`braincorl_lite.baselines.bayes_oracle`)::

    c_j                      component (its ROI's, or "other")
    theta_j = [w_j; b_j]   ~ N(mu_c + delta_{s,c}, Sigma_c)      delta_{s,c} ~ N(0, Sigma_delta_c)
    response to image i    = x_i . w_j + b_j + h_i . g_j + noise
    h_i . g_j              ~ N(0, u_j^2)   stimulus-driven but not linear in the embedding
    noise (per repeat)     ~ N(0, sigma_j^2),  averaged over 3 repeats

Marginally over the subject offset, a voxel's weights follow the finite Gaussian mixture
:class:`MixturePrior`, the prior the Bayes oracle uses. Figures made from it say it is simulated.
"""

from __future__ import annotations

import re
import time
import warnings
from dataclasses import dataclass, replace
from functools import cached_property
from typing import Dict, List, Optional, Sequence

import numpy as np

from .cortex import ROIS, cortex_template, fsaverage5_mesh, roi_labels
from .data import GroundTruth, SubjectCollection, SubjectData
from .errors import ConfigError
from .metrics import noise_ceiling_from_repeats

__all__ = ["CATEGORIES", "SimConfig", "SIZES", "World", "MixturePrior", "SimDataset", "TextEncoder",
           "noun_phrase", "simulate_simnsd", "simulate_simb5k", "sim_config"]

#: the stimulus world and the text encoder's vocabulary, as ``category -> {concept -> synonyms}``.
#: Faces, bodies, places and words are NSD's ROI categories; food has a SimNSD ROI too (see ``cortex``).
#:
#: :meta hide-value:
CATEGORIES: Dict[str, Dict[str, List[str]]] = {
    "faces": {"face": ["face", "faces", "facial", "head"], "portrait": ["portrait", "headshot", "selfie"],
              "baby": ["baby", "infant", "toddler"], "woman": ["woman", "women", "girl", "lady"],
              "man": ["man", "men", "boy", "guy", "person", "people"],
              "smile": ["smile", "smiling", "laughing", "expression"]},
    "bodies": {"body": ["body", "bodies", "torso", "figure"], "hand": ["hand", "hands", "finger", "fingers", "arm"],
               "athlete": ["athlete", "player", "runner", "skier", "surfer"],
               "dancer": ["dancer", "dancing", "pose", "posing"], "legs": ["leg", "legs", "feet", "foot", "walking"]},
    "places": {"house": ["house", "houses", "home", "building", "buildings"],
               "street": ["street", "road", "city", "town", "sidewalk"],
               "room": ["room", "bedroom", "living room", "interior", "indoor"], "kitchen": ["kitchen", "counter"],
               "mountain": ["mountain", "mountains", "hill", "landscape", "valley"],
               "beach": ["beach", "ocean", "sea", "shore", "coast"], "field": ["field", "park", "meadow", "yard"]},
    "food": {"pizza": ["pizza", "pizzas"], "sandwich": ["sandwich", "burger", "hot dog"],
             "fruit": ["fruit", "fruits", "apple", "banana", "orange", "oranges"],
             "cake": ["cake", "dessert", "donut", "donuts"],
             "salad": ["salad", "vegetables", "broccoli", "carrot", "carrots"],
             "meal": ["meal", "dinner", "lunch", "food", "plate", "dish", "bowl"]},
    "words": {"text": ["text", "word", "words", "writing", "letters"], "sign": ["sign", "signs", "signboard", "label"],
              "book": ["book", "books", "page", "newspaper", "magazine"],
              "screen_text": ["screen text", "menu", "display", "scoreboard"]},
    "animals": {"dog": ["dog", "dogs", "puppy"], "cat": ["cat", "cats", "kitten"],
                "bird": ["bird", "birds", "pigeon", "seagull"], "horse": ["horse", "horses", "pony"],
                "elephant": ["elephant", "elephants"], "giraffe": ["giraffe", "giraffes", "zebra", "zebras"],
                "cow": ["cow", "cows", "sheep", "cattle"]},
    "vehicles": {"car": ["car", "cars", "taxi", "truck"], "bus": ["bus", "buses"],
                 "train": ["train", "trains", "railway", "tram"], "airplane": ["airplane", "plane", "jet", "aircraft"],
                 "bicycle": ["bicycle", "bike", "motorcycle"], "boat": ["boat", "boats", "ship", "sailboat"]},
    "objects": {"chair": ["chair", "chairs", "couch", "sofa", "bench"], "cup": ["cup", "mug", "glass", "bottle"],
                "laptop": ["laptop", "computer", "keyboard", "phone"], "clock": ["clock", "watch"],
                "umbrella": ["umbrella", "umbrellas", "kite"], "scissors": ["scissors", "knife", "fork", "spoon"]},
    "plants": {"tree": ["tree", "trees", "forest", "woods"], "flower": ["flower", "flowers", "vase", "bouquet"],
               "grass": ["grass", "lawn", "bush", "plant", "plants"]},
    "sports": {"ball": ["ball", "football", "soccer", "baseball", "frisbee"], "tennis": ["tennis", "racket", "court"],
               "skateboard": ["skateboard", "skateboarding"], "surfboard": ["surfboard", "surfing", "wave", "waves"],
               "skis": ["ski", "skis", "snowboard", "snow"]},
}

# How a synonym enters a caption: plural nouns take "some", uncountable ones "some" (or, for
# games, "a game of"), activities "someone ...", adjectives a neutral noun; the rest "a"/"an".
_PLURAL = {"faces", "women", "men", "people", "bodies", "hands", "fingers", "legs", "feet", "houses", "buildings",
           "mountains", "pizzas", "fruits", "oranges", "vegetables", "carrots", "donuts", "words", "letters", "signs",
           "books", "dogs", "cats", "birds", "horses", "elephants", "giraffes", "zebras", "cows", "sheep", "cattle",
           "cars", "buses", "trains", "boats", "chairs", "umbrellas", "scissors", "trees", "woods", "flowers",
           "plants", "skis", "waves"}
_UNCOUNTABLE = {"text", "writing", "screen text", "grass", "snow", "broccoli", "food"}
_GAMES = {"tennis", "soccer", "baseball"}
_ACTIVITIES = {"smiling", "laughing", "dancing", "posing", "walking", "skateboarding", "surfing"}
_ADJECTIVES = {"facial": "a facial close-up", "indoor": "an indoor scene"}


def noun_phrase(word: str) -> str:
    """``word`` as a grammatical noun phrase of a caption.

    >>> [noun_phrase(w) for w in ("boat", "boats", "umbrella", "tennis", "surfing", "grass")]
    ['a boat', 'some boats', 'an umbrella', 'a game of tennis', 'someone surfing', 'some grass']
    """
    if word in _ADJECTIVES:
        return _ADJECTIVES[word]
    if word in _ACTIVITIES:
        return f"someone {word}"
    if word in _GAMES:
        return f"a game of {word}"
    if word in _PLURAL or word in _UNCOUNTABLE:
        return f"some {word}"
    return ("an " if word[0] in "aeiou" else "a ") + word


# Category preferences of each component's mean weight direction (category -> loading).
_PREFERENCES: Dict[str, Dict[str, float]] = {
    "FFA": {"faces": 1.0, "bodies": 0.25}, "OFA": {"faces": 0.75, "bodies": 0.15},
    "FBA": {"bodies": 1.0, "faces": 0.3}, "EBA": {"bodies": 0.9, "sports": 0.3, "faces": 0.2},
    "PPA": {"places": 1.0, "vehicles": 0.2, "faces": -0.25}, "OPA": {"places": 0.8, "plants": 0.1, "faces": -0.15},
    "RSC": {"places": 0.9, "faces": -0.2}, "VWFA": {"words": 1.0, "faces": 0.15},
    "food": {"food": 1.0, "objects": 0.1}, "other": {"animals": 0.2, "vehicles": 0.15, "objects": 0.15},
}

#: stimulus mixes: relative frequency of each category as an image's main concept
NSD_MIX = {"faces": 1.4, "bodies": 1.3, "places": 1.4, "food": 1.0, "words": 0.6, "animals": 1.2,
           "vehicles": 1.0, "objects": 1.0, "plants": 0.6, "sports": 0.8}
B5K_MIX = {"faces": 0.6, "bodies": 0.5, "places": 2.0, "food": 0.6, "words": 0.4, "animals": 1.4,
           "vehicles": 1.2, "objects": 1.6, "plants": 1.0, "sports": 0.4}


N_FEATURES = 512  #: image embedding size (like CLIP ViT-B/32)


@dataclass(frozen=True)
class SimConfig:
    """Sizes and calibration constants of a simulated dataset.

    The signal and noise constants were tuned so that, on the default size, ridge regression's
    learning curve (as a fraction of the fully trained encoder) follows the paper's NSD curve;
    see ``benchmarks/calibrate_simnsd.py``.
    """

    n_subjects: int = 8
    n_unique: int = 3000
    n_shared: int = 1000
    n_repeats: int = 3
    voxel_fraction: tuple = (0.55, 0.75)  # share of the cortex template each subject covers
    mask_radius: float = 5.0              # mm added around ROIs to form the cortex template
    mix: str = "nsd"
    # --- signal (variances of the response over images, in squared beta units)
    mean_signal: float = 0.09             # Var_x(x . mu_c) for a category ROI
    voxel_signal: float = 0.07            # E Var_x(x . eta) of the voxel-specific part
    other_scale: float = 0.55             # signal scale of "other" voxels relative to ROI voxels
    spectrum_power: float = 0.7           # eta covariance ~ C_x^power (+ isotropic part)
    isotropic_share: float = 0.2          # share of eta's signal spread over all directions
    subject_offset: float = 0.15          # Var of subject offsets relative to eta's
    unexplained_signal: float = 0.05      # mean u_j^2: stimulus-driven variance not in x
    noise_sd: float = 1.15                # median single-trial noise sd
    noise_spread: float = 0.35            # log-sd of noise sd across voxels
    subject_snr_spread: float = 0.15      # log-sd of a per-subject noise factor
    roi_purity: float = 0.85              # chance that a voxel inside an ROI has the ROI's component
    center_jitter: float = 3.0            # mm, per-subject jitter of ROI centres

    def with_(self, **kw) -> "SimConfig":
        return replace(self, **kw)


#: named sizes; "default" is the calibrated book dataset, "fast" for notebooks in CI, "tiny" for unit tests
#:
#: :meta hide-value:
SIZES: Dict[str, SimConfig] = {
    "default": SimConfig(),
    "fast": SimConfig(n_subjects=4, n_unique=1200, n_shared=300, voxel_fraction=(0.18, 0.24)),
    "tiny": SimConfig(n_subjects=3, n_unique=300, n_shared=100, voxel_fraction=(0.04, 0.05)),
}

B5K_CONFIG = SimConfig(n_subjects=4, n_unique=2000, n_shared=500, n_repeats=2, mix="b5k",
                       noise_sd=1.6, subject_offset=0.25)


def sim_config(dataset: str, size="default") -> SimConfig:
    """The :class:`SimConfig` that ``simulate_<dataset>(size)`` uses, without simulating anything.

    SimB5K keeps its own design (``B5K_CONFIG``); a smaller ``size`` shrinks its subjects, images
    and voxels the way it shrinks SimNSD's.

    >>> sim_config("simb5k", "tiny").n_repeats, sim_config("simnsd", "tiny").n_subjects
    (2, 3)
    """
    if dataset not in ("simnsd", "simb5k"):
        raise ConfigError(f"unknown simulated dataset {dataset!r}: use simnsd or simb5k")
    if not isinstance(size, SimConfig) and size not in SIZES:
        raise ConfigError(f"unknown size {size!r}; choose one of {', '.join(SIZES)} or pass a SimConfig")
    small = size if isinstance(size, SimConfig) else SIZES[size]
    if dataset == "simnsd":
        return small
    if size == "default":
        return B5K_CONFIG
    return B5K_CONFIG.with_(n_subjects=min(B5K_CONFIG.n_subjects, small.n_subjects), n_unique=small.n_unique,
                            n_shared=small.n_shared, voxel_fraction=small.voxel_fraction)


class World:
    """The stimulus world: a CLIP-like embedding space and the population prior of voxel weights.

    ``seed`` is the world seed (0, the default, is the world of the book and the shipped model);
    ``n_features`` the embedding size E. ``concepts[i]`` (of category ``concept_category[i]``) has
    the unit-norm direction ``prototypes[i]``; ``category_centres`` maps category -> direction.
    """

    # geometry of an image embedding (before normalisation)
    common_weight = 3.2
    concept_scale = 2.5
    style_rank = 400
    style_decay = 0.3
    style_scale = 0.7
    noise_scale = 0.45
    hidden_dim = 64

    def __init__(self, seed: int = 0, n_features: int = N_FEATURES):
        self.seed = int(seed)
        self.n_features = E = int(n_features)
        rng = np.random.default_rng([self.seed, 1_000_003])
        basis, _ = np.linalg.qr(rng.standard_normal((E, E)))
        self.common_direction = basis[:, 0]
        self.categories = list(CATEGORIES)
        n_cat = len(self.categories)
        # category centres live in their own subspace, orthogonal to the common direction;
        # related categories share some direction
        cat_raw = basis[:, 1:1 + n_cat].T.copy()
        related = {("faces", "bodies"): 0.35, ("places", "plants"): 0.25, ("vehicles", "places"): 0.2,
                   ("sports", "bodies"): 0.3, ("food", "objects"): 0.2, ("words", "objects"): 0.15}
        for (a, b), r in related.items():
            ia, ib = self.categories.index(a), self.categories.index(b)
            cat_raw[ib] = cat_raw[ib] + r * cat_raw[ia]
        cat_raw /= np.linalg.norm(cat_raw, axis=1, keepdims=True)
        self.category_centres = dict(zip(self.categories, cat_raw))
        # concept prototypes: category centre plus a concept-specific direction
        self.concepts, self.concept_category, protos = [], [], []
        spare = basis[:, 1 + n_cat:]
        j = 0
        for cat, concepts in CATEGORIES.items():
            for concept in concepts:
                p = 0.72 * self.category_centres[cat] + 0.69 * spare[:, j]
                j += 1
                protos.append(p / np.linalg.norm(p))
                self.concepts.append(concept)
                self.concept_category.append(cat)
        self.prototypes = np.array(protos)
        self.concept_category = np.array(self.concept_category)
        # a text-modality offset (CLIP's image/text gap), then a low-rank "style" subspace
        # (lighting, colour, clutter...) with a decaying spectrum
        self.text_offset = spare[:, j]
        rank = min(self.style_rank, spare.shape[1] - j - 1)
        self.style_basis = spare[:, j + 1:j + 1 + rank]
        self.style_sd = self.style_scale * (np.arange(1, rank + 1) ** -self.style_decay)

    def sample_images(self, n: int, rng: np.random.Generator, mix: str = "nsd") -> dict:
        """Draw ``n`` stimuli: unit-norm features, concept lists, captions, main category, hidden features.

        Each image is a sparse mixture of 1-3 concepts; its caption is built from them.
        """
        weights = NSD_MIX if mix == "nsd" else B5K_MIX
        cat_p = np.array([weights[c] for c in self.categories], float)
        cat_p /= cat_p.sum()
        n_con = len(self.concepts)
        concept_cat_idx = np.array([self.categories.index(c) for c in self.concept_category])
        v = np.tile(self.common_weight * self.common_direction, (n, 1))
        main_cat = rng.choice(len(self.categories), size=n, p=cat_p)
        n_extra = rng.choice(3, size=n, p=[0.35, 0.45, 0.20])
        concept_lists = []
        amp = np.zeros((n, n_con))
        for i in range(n):
            chosen = [rng.choice(np.flatnonzero(concept_cat_idx == main_cat[i]))]
            for _ in range(n_extra[i]):  # extra concepts: any concept, once
                c = rng.integers(n_con)
                if c not in chosen:
                    chosen.append(c)
            amp[i, chosen[0]] = self.concept_scale
            for c in chosen[1:]:
                amp[i, c] = self.concept_scale * rng.uniform(0.35, 0.75)
            concept_lists.append(chosen)
        v += amp @ self.prototypes
        v += (rng.standard_normal((n, len(self.style_sd))) * self.style_sd) @ self.style_basis.T
        v += self.noise_scale * rng.standard_normal((n, self.n_features)) / np.sqrt(self.n_features)
        x = v / np.linalg.norm(v, axis=1, keepdims=True)
        captions = np.array([self.caption(c, rng) for c in concept_lists])
        hidden = rng.standard_normal((n, self.hidden_dim)) / np.sqrt(self.hidden_dim)
        main = np.array([self.concept_category[c[0]] for c in concept_lists])
        return {"features": x.astype(np.float32), "concepts": concept_lists, "captions": captions,
                "category": main, "hidden": hidden}

    def caption(self, concept_idx: Sequence[int], rng: np.random.Generator) -> str:
        """A short grammatical caption naming an image's concepts (one of their first two synonyms each).

        >>> world = World(0)
        >>> world.caption([world.concepts.index(c) for c in ("boat", "umbrella", "smile")], np.random.default_rng(2))
        'some boats with an umbrella and a smile'
        """
        phrases = []
        for c in concept_idx:
            syn = CATEGORIES[self.concept_category[c]][self.concepts[c]]
            phrases.append(noun_phrase(syn[rng.integers(min(2, len(syn)))]))
        if len(phrases) == 1:
            return f"a photo of {phrases[0]}"
        return f"{phrases[0]} with " + " and ".join(phrases[1:])

    @cached_property
    def feature_stats(self):
        """Mean and covariance of image features under the NSD mix (from 20,000 draws)."""
        x = self.sample_images(20_000, np.random.default_rng([self.seed, 77]), "nsd")["features"].astype(np.float64)
        return x.mean(0), np.cov(x, rowvar=False)

    def prior(self, config: Optional[SimConfig] = None) -> "MixturePrior":
        """The population prior of voxel weights (one Gaussian component per ROI plus "other")."""
        config = config or SimConfig()
        key = (config.mean_signal, config.voxel_signal, config.other_scale, config.spectrum_power,
               config.isotropic_share, config.subject_offset)
        cache = self.__dict__.setdefault("_prior_cache", {})
        if key not in cache:
            cache[key] = self._build_prior(config)
        return cache[key]

    def _build_prior(self, config: SimConfig) -> "MixturePrior":
        E = self.n_features
        mean_x, cov_x = self.feature_stats
        evals, evecs = np.linalg.eigh(cov_x)
        shape = (evecs * np.clip(evals, 0, None) ** config.spectrum_power) @ evecs.T
        shape /= np.trace(shape @ cov_x)
        iso = np.eye(E) / np.trace(cov_x)
        eta_shape = (1 - config.isotropic_share) * shape + config.isotropic_share * iso  # tr(. C)=1
        names = list(ROIS) + ["other"]
        rng = np.random.default_rng([self.seed, 4242])
        means, covs, offsets = [], [], []
        for name in names:
            scale = 1.0 if name != "other" else config.other_scale
            d = np.zeros(E)
            for cat, load in _PREFERENCES[name].items():
                d += load * self.category_centres[cat]
            d += 0.25 * self.style_basis[:, :12] @ rng.standard_normal(12)
            d /= np.sqrt(d @ cov_x @ d)
            w_mean = np.sqrt(config.mean_signal * scale) * d
            b_mean = -float(mean_x @ w_mean)  # responses centred on the average image
            cov = np.zeros((E + 1, E + 1))
            cov[:E, :E] = config.voxel_signal * scale * eta_shape
            cov[E, E] = 0.05
            means.append(np.append(w_mean, b_mean))
            covs.append(cov)
            offsets.append(config.subject_offset * cov)
        return MixturePrior(names=names, means=np.array(means), covs=np.array(covs),
                            offset_covs=np.array(offsets))


@dataclass
class MixturePrior:
    """Finite Gaussian mixture over voxel parameters ``theta = [w; b]`` (length E + 1).

    ``covs`` are the within-subject covariances and ``offset_covs`` the covariances of the
    per-subject offsets of each component mean. For a voxel of a new subject the marginal prior
    is ``sum_c pi_c N(means[c], covs[c] + offset_covs[c])`` (:meth:`marginal`).
    """

    names: List[str]
    means: np.ndarray
    covs: np.ndarray
    offset_covs: np.ndarray
    weights: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.weights is None:
            self.weights = np.full(len(self.names), 1.0 / len(self.names))
        self.weights = np.asarray(self.weights, float)

    @property
    def n_components(self) -> int:
        return len(self.names)

    def cholesky(self, which: str = "covs") -> np.ndarray:
        """Cached Cholesky factors of ``covs`` or ``offset_covs`` (slightly regularised), shape (C, P, P)."""
        cache = self.__dict__.setdefault("_chol", {})
        if which not in cache:
            mats = getattr(self, which)
            P = mats.shape[1]
            cache[which] = np.array([np.linalg.cholesky(m + 1e-12 * np.trace(m) / P * np.eye(P))
                                     if np.any(m) else np.zeros_like(m) for m in mats])
        return cache[which]

    def draw(self, c: int, n: int, rng: np.random.Generator, which: str = "covs") -> np.ndarray:
        """``n`` zero-mean draws from component ``c``'s ``covs`` (or ``offset_covs``)."""
        L = self.cholesky(which)[c]
        return rng.standard_normal((n, L.shape[0])) @ L.T

    def marginal(self, weights=None) -> "MixturePrior":
        """The prior of one voxel of a new subject: offsets integrated out."""
        return MixturePrior(self.names, self.means, self.covs + self.offset_covs, np.zeros_like(self.offset_covs),
                            self.weights if weights is None else np.asarray(weights, float))

    def sample(self, n: int, rng: np.random.Generator, component=None):
        """Draw ``n`` parameter vectors (marginal over offsets); returns (theta, component)."""
        if component is None:
            component = rng.choice(self.n_components, size=n, p=self.weights)
        theta = np.empty((n, self.means.shape[1]))
        for c in np.unique(component):
            idx = np.flatnonzero(component == c)
            theta[idx] = self.means[c] + self.draw(c, len(idx), rng) + self.draw(c, len(idx), rng, "offset_covs")
        return theta, component


class TextEncoder:
    """Map free text onto the SimNSD embedding space, like CLIP's text tower does for CLIP.

    Words and two-word phrases are looked up in the concept vocabulary (with synonyms); category
    names map to the category direction. The embedding is the normalised sum of matched
    prototypes, the common direction, and a fixed text-modality offset (CLIP's image/text gap).

    Examples
    --------
    >>> enc = TextEncoder(World(0))
    >>> enc.encode(["a photo of a face", "a house"]).shape
    (2, 512)
    >>> enc.match("a man with a living room")
    ['man', 'living room']
    """

    #: weight of the common direction in a text embedding (for images, ``World.common_weight``)
    text_common = 1.5
    #: weight of the text-only direction, CLIP's image/text "modality gap"
    modality_gap = 1.5

    def __init__(self, world: World):
        self.world = world
        self.vocab: Dict[str, np.ndarray] = {}
        for i, concept in enumerate(world.concepts):
            for syn in CATEGORIES[world.concept_category[i]][concept]:
                self.vocab.setdefault(syn.replace("_", " "), world.prototypes[i])
        for cat, centre in world.category_centres.items():
            self.vocab.setdefault(cat, centre)
            self.vocab.setdefault(cat.rstrip("s"), centre)

    def match(self, text: str) -> List[str]:
        """Vocabulary entries found in ``text`` (two-word phrases first)."""
        tokens = re.findall(r"[a-z]+", text.lower())
        found, i = [], 0
        while i < len(tokens):
            pair = " ".join(tokens[i:i + 2])
            if i + 1 < len(tokens) and pair in self.vocab:
                found.append(pair)
                i += 2
                continue
            if tokens[i] in self.vocab:
                found.append(tokens[i])
            i += 1
        return found

    def encode(self, texts) -> np.ndarray:
        """Unit-norm embeddings, shape (n_texts, E). Unknown text gets the generic embedding."""
        w = self.world
        out = []
        for t in [texts] if isinstance(texts, str) else texts:
            words = self.match(t)
            if not words:
                warnings.warn(f"no known concept in {t!r}: returning the generic text embedding", stacklevel=2)
            v = self.text_common * w.common_direction + self.modality_gap * w.text_offset
            for word in words:
                v = v + w.concept_scale * self.vocab[word] / max(1, len(words)) ** 0.5
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)


@dataclass
class SimDataset(SubjectCollection):
    """A list of simulated subjects plus the world and prior that generated them."""

    name: str
    subjects: List[SubjectData]
    world: World
    prior: MixturePrior
    config: SimConfig
    world_seed: int
    subject_seed: int
    generation_seconds: float = 0.0

    def subject_prior(self, i: int) -> MixturePrior:
        """The marginal prior of a voxel of subject ``i`` (component weights = its composition)."""
        counts = np.bincount(self.subjects[i].truth.component, minlength=self.prior.n_components).astype(float)
        return self.prior.marginal(counts / counts.sum())


def _simulate_subject(s, config, world, prior, images, image_ids, rng, coords, hemi, template, name, seeds):
    """Draw subject ``s``: its vertices and ROIs, voxel parameters, noise, and its averaged betas."""
    E = world.n_features
    frac = rng.uniform(*config.voxel_fraction)
    vert = np.sort(rng.choice(template, size=int(round(frac * len(template))), replace=False))
    centres = {roi: [(h, np.array([x, y, z], float) + config.center_jitter * rng.standard_normal(3))
                     for h, x, y, z in pts] for roi, (_, pts, _) in ROIS.items()}
    radii = {roi: r * rng.uniform(0.85, 1.15) for roi, (_, _, r) in ROIS.items()}
    roi = roi_labels(coords[vert], hemi[vert], centres, radii)
    n_vox = len(vert)
    comp = np.array([prior.names.index(r) for r in roi])
    comp[(roi != "other") & (rng.random(n_vox) > config.roi_purity)] = prior.names.index("other")
    # a subject offset per component, then the voxel parameters
    theta = np.empty((n_vox, E + 1))
    for c in range(prior.n_components):
        idx = np.flatnonzero(comp == c)
        if idx.size:
            theta[idx] = prior.means[c] + prior.draw(c, 1, rng, "offset_covs") + prior.draw(c, idx.size, rng)
    w, b = theta[:, :E], theta[:, E]
    snr_factor = np.exp(config.subject_snr_spread * rng.standard_normal())
    noise_sd = config.noise_sd * snr_factor * np.exp(config.noise_spread * rng.standard_normal(n_vox))
    unexplained_sd = np.sqrt(config.unexplained_signal * rng.gamma(4.0, 0.25, size=n_vox))
    g = rng.standard_normal((n_vox, world.hidden_dim)) * unexplained_sd[:, None]
    # images of this subject: shared first, then its own unique images
    rows = np.concatenate([np.arange(config.n_shared), config.n_shared + s * config.n_unique + np.arange(config.n_unique)])
    x = images["features"][rows].astype(np.float64)
    clean = (x @ w.T + b + images["hidden"][rows] @ g.T).astype(np.float32)
    noise = rng.standard_normal((config.n_repeats,) + clean.shape, dtype=np.float32)
    repeats = clean[None] + noise_sd.astype(np.float32)[None, None, :] * noise
    # the hidden part is Gaussian given g: exactly N(0, |g|^2 / hidden_dim)
    u_sd = np.linalg.norm(g, axis=1) / np.sqrt(world.hidden_dim)
    truth = GroundTruth(weights=w.astype(np.float32), bias=b.astype(np.float32), noise_sd=noise_sd.astype(np.float32),
                        component=comp, unexplained_sd=u_sd.astype(np.float32))
    return SubjectData(
        subject=f"{name.lower()}-{s + 1:02d}", features=x.astype(np.float32), betas=repeats.mean(0),
        image_ids=image_ids[rows], shared_mask=np.arange(len(rows)) < config.n_shared, roi=roi, vertex=vert,
        noise_ceiling=noise_ceiling_from_repeats(repeats), n_repeats=config.n_repeats,
        captions=images["captions"][rows], truth=truth,
        meta={"dataset": name.lower(), "simulated": True, "world_seed": seeds[0], "subject_seed": seeds[1],
              "subject_index": s, "components": list(prior.names),
              "image_category": images["category"][rows].tolist()})


def _simulate(name, size, world_seed: int, subject_seed: int, progress: bool, **overrides) -> SimDataset:
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    config = sim_config(name.lower(), size).with_(**overrides)
    world_seed, subject_seed = int(world_seed), int(subject_seed)
    world = World(world_seed)
    prior = world.prior(config)
    # the shared images belong to the world (the same for every subject seed); each subject's
    # unique images are drawn with the subject seed
    mix_id = 0 if config.mix == "nsd" else 1
    n_unique = config.n_subjects * config.n_unique
    shared = world.sample_images(config.n_shared, np.random.default_rng([world_seed, 11, mix_id]), config.mix)
    unique = world.sample_images(n_unique, np.random.default_rng([world_seed, subject_seed, 12, mix_id]), config.mix)
    images = {key: np.concatenate([shared[key], unique[key]]) for key in ("features", "captions", "category", "hidden")}
    base = 1_000_000 * mix_id
    image_ids = np.concatenate([base + np.arange(config.n_shared),
                                base + 10_000 + subject_seed * n_unique + np.arange(n_unique)])
    template = cortex_template(config.mask_radius)
    coords, hemi = fsaverage5_mesh()
    subjects = [_simulate_subject(s, config, world, prior, images, image_ids,
                                  np.random.default_rng([world_seed, subject_seed, 101, s]), coords, hemi, template,
                                  name, (world_seed, subject_seed))
                for s in tqdm(range(config.n_subjects), desc=f"simulating {name} subjects", disable=not progress)]
    return SimDataset(name=name, subjects=subjects, world=world, prior=prior, config=config, world_seed=world_seed,
                      subject_seed=subject_seed, generation_seconds=time.perf_counter() - t0)


def simulate_simnsd(size="default", world_seed: int = 0, subject_seed: int = 0,
                    progress: bool = False, **overrides) -> SimDataset:
    """Simulate SimNSD, the book's default NSD-like dataset (a simulation, not NSD).

    Parameters
    ----------
    size : {"default", "fast", "tiny"} or SimConfig
        ``"default"``: 8 subjects, 3,000 unique + 1,000 shared images each, about 1,500 to 2,000
        voxels per subject; ``"fast"`` and ``"tiny"`` are smaller, for CI and tests.
    world_seed, subject_seed : int
        The stimulus world and prior (keep 0 to match the shipped model); the people (another
        value gives held-out people in the same world).
    progress : bool
        Show a progress bar.
    **overrides
        Any :class:`SimConfig` field, e.g. ``n_subjects=2``.

    Returns
    -------
    SimDataset
        ``dataset[i]`` is a :class:`~braincorl_lite.data.SubjectData` with ground truth.

    Examples
    --------
    >>> ds = simulate_simnsd("tiny")
    >>> len(ds), ds[0].features.shape[1]
    (3, 512)
    """
    return _simulate("SimNSD", size, world_seed, subject_seed, progress, **overrides)


def simulate_simb5k(size="default", world_seed: int = 0, subject_seed: int = 5000,
                    progress: bool = False, **overrides) -> SimDataset:
    """Simulate SimB5K, a BOLD5000-like second dataset (a simulation, not BOLD5000).

    New subjects in the same stimulus world, a scene- and object-heavy stimulus mix, fewer
    repeats (2) and lower signal-to-noise than SimNSD. Used to test generalisation without
    retraining. Takes the arguments of :func:`simulate_simnsd`.
    """
    return _simulate("SimB5K", size, world_seed, subject_seed, progress, **overrides)
