"""Check the PaDiM paper's tables with skpadim, and print our numbers beside the paper's.

Usage::

    python benchmarks/paper_tables.py --mvtec PATH [--stc PATH] --out DIR
    python benchmarks/paper_tables.py --mvtec PATH --tables I,II --classes carpet,bottle --out DIR
    python benchmarks/paper_tables.py --quick --out DIR        # demo set, minutes on a CPU

The paper's tables (Defard et al., 2020), as measured here:

- I: ResNet18 layer ablation: single layers 1, 2, 3; their three maps summed; all three
  layers modelled jointly (448 dims). Pixel AUROC and PRO on MVTec AD.
- II: ResNet18 dimensionality reduction: Rd100, PCA100, Rd200, PCA200, all 448. Rd models
  are averaged over ``--seeds`` draws, with the standard error of the mean.
- III: localization (pixel AUROC, PRO) per class and averaged: PaDiM-R18-Rd100,
  PaDiM-WR50-Rd550, SPADE (WR50, K=50) and the VAE.
- IV: ShanghaiTech Campus pixel AUROC (frames resized to 256, no crop).
- V: image AUROC on MVTec AD, with PaDiM-EfficientNet-B5.
- VI: Rd-MVTec AD (training and test images randomly rotated and cropped), over
  ``--rd-seeds`` seeds.
- VII, VIII: serial inference time per image, fitting time, and the fitted model's size
  (joblib file and bytes in memory), measured on this machine, on one class.

The run writes ``report.md`` (each row: our value, the paper's, the difference),
``results.json`` (every raw number) and ``cache.jsonl`` to ``--out``. Each measurement
(setting, model, class, seed) is appended to the cache as it finishes; running the same
command again reuses finished ones and retries failed ones, so an interrupted run resumes
where it stopped. Delete ``cache.jsonl`` to start over. A failed measurement is reported
with its error message and the run goes on.

Pretrained weights come from torchvision (downloaded on first use) unless ``--weights-dir``
holds state-dict files named after the backbones (``resnet18.pth``,
``wide_resnet50_2.pth``, ``efficientnet_b5.pth``).

``--quick`` runs the same code on skpadim's offline demo set (texture photos with drawn
defects, three "classes", all textures) with EfficientNet-Lite0 standing in for every
backbone and smaller settings; its numbers check that the benchmark works, not the paper.
"""

import argparse
import gc
import json
import math
import os
import platform
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass, field, replace
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.base import clone
from sklearn.pipeline import Pipeline

sys.path.insert(0, str(Path(__file__).resolve().parent))

import paper_values  # noqa: E402

import skpadim  # noqa: E402
from skpadim import VAE, PatchPCA, anomaly_maps, make_padim, make_spade  # noqa: E402
from skpadim.datasets import (  # noqa: E402
    DEMO_TEXTURES,
    MVTEC_CATEGORIES,
    MVTEC_TEXTURES,
    load_demo,
    load_mvtec,
    load_stc,
    make_rd_mvtec,
    read_masks,
)
from skpadim.detectors.scoring import image_scores  # noqa: E402
from skpadim.evaluation import image_auroc, pixel_auroc, pro_score  # noqa: E402
from skpadim.features import transform_masks  # noqa: E402
from skpadim.features._images import n_images  # noqa: E402

TABLE_IDS = ("I", "II", "III", "IV", "V", "VI", "VII", "VIII")
GROUPS = ("textures", "objects", "all")
SETTINGS = ("mvtec", "rd-mvtec", "stc", "cost")


# ---------------------------------------------------------------------------- models
@dataclass(frozen=True)
class ModelSpec:
    """What to fit: a PaDiM variant, a sum of PaDiM maps, SPADE or the VAE.

    ``options`` are extra keyword arguments of ``make_spade`` or ``VAE``, as sorted pairs so
    that the spec stays hashable. ``key`` names the spec in the cache: two tables asking for
    the same spec share one measurement.
    """

    kind: str  # "padim", "sum", "spade" or "vae"
    backbone: str = "resnet18"
    layers: tuple = None
    reduction: str = None  # None (all channels), "rd" or "pca"
    n_dims: int = None
    parts: tuple = ()  # "sum": the specs whose maps are added
    options: tuple = ()

    @property
    def varies_with_seed(self):
        """True when the seed changes the model (a random channel draw)."""
        return self.reduction == "rd" or any(p.varies_with_seed for p in self.parts)

    @property
    def key(self):
        if self.kind == "sum":
            return "sum(" + ",".join(p.key for p in self.parts) + ")"
        layers = "+".join(self.layers) if self.layers else "default"
        reduction = f"{self.reduction}{self.n_dims}" if self.reduction else "all"
        options = ",".join(f"{k}={v}" for k, v in self.options)
        return f"{self.kind}/{self.backbone}/{layers}/{reduction}/{options}"


def _padim(backbone, layers=None, reduction=None, n_dims=None):
    return ModelSpec("padim", backbone, tuple(layers) if layers else None, reduction, n_dims)


def _options(**kwargs):
    return tuple(sorted(kwargs.items()))


def _layer_models(backbone, layers):
    singles = {f"Layer {i}": _padim(backbone, [layer]) for i, layer in enumerate(layers, 1)}
    return {**singles, "Layer 1+2+3": ModelSpec("sum", parts=tuple(singles.values()))}


@dataclass
class Profile:
    """Everything that differs between the paper's run and the quick one."""

    name: str
    models: dict  # paper's model name -> ModelSpec
    stand_ins: dict  # paper's model name -> what stands in for it (quick mode)
    geometry: dict  # setting -> (resize, crop) the images go through
    seeds: int  # Table II: draws of the random channel selection
    rd_seeds: int  # Table VI: Rd-MVTec AD draws
    cost_images: int  # Table VII: images timed one by one
    cost_vae: tuple  # VAE options overriding the training budget when only timing it
    classes: tuple = ()
    textures: tuple = ()
    options: dict = field(default_factory=dict)  # data options that change results


def paper_profile(args):
    """The paper's models and preprocessing on MVTec AD and STC."""
    r18, layers = "resnet18", ("layer1", "layer2", "layer3")
    models = {
        **_layer_models(r18, layers),
        "PaDiM-R18": _padim(r18),
        "Rd 100": _padim(r18, reduction="rd", n_dims=100),
        "PCA 100": _padim(r18, reduction="pca", n_dims=100),
        "Rd 200": _padim(r18, reduction="rd", n_dims=200),
        "PCA 200": _padim(r18, reduction="pca", n_dims=200),
        "all (448)": _padim(r18),
        "PaDiM-R18-Rd100": _padim(r18, reduction="rd", n_dims=100),
        "PaDiM-WR50-Rd550": _padim("wide_resnet50_2", reduction="rd", n_dims=550),
        "PaDiM-EfficientNet-B5": _padim("efficientnet_b5"),
        "SPADE": ModelSpec("spade", "wide_resnet50_2", options=_options(n_neighbors=50)),
        "VAE": ModelSpec("vae", options=_options(
            resize=292, random_crop=282, crop=256, n_epochs=args.vae_epochs,
            n_augmented=args.vae_images, batch_size=32)),
    }
    classes = tuple(args.classes or MVTEC_CATEGORIES)
    return Profile(
        name="paper", models=models, stand_ins={},
        geometry={"mvtec": (256, 224), "cost": (256, 224), "rd-mvtec": (None, None),
                  "stc": (256, None)},
        seeds=args.seeds or 10, rd_seeds=args.rd_seeds or 5, cost_images=20,
        cost_vae=_options(n_epochs=1, n_augmented=64),
        classes=classes, textures=tuple(c for c in classes if c in MVTEC_TEXTURES),
        options={"stc_frame_step": args.stc_frame_step, "stc_spade_train": args.stc_spade_train},
    )


#: Quick mode: demo images are made at this size, resized to 128 and cropped to 112 (the
#: paper's 256 -> 224 ratio); Lite0's 176 channels stand in for ResNet18's 448.
QUICK_DATA = {"size": 144, "n_train": 30, "n_test": 16}


def quick_profile(args):
    """EfficientNet-Lite0 stand-ins on the demo set: the same code path in minutes."""
    lite0, layers = "efficientnet_lite0", ("stage2", "stage3", "stage5")
    rd50, rd100 = (_padim(lite0, reduction="rd", n_dims=n) for n in (50, 100))
    everything = _padim(lite0)
    models = {
        **_layer_models(lite0, layers),
        "PaDiM-R18": everything,
        "Rd 100": rd50, "PCA 100": _padim(lite0, reduction="pca", n_dims=50),
        "Rd 200": rd100, "PCA 200": _padim(lite0, reduction="pca", n_dims=100),
        "all (448)": everything,
        "PaDiM-R18-Rd100": rd50,
        "PaDiM-WR50-Rd550": rd100,
        "PaDiM-EfficientNet-B5": everything,
        "SPADE": ModelSpec("spade", lite0, options=_options(n_neighbors=10)),
        "VAE": ModelSpec("vae", options=_options(
            resize=128, random_crop=120, crop=112, n_epochs=3, n_augmented=60, batch_size=20)),
    }
    stand_ins = {
        "Layer 1": "Lite0 stage2 (24 ch)", "Layer 2": "Lite0 stage3 (40 ch)",
        "Layer 3": "Lite0 stage5 (112 ch)", "Layer 1+2+3": "sum of the three Lite0 maps",
        "PaDiM-R18": "Lite0, all 176 ch", "all (448)": "Lite0, all 176 ch",
        "Rd 100": "Lite0 Rd50 of 176", "PCA 100": "Lite0 PCA50 of 176",
        "Rd 200": "Lite0 Rd100 of 176", "PCA 200": "Lite0 PCA100 of 176",
        "PaDiM-R18-Rd100": "Lite0 Rd50 of 176", "PaDiM-WR50-Rd550": "Lite0 Rd100 of 176",
        "PaDiM-EfficientNet-B5": "Lite0, all 176 ch",
        "SPADE": "SPADE on Lite0 (stages 2, 3, 5 + head), K=10",
        "VAE": "VAE at 112 px, 3 epochs of 60 augmented images",
    }
    return Profile(
        name="quick", models=models, stand_ins=stand_ins,
        geometry={"mvtec": (128, 112), "cost": (128, 112), "rd-mvtec": (None, None),
                  "stc": (128, None)},
        seeds=args.seeds or 2, rd_seeds=args.rd_seeds or 2, cost_images=5,
        cost_vae=_options(n_epochs=1, n_augmented=20),
        classes=DEMO_TEXTURES, textures=DEMO_TEXTURES, options=dict(QUICK_DATA),
    )


# ---------------------------------------------------------------------------- tables
@dataclass(frozen=True)
class Metric:
    header: str
    field: str  # name in a measurement's record
    scale: float  # record value * scale = the paper's unit
    digits: int


METRICS = {
    "pixel_auroc": Metric("pixel AUROC %", "pixel_auroc", 100.0, 1),
    "pro": Metric("PRO %", "pro", 100.0, 1),
    "image_auroc": Metric("image AUROC %", "image_auroc", 100.0, 1),
    "infer_s": Metric("inference s/image", "infer_s", 1.0, 3),
    "fit_s": Metric("fit s/class", "fit_s", 1.0, 1),
    "model_gb": Metric("joblib file GB", "model_bytes", 1e-9, 3),
    "memory_gb": Metric("in memory GB", "memory_bytes", 1e-9, 3),
}


@dataclass(frozen=True)
class TableDef:
    id: str
    title: str
    setting: str
    models: tuple
    metrics: tuple
    per_class: bool = False
    seeds: str = "one"  # "one": seed 0; "rd": --seeds draws for Rd models; "data": --rd-seeds


_COST_MODELS = ("PaDiM-R18-Rd100", "PaDiM-WR50-Rd550", "SPADE", "VAE")
TABLES = {t.id: t for t in (
    TableDef("I", "Layer ablation: one Gaussian per layer, summed maps, or all layers jointly",
             "mvtec", ("Layer 1", "Layer 2", "Layer 3", "Layer 1+2+3", "PaDiM-R18"),
             ("pixel_auroc", "pro")),
    TableDef("II", "Dimensionality reduction: random selection (Rd) versus PCA",
             "mvtec", ("Rd 100", "PCA 100", "Rd 200", "PCA 200", "all (448)"),
             ("pixel_auroc", "pro"), seeds="rd"),
    TableDef("III", "Anomaly localization on MVTec AD, per class",
             "mvtec", ("PaDiM-R18-Rd100", "PaDiM-WR50-Rd550", "SPADE", "VAE"),
             ("pixel_auroc", "pro"), per_class=True),
    TableDef("IV", "Anomaly localization on ShanghaiTech Campus",
             "stc", ("PaDiM-R18-Rd100", "SPADE"), ("pixel_auroc",)),
    TableDef("V", "Anomaly detection (image level) on MVTec AD",
             "mvtec", ("PaDiM-R18-Rd100", "PaDiM-WR50-Rd550", "PaDiM-EfficientNet-B5",
                       "SPADE", "VAE"), ("image_auroc",)),
    TableDef("VI", "Non-aligned data: Rd-MVTec AD (random rotation and crop)",
             "rd-mvtec", ("PaDiM-R18-Rd100", "PaDiM-WR50-Rd550", "SPADE"),
             ("pixel_auroc", "pro", "image_auroc"), seeds="data"),
    TableDef("VII", "Time: serial inference per image and fitting per class, on this machine",
             "cost", _COST_MODELS, ("infer_s", "fit_s")),
    TableDef("VIII", "Size of the fitted model", "cost", _COST_MODELS,
             ("model_gb", "memory_gb")),
)}


@dataclass(frozen=True)
class Entry:
    """One measurement: a model fitted and evaluated on one class with one seed."""

    setting: str
    spec: ModelSpec
    class_name: str
    seed: int
    model: str  # the paper's name of the first table row that asked for it (for logs)
    setting_key: str
    weights_tag: str

    @property
    def key(self):
        return "|".join((self.setting_key, self.spec.key, f"w={self.weights_tag}",
                         self.class_name, str(self.seed)))


def _table_seeds(table, spec, profile):
    if table.seeds == "data":
        return tuple(range(profile.rd_seeds))
    if table.seeds == "rd" and spec.varies_with_seed:
        return tuple(range(profile.seeds))
    return (0,)


def _table_classes(table, profile):
    if table.setting == "stc":
        return ("STC",)
    if table.setting == "cost":
        return (profile.classes[0],)
    return profile.classes


def setting_key(profile, setting):
    resize, crop = profile.geometry[setting]
    key = f"{profile.name}:{setting}@{resize}/{crop}"
    if profile.name == "quick":
        key += ":{size}px,{n_train}+{n_test}".format(**profile.options)
    elif setting == "stc":
        key += ":step{stc_frame_step},spade{stc_spade_train}".format(**profile.options)
    if setting == "cost":
        key += ":" + profile.options.get("cost_machine", "")
    return key


def plan(profile, table_ids, weights_tag):
    """The measurements the tables need, each once, in an order that reuses features."""
    entries = {}
    for table in (TABLES[t] for t in table_ids):
        for model in table.models:
            spec = spec_for(table, profile, model)
            for class_name in _table_classes(table, profile):
                for seed in _table_seeds(table, spec, profile):
                    entry = Entry(table.setting, spec, class_name, seed, model,
                                  setting_key(profile, table.setting), weights_tag)
                    entries.setdefault(entry.key, entry)
    classes = {c: i for i, c in enumerate(profile.classes)}
    models = {m: i for i, m in enumerate(profile.models)}

    def order(e):
        data_seed = e.seed if e.setting == "rd-mvtec" else 0
        return (SETTINGS.index(e.setting), classes.get(e.class_name, -1), data_seed,
                models[e.model], e.seed)

    return sorted(entries.values(), key=order)


def spec_for(table, profile, model):
    """The spec a table row reads (the cost tables time a VAE with a short training)."""
    spec = profile.models[model]
    if table.setting == "cost" and spec.kind == "vae":
        spec = replace(spec, options=tuple(sorted({**dict(spec.options),
                                                   **dict(profile.cost_vae)}.items())))
    return spec


# ---------------------------------------------------------------------------- data
@dataclass
class Data:
    """A class's training and test images, labels, and masks at any model's geometry."""

    train: object  # list of paths or uint8 array
    test: object
    labels: np.ndarray
    mask_source: object  # (n, H, W) array, or mask references a loader returned
    _masks: dict = field(default_factory=dict)

    def masks(self, resize, crop):
        """Ground truth through the same resize and crop as the images, memoised."""
        if (resize, crop) not in self._masks:
            self._masks[(resize, crop)] = _transform_masks(self.mask_source, self.test,
                                                           resize, crop)
        return self._masks[(resize, crop)]


def _transform_masks(source, images, resize, crop, chunk=256):
    if isinstance(source, np.ndarray):
        return transform_masks(source, resize, crop)
    # Native-resolution masks of a whole STC test set would not fit in memory: by chunks.
    parts = [transform_masks(read_masks(source[i:i + chunk], images[i:i + chunk]), resize, crop)
             for i in range(0, len(source), chunk)]
    return np.concatenate(parts)


def _evenly(items, limit):
    """At most ``limit`` items, evenly spaced (consecutive video frames are near copies)."""
    n = n_images(items)
    if limit is None or n <= limit:
        return items
    keep = np.unique(np.linspace(0, n - 1, limit).round().astype(int))
    return [items[i] for i in keep] if isinstance(items, list) else items[keep]


class DataSets:
    """Loads (and keeps the last of) the data of each setting, class and seed."""

    def __init__(self, profile, mvtec_root=None, stc_root=None):
        self.profile, self.mvtec_root, self.stc_root = profile, mvtec_root, stc_root
        self._demo = None
        self._last = (None, None)

    def get(self, setting, class_name, seed):
        key = (setting, class_name, seed if setting == "rd-mvtec" else 0)
        if self._last[0] != key:
            self._last = (None, None)  # free the previous class first
            self._last = (key, self._load(setting, class_name, seed))
        return self._last[1]

    def _load(self, setting, class_name, seed):
        if setting == "stc":
            return self._stc()
        base = self._class(class_name)
        if setting != "rd-mvtec":
            return base
        return self._misaligned(base, seed)

    def _demo_sets(self):
        if self._demo is None:
            self._demo = load_demo(DEMO_TEXTURES, random_state=0, **self.profile.options)
        return self._demo

    def _class(self, class_name):
        if self.profile.name == "quick":
            b = self._demo_sets()[class_name]
            return Data(b.train_images, b.test_images, b.test_labels, b.test_masks)
        b = load_mvtec(self.mvtec_root, class_name)
        return Data(b.train_images, b.test_images, b.test_labels, b.test_masks)

    def _misaligned(self, base, seed):
        """Rd-MVTec AD: rotate (+-10 degrees) and crop at random, train and test alike."""
        resize, crop = self.profile.geometry["mvtec"]
        rng = np.random.RandomState(seed)
        train, _ = make_rd_mvtec(base.train, None, resize=resize, crop=crop, random_state=rng)
        test, masks = make_rd_mvtec(base.test, base.mask_source, resize=resize, crop=crop,
                                    random_state=rng)
        return Data(train, test, base.labels, masks)

    def _stc(self):
        if self.profile.name == "quick":
            # The demo textures pooled into one set: one model for several "scenes".
            sets = list(self._demo_sets().values())
            return Data(*(np.concatenate([getattr(b, f) for b in sets]) for f in (
                "train_images", "test_images", "test_labels", "test_masks")))
        if self.stc_root is None:
            raise ValueError("Table IV needs ShanghaiTech Campus: pass --stc PATH")
        b = load_stc(self.stc_root, frame_step=self.profile.options["stc_frame_step"])
        return Data(b.train_images, b.test_images, b.test_labels, b.test_masks)


# ---------------------------------------------------------------------------- features
def _featurizer_key(featurizer):
    params = featurizer.get_params()
    for name in ("verbose", "device", "batch_size"):
        params.pop(name)
    if params["weights"] is not None:
        params.pop("random_state")  # only seeds a random initialisation
    return repr(sorted(params.items(), key=lambda kv: kv[0]))


class FeatureMemo:
    """Backbone features of the current data set, kept for the models that share them.

    Table II fits 23 models per class on the same ResNet18 features: computing them once
    is most of the run time saved. Features are kept only within ``max_bytes``; beyond it
    they are computed batch by batch for each model, as ``fit_in_batches`` would.
    """

    def __init__(self, max_bytes, batch_size):
        self.max_bytes, self.batch_size = max_bytes, batch_size
        self.scope, self.arrays, self.featurizers = None, {}, {}

    def enter(self, scope):
        if scope != self.scope:
            self.scope, self.arrays = scope, {}

    def featurizer(self, template, images):
        key = _featurizer_key(template)
        if key not in self.featurizers:
            self.featurizers[key] = clone(template).fit(images[:1])
        return self.featurizers[key]

    def batches(self, featurizer, images, split):
        """Feature batches of ``images``: one array when memoised, else a generator."""
        key = (_featurizer_key(featurizer), split)
        if key in self.arrays:
            return [self.arrays[key]]
        n = n_images(images)
        shape = featurizer.feature_shape_
        size = 4 * n * math.prod(shape) if shape else math.inf
        if size + sum(a.nbytes for a in self.arrays.values()) <= self.max_bytes:
            self.arrays[key] = featurizer.transform(images)
            return [self.arrays[key]]
        return (featurizer.transform(images[i:i + self.batch_size])
                for i in range(0, n, self.batch_size))


def _fit_tail(pipe, batches):
    """Fit every step after the backbone on feature batches; learning steps see them all.

    ``fit_in_batches`` fits the middle steps on the first batch only, which is right for
    the random channel draw but not for PCA, which learns from the data.
    """
    middle = [step for _, step in pipe.steps[1:-1]]
    for i, step in enumerate(middle):
        before = Pipeline(pipe.steps[1:1 + i]) if i else None
        for j, feats in enumerate(batches()):
            feats = before.transform(feats) if before is not None else feats
            if hasattr(step, "partial_fit"):
                step.partial_fit(feats)
            elif j == 0:
                step.fit(feats)
    for feats in batches():
        pipe[-1].partial_fit(_transform_middle(pipe, feats))


def _transform_middle(pipe, feats):
    for _, step in pipe.steps[1:-1]:
        feats = step.transform(feats)
    return feats


def _predict_tail(pipe, spec, feats):
    """Maps and image scores from backbone features (SPADE scores images its own way)."""
    z = _transform_middle(pipe, feats)
    maps = pipe[-1].anomaly_maps(z)
    scores = pipe[-1].anomaly_scores(z) if spec.kind == "spade" else image_scores(maps)
    return maps, scores


# ---------------------------------------------------------------------------- evaluation
class Context:
    """What evaluating a measurement needs besides the measurement itself."""

    def __init__(self, profile, datasets, device="auto", batch_size=32, weights_dir=None,
                 random_weights=False, memo_bytes=4e9):
        self.profile, self.datasets = profile, datasets
        self.device, self.batch_size = device, batch_size
        self.weights_dir, self.random_weights = weights_dir, random_weights
        self.memo = FeatureMemo(memo_bytes, batch_size)

    @property
    def weights_tag(self):
        return "random" if self.random_weights else "dir" if self.weights_dir else "pretrained"

    def weights(self, backbone):
        if self.random_weights:
            return None
        if backbone == "efficientnet_lite0" or self.weights_dir is None:
            return "DEFAULT"
        for suffix in (".pth", ".pt"):
            path = os.path.join(self.weights_dir, backbone + suffix)
            if os.path.isfile(path):
                return path
        raise FileNotFoundError(
            f"no weights for {backbone} in --weights-dir {self.weights_dir!r}: expected "
            f"{backbone}.pth, a torchvision state dict (torch.save(model.state_dict(), ...))"
        )


def build_model(spec, geometry, seed, ctx):
    """A fresh, unfitted pipeline (or VAE) for ``spec``."""
    resize, crop = geometry
    common = dict(weights=ctx.weights(spec.backbone), resize=resize, crop=crop,
                  batch_size=ctx.batch_size, device=ctx.device, random_state=seed)
    if spec.kind == "padim":
        n_features = spec.n_dims if spec.reduction == "rd" else None
        layers = list(spec.layers) if spec.layers else None
        pipe = make_padim(spec.backbone, n_features, layers=layers, **common)
        if spec.reduction == "pca":
            pca = ("patchpca", PatchPCA(spec.n_dims, batch_size=ctx.batch_size))
            pipe = Pipeline([pipe.steps[0], pca, pipe.steps[-1]])
        return pipe
    if spec.kind == "spade":
        return make_spade(spec.backbone, **common, **dict(spec.options))
    if spec.kind == "vae":
        return VAE(device=ctx.device, random_state=seed, **dict(spec.options))
    raise ValueError(f"cannot build a {spec.kind!r} model on its own")


def _geometry(spec, setting, ctx):
    if spec.kind == "vae":
        options = dict(spec.options)
        return options["resize"], options["crop"]
    return ctx.profile.geometry[setting]


def fit_predict(spec, data, setting, seed, ctx, memo):
    """Fit ``spec`` on the training images; maps and scores of the test images, timings."""
    if spec.kind == "sum":
        # The paper's "Layer 1+2+3": three single-layer models, their maps added.
        results = [fit_predict(p, data, setting, seed, ctx, memo) for p in spec.parts]
        maps = sum(r[0] for r in results)
        return maps, image_scores(maps), sum(r[2] for r in results), sum(r[3] for r in results)
    model = build_model(spec, _geometry(spec, setting, ctx), seed, ctx)
    train = data.train
    if setting == "stc" and spec.kind == "spade":
        train = _evenly(train, ctx.profile.options.get("stc_spade_train"))
    start = time.perf_counter()
    if spec.kind == "vae":
        model.fit(train)
        fit_s = time.perf_counter() - start
        maps = model.anomaly_maps(data.test)
        return maps, image_scores(maps), fit_s, time.perf_counter() - start - fit_s
    featurizer = memo.featurizer(model[0], train)
    model.steps[0] = (model.steps[0][0], featurizer)
    # Within one scope (one data set) a split is named by its size: SPADE's evenly spaced
    # STC subset differs from the full training set only in that.
    _fit_tail(model, lambda: memo.batches(featurizer, train, ("train", n_images(train))))
    fit_s = time.perf_counter() - start
    outputs = [_predict_tail(model, spec, f)
               for f in memo.batches(featurizer, data.test, ("test", n_images(data.test)))]
    maps = np.concatenate([o[0] for o in outputs])
    scores = np.concatenate([o[1] for o in outputs])
    return maps, scores, fit_s, time.perf_counter() - start - fit_s


def evaluate_detection(entry, ctx):
    """Image AUROC, pixel AUROC and PRO (not on STC: one curve over millions of pixels)."""
    data = ctx.datasets.get(entry.setting, entry.class_name, entry.seed)
    # The data seed, not the model's: Rd seeds and PCA share one class's features.
    data_seed = entry.seed if entry.setting == "rd-mvtec" else 0
    ctx.memo.enter((entry.setting, entry.class_name, data_seed))
    maps, scores, fit_s, predict_s = fit_predict(entry.spec, data, entry.setting, entry.seed,
                                                 ctx, ctx.memo)
    masks = data.masks(*_geometry(_leaf(entry.spec), entry.setting, ctx))
    result = {"image_auroc": image_auroc(data.labels, scores),
              "pixel_auroc": pixel_auroc(masks, maps)}
    if entry.setting != "stc":
        result["pro"] = pro_score(masks, maps)
    return {**result, "fit_s": fit_s, "predict_s": predict_s,
            "n_train": n_images(data.train), "n_test": n_images(data.test)}


def _leaf(spec):
    return spec.parts[0] if spec.kind == "sum" else spec


def in_memory_bytes(obj):
    """Bytes of every array and tensor a fitted model holds (each counted once)."""
    seen, total = set(), 0
    stack = [obj]
    while stack:
        item = stack.pop()
        if id(item) in seen:
            continue
        seen.add(id(item))
        if isinstance(item, np.ndarray):
            total += item.nbytes
        elif isinstance(item, torch.Tensor):
            total += item.element_size() * item.nelement()
        elif isinstance(item, torch.nn.Module):
            stack.extend(item.state_dict(keep_vars=True).values())
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)
        elif hasattr(item, "__dict__") and type(item).__module__.startswith(("skpadim", "sklearn")):
            stack.extend(vars(item).values())
    return total


def measure_cost(entry, ctx):
    """Fit once with nothing memoised, then time images one by one; measure the model."""
    data = ctx.datasets.get("cost", entry.class_name, 0)
    spec, fresh = entry.spec, FeatureMemo(0, ctx.batch_size)
    model = build_model(spec, _geometry(spec, "cost", ctx), entry.seed, ctx)
    start = time.perf_counter()
    if spec.kind == "vae":
        model.fit(data.train)
    else:
        model.steps[0] = (model.steps[0][0], fresh.featurizer(model[0], data.train))
        _fit_tail(model, lambda: fresh.batches(model[0], data.train, "train"))
    fit_s = time.perf_counter() - start

    def infer(x):
        if spec.kind == "vae":
            return image_scores(model.anomaly_maps(x))
        return _predict_tail(model, spec, model[0].transform(x))[1]

    images = data.test
    n = min(ctx.profile.cost_images, n_images(images))
    infer(images[:1])  # warm-up: first-call allocations are not per-image cost
    times = []
    for i in range(n):
        start = time.perf_counter()
        infer(images[i:i + 1])
        times.append(time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "model.joblib")
        joblib.dump(model, path)
        model_bytes = os.path.getsize(path)
    return {"infer_s": float(np.median(times)), "infer_times_s": times, "fit_s": fit_s,
            "model_bytes": model_bytes, "memory_bytes": in_memory_bytes(model),
            "n_train": n_images(data.train), "n_timed": n}


def evaluate(entry, ctx):
    """The measurement ``entry`` names; a dict of numbers."""
    if entry.setting == "cost":
        return measure_cost(entry, ctx)
    return evaluate_detection(entry, ctx)


# ---------------------------------------------------------------------------- runner
def load_cache(path):
    """Finished and failed measurements by key; a later line wins."""
    records = {}
    if os.path.exists(path):
        with open(path) as f:
            for line in f:
                line = line.strip()
                if line:
                    try:
                        record = json.loads(line)
                    except json.JSONDecodeError:
                        continue  # a line cut short by an interruption
                    records[record["key"]] = record
    return records


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    return value


def run_entries(entries, evaluate_fn, cache_path, log):
    """Evaluate each entry not finished in the cache; append each result as it comes."""
    records = load_cache(cache_path)
    for i, entry in enumerate(entries, 1):
        label = (f"[{i}/{len(entries)}] {entry.setting} {entry.class_name} {entry.model} "
                 f"seed {entry.seed}")
        previous = records.get(entry.key)
        # A result of another skpadim version may predate a fix: it is measured again.
        if (previous is not None and previous["status"] == "ok"
                and previous.get("skpadim") == skpadim.__version__):
            log(f"{label}: cached")
            continue
        start = time.perf_counter()
        record = {"key": entry.key, "setting": entry.setting, "model": entry.model,
                  "spec": entry.spec.key, "class": entry.class_name, "seed": entry.seed,
                  "skpadim": skpadim.__version__}
        try:
            record.update(status="ok", metrics=_jsonable(evaluate_fn(entry)))
        except Exception as exc:  # a failed class must not stop the others
            record.update(status="failed", error=f"{type(exc).__name__}: {exc}",
                          traceback=traceback.format_exc())
            log(record["traceback"])
        record["elapsed_s"] = round(time.perf_counter() - start, 3)
        gc.collect()
        log(f"{label}: {record['status']} in {record['elapsed_s']:.1f} s"
            + (f" ({record['error']})" if record["status"] == "failed" else ""))
        with open(cache_path, "a") as f:
            f.write(json.dumps(record) + "\n")
        records[entry.key] = record
    return records


# ---------------------------------------------------------------------------- aggregation
@dataclass
class Cell:
    ours: float = None
    sem: float = None
    paper: float = None
    source: str = None
    missing: str = ""  # why ``ours`` is absent


@dataclass
class Row:
    model: str
    group: str
    n_ok: int
    n_expected: int
    cells: dict  # metric -> Cell


@dataclass
class TableResult:
    table: TableDef
    rows: list = field(default_factory=list)
    failures: list = field(default_factory=list)
    notes: list = field(default_factory=list)
    skipped: str = None


def _groups(table, profile):
    classes = _table_classes(table, profile)
    if table.setting in ("stc", "cost"):
        return [(classes[0], "all", classes)]
    textures = [c for c in classes if c in profile.textures]
    objects = [c for c in classes if c not in profile.textures]
    groups = [(c, c, [c]) for c in classes] if table.per_class else []
    return groups + [("textures", "textures", textures), ("objects", "objects", objects),
                     ("all", "all", list(classes))]


def _cell(table, model, paper_group, metric, values, seeds, classes):
    """``values[(class, seed)]`` -> one cell: mean over classes, then over seeds, with SEM."""
    paper, source = paper_values.lookup(table.id, model, paper_group, metric)
    if not classes:
        return Cell(paper=paper, source=source, missing="no classes"), 0
    complete = [c for c in classes if all((c, s) in values for s in seeds)]
    if not complete:
        return Cell(paper=paper, source=source, missing="failed"), 0
    per_seed = [np.mean([values[(c, s)] for c in complete]) for s in seeds]
    scale = METRICS[metric].scale
    sem = np.std(per_seed, ddof=1) / np.sqrt(len(seeds)) * scale if len(seeds) > 1 else None
    return Cell(float(np.mean(per_seed)) * scale, sem, paper, source), len(complete)


def build_table(table, profile, records, weights_tag):
    """Our numbers beside the paper's, for every row of ``table``."""
    result = TableResult(table)
    for model in table.models:
        spec = spec_for(table, profile, model)
        seeds = _table_seeds(table, spec, profile)
        values = {metric: {} for metric in table.metrics}
        for class_name in _table_classes(table, profile):
            for seed in seeds:
                key = Entry(table.setting, spec, class_name, seed, model,
                            setting_key(profile, table.setting), weights_tag).key
                record = records.get(key)
                if record is None or record["status"] != "ok":
                    error = record["error"] if record else "not computed (run interrupted?)"
                    result.failures.append(f"{model}, {class_name}, seed {seed}: {error}")
                    continue
                for metric in table.metrics:
                    value = record["metrics"].get(METRICS[metric].field)
                    if value is not None:
                        values[metric][(class_name, seed)] = value
        for label, paper_group, classes in _groups(table, profile):
            cells, n_ok = {}, 0
            for metric in table.metrics:
                cells[metric], n = _cell(table, model, paper_group, metric, values[metric],
                                         seeds, classes)
                n_ok = max(n_ok, n)
            result.rows.append(Row(model, label, n_ok, len(classes), cells))
    return result


#: The paper's claims as differences between two rows: (text, (table, model), (table,
#: model), metrics). Both rows are read in the "all" group.
CLAIMS = (
    ("Modelling the layers jointly beats summing single-layer maps",
     ("I", "PaDiM-R18"), ("I", "Layer 1+2+3"), ("pixel_auroc", "pro")),
    ("Layer 3 beats layer 1 in AUROC", ("I", "Layer 3"), ("I", "Layer 1"), ("pixel_auroc",)),
    ("Rd 100 beats PCA 100", ("II", "Rd 100"), ("II", "PCA 100"), ("pixel_auroc", "pro")),
    ("Rd 200 beats PCA 200", ("II", "Rd 200"), ("II", "PCA 200"), ("pixel_auroc", "pro")),
    ("Keeping all 448 dimensions gains little over Rd 100", ("II", "all (448)"),
     ("II", "Rd 100"), ("pixel_auroc", "pro")),
    ("PaDiM-WR50-Rd550 localizes better than SPADE", ("III", "PaDiM-WR50-Rd550"),
     ("III", "SPADE"), ("pixel_auroc", "pro")),
    ("PaDiM-WR50-Rd550 localizes far better than the VAE", ("III", "PaDiM-WR50-Rd550"),
     ("III", "VAE"), ("pixel_auroc", "pro")),
    ("PaDiM-R18-Rd100 beats SPADE on STC", ("IV", "PaDiM-R18-Rd100"), ("IV", "SPADE"),
     ("pixel_auroc",)),
    ("EfficientNet-B5 detects better than WR50-Rd550", ("V", "PaDiM-EfficientNet-B5"),
     ("V", "PaDiM-WR50-Rd550"), ("image_auroc",)),
    ("Misalignment costs PaDiM-WR50-Rd550 (Rd-MVTec AD minus MVTec AD)",
     ("VI", "PaDiM-WR50-Rd550"), ("III", "PaDiM-WR50-Rd550"), ("pixel_auroc", "pro")),
)


def build_claims(tables):
    """Rows ``(text, metric, ours, paper)``: differences the paper's text argues from."""
    cells = {(r.table.id, row.model, metric): cell
             for r in tables if not r.skipped for row in r.rows if row.group == "all"
             for metric, cell in row.cells.items()}
    rows = []
    for text, a, b, metrics in CLAIMS:
        for metric in metrics:
            ca, cb = cells.get((*a, metric)), cells.get((*b, metric))
            if ca is None or cb is None:
                continue
            ours = ca.ours - cb.ours if None not in (ca.ours, cb.ours) else None
            paper = ca.paper - cb.paper if None not in (ca.paper, cb.paper) else None
            rows.append((text, metric, ours, paper))
    return rows


# ---------------------------------------------------------------------------- report
def _number(value, digits, signed=False):
    return "n/a" if value is None else f"{value:+.{digits}f}" if signed else f"{value:.{digits}f}"


def format_cell(cell, metric):
    """``(ours, paper, difference)`` as printed; absent values read "n/a"."""
    digits = METRICS[metric].digits
    if cell.ours is None:
        ours = f"n/a ({cell.missing})" if cell.missing else "n/a"
    else:
        ours = _number(cell.ours, digits)
        if cell.sem is not None:
            ours += f" ± {cell.sem:.2g}"
    paper = _number(cell.paper, digits)
    if cell.paper is not None:
        paper += paper_values.MARKERS[cell.source]
    diff = _number(cell.ours - cell.paper if None not in (cell.ours, cell.paper) else None,
                   digits, signed=True)
    return ours, paper, diff


def _markdown_table(result, profile):
    table = result.table
    headers = ["Model", "Classes"]
    for metric in table.metrics:
        headers += [f"{METRICS[metric].header}: ours", "paper", "Δ"]
    lines = ["| " + " | ".join(headers) + " |",
             "|" + "|".join(["---"] * 2 + ["---:"] * (len(headers) - 2)) + "|"]
    for row in result.rows:
        group = f"{row.group} ({row.n_ok}/{row.n_expected})"
        if table.setting == "cost":
            group = f"measured on {row.group}"
        cells = [part for m in table.metrics for part in format_cell(row.cells[m], m)]
        lines.append("| " + " | ".join([row.model, group] + cells) + " |")
    return lines


def _table_notes(table, profile):
    notes = []
    if table.seeds == "rd":
        notes.append(f"Rd rows: mean over {profile.seeds} random channel draws ± standard "
                     "error of the mean (the paper: 10 draws, SEM of the AUROC 1e-4 to 1e-7).")
    if table.seeds == "data":
        notes.append(f"Mean over {profile.rd_seeds} seeds of the random rotation and crop "
                     "(the paper: 5) ± standard error of the mean.")
    if table.id == "IV" and profile.name == "paper":
        notes.append("Every {stc_frame_step}th frame of STC; SPADE stores at most "
                     "{stc_spade_train} training frames (evenly spaced).".format(
                         **profile.options))
    if table.id == "IV" and profile.name == "quick":
        notes.append("Quick mode: the demo textures pooled into one set stand in for STC.")
    if table.setting == "cost":
        notes.append(f"Measured on one class ({profile.classes[0]}): inference is the median "
                     f"over {profile.cost_images} test images, one at a time, image in, map "
                     "and score out, after a warm-up; fitting includes loading the backbone. "
                     "The VAE is fitted with a short training for this table (size and "
                     "inference time do not depend on training length), so its fitting "
                     "time is not the paper's budget. GB = 10^9 bytes.")
    if table.id == "VIII":
        notes.append("joblib file: the whole fitted pipeline (backbone trunk included) as "
                     "saved; in memory: arrays and tensors the fitted object holds, caches "
                     "included.")
    for (t, model, group, metric), text in paper_values.NOTES.items():
        if t == table.id:
            notes.append(f"Paper, {model}, {METRICS[metric].header}: {text}.")
    return notes


def render_markdown(tables, claims, meta, profile):
    """The whole report as Markdown."""
    lines = [f"# PaDiM paper tables, reproduced with skpadim {meta['skpadim']}", ""]
    lines += [f"- {k}: {v}" for k, v in meta.items() if k != "skpadim"]
    lines += ["", "Each row: our value, the paper's, and Δ = ours − paper (percentage points "
              "for %). n/a: the paper gives no value, or we have none (reason in brackets). "
              "† value from a secondary source; ‡ PaDiM-R18-Rd100's means as the paper's "
              "Table II prints them (its \"Rd 100\" row). Classes: classes measured / "
              "classes in the group.", ""]
    if profile.stand_ins:
        lines += ["**Quick mode.** Demo textures (brick, grass, gravel; {n_train} training "
                  "and {n_test} test images of {size} px per texture, resized to 128 and "
                  "cropped to 112) instead of MVTec AD, and EfficientNet-Lite0 (ImageNet "
                  "weights from the installed package) instead of every backbone. The "
                  "numbers show that the benchmark runs end to end; they are not comparable "
                  "with the paper's.".format(**profile.options), "",
                  "| paper's model | quick-mode stand-in |", "|---|---|"]
        lines += [f"| {m} | {s} |" for m, s in profile.stand_ins.items()]
        lines.append("")
    for result in tables:
        table = result.table
        lines += [f"## Table {table.id}: {table.title}", ""]
        if result.skipped:
            lines += [f"Skipped: {result.skipped}", ""]
            continue
        lines += _markdown_table(result, profile) + [""]
        lines += [f"- {note}" for note in _table_notes(table, profile)]
        if result.failures:
            lines += ["", "Failed or missing measurements:", ""]
            lines += [f"- {failure}" for failure in result.failures]
        lines.append("")
    if claims:
        lines += ["## Claims", "", "Differences between rows the paper argues from (all "
                  "classes).", "", "| claim | metric | ours | paper | Δ |",
                  "|---|---|---:|---:|---:|"]
        for text, metric, ours, paper in claims:
            digits = METRICS[metric].digits
            diff = ours - paper if None not in (ours, paper) else None
            lines.append(f"| {text} | {METRICS[metric].header} | {_number(ours, digits, True)}"
                         f" | {_number(paper, digits, True)} | {_number(diff, digits, True)} |")
        lines.append("")
    return "\n".join(lines)


def _table_json(result):
    return {
        "table": result.table.id, "title": result.table.title, "skipped": result.skipped,
        "failures": result.failures,
        "rows": [{"model": r.model, "group": r.group, "n_ok": r.n_ok,
                  "n_expected": r.n_expected,
                  "cells": {m: vars(c) for m, c in r.cells.items()}} for r in result.rows],
    }


def write_report(out_dir, tables, claims, records, meta, profile):
    """``report.md`` and ``results.json`` (tables, claims and every raw measurement)."""
    markdown = render_markdown(tables, claims, meta, profile)
    Path(out_dir, "report.md").write_text(markdown)
    payload = {"meta": meta, "tables": [_table_json(t) for t in tables],
               "claims": [dict(zip(("claim", "metric", "ours", "paper"), c)) for c in claims],
               "measurements": list(records.values())}
    Path(out_dir, "results.json").write_text(json.dumps(_jsonable(payload), indent=1))
    return markdown


# ---------------------------------------------------------------------------- main
def _skip_reason(table, args):
    if table.setting == "stc" and not args.quick and args.stc is None:
        return "no ShanghaiTech Campus data given (--stc PATH)."
    return None


def run_tables(profile, args, evaluate_fn=None, log=None):
    """Plan, measure (reusing the cache), and write the report.

    Returns the report's Markdown and the keys of the measurements that failed.
    """
    started = time.time()
    log = log or (lambda msg: print(f"[{time.time() - started:7.1f} s] {msg}",
                                    file=sys.stderr, flush=True))
    os.makedirs(args.out, exist_ok=True)
    ctx = Context(profile, DataSets(profile, args.mvtec, args.stc), device=args.device,
                  batch_size=args.batch_size, weights_dir=args.weights_dir,
                  random_weights=args.random_weights, memo_bytes=args.feature_memory_gb * 1e9)
    # Timings and sizes belong to the device and thread count they were measured with: a
    # rerun with others measures them again instead of reusing the cache.
    try:
        from skpadim._torch import resolve_device

        device = str(resolve_device(args.device))
    except Exception:  # an unusable device fails each measurement, with its message
        device = str(args.device)
    profile = replace(profile, options={
        **profile.options, "cost_machine": f"{device},{torch.get_num_threads()}threads"})
    table_ids = [t for t in args.tables if _skip_reason(TABLES[t], args) is None]
    entries = plan(profile, table_ids, ctx.weights_tag)
    log(f"{len(entries)} measurements for tables {', '.join(table_ids)}")
    evaluate_fn = evaluate_fn or (lambda entry: evaluate(entry, ctx))
    records = run_entries(entries, evaluate_fn, os.path.join(args.out, "cache.jsonl"), log)
    tables = []
    for table_id in args.tables:
        table = TABLES[table_id]
        reason = _skip_reason(table, args)
        tables.append(TableResult(table, skipped=reason) if reason
                      else build_table(table, profile, records, ctx.weights_tag))
    used = {e.key for e in entries}
    meta = _meta(args, profile, ctx, time.time() - started)
    markdown = write_report(args.out, tables, build_claims(tables),
                            {k: v for k, v in records.items() if k in used}, meta, profile)
    failed = [key for key in used if records[key]["status"] != "ok"]
    log(f"report written to {os.path.join(args.out, 'report.md')}"
        + (f"; {len(failed)} measurements failed (see the report)" if failed else ""))
    return markdown, failed


def _meta(args, profile, ctx, elapsed):
    from skpadim._torch import resolve_device

    try:
        device = str(resolve_device(ctx.device))
    except Exception as exc:  # the report should still be written
        device = f"{ctx.device} ({exc})"
    return {
        "skpadim": skpadim.__version__,
        "command": " ".join(["python", "benchmarks/paper_tables.py", *args.argv]),
        "mode": "quick (demo set, stand-in models)" if profile.name == "quick"
        else "paper (MVTec AD" + (", STC)" if args.stc else ")"),
        "device": device,
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, torch "
                   f"{torch.__version__} with {torch.get_num_threads()} threads",
        "weights": ctx.weights_tag + (f" ({args.weights_dir})" if args.weights_dir else ""),
        "run time (this invocation, s)": round(elapsed, 1),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(
        description="Reproduce the PaDiM paper's tables with skpadim and compare.")
    parser.add_argument("--mvtec", help="MVTec AD root folder (holding bottle/, cable/, ...)")
    parser.add_argument("--stc", help="ShanghaiTech Campus root (training/, testing/)")
    parser.add_argument("--out", required=True, help="output folder (report, JSON, cache)")
    parser.add_argument("--tables", default=",".join(TABLE_IDS),
                        help="comma-separated tables among I..VIII (default: all)")
    parser.add_argument("--quick", action="store_true",
                        help="demo set and EfficientNet-Lite0 stand-ins, a few minutes on a CPU")
    parser.add_argument("--classes", help="comma-separated MVTec AD classes (default: all 15)")
    parser.add_argument("--device", default="auto", help="torch device (default: auto)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--seeds", type=int, help="Rd draws in Table II (default 10; quick 2)")
    parser.add_argument("--rd-seeds", type=int,
                        help="Rd-MVTec AD seeds in Table VI (default 5; quick 2)")
    parser.add_argument("--weights-dir", help="folder of state dicts: resnet18.pth, "
                        "wide_resnet50_2.pth, efficientnet_b5.pth (no download)")
    parser.add_argument("--random-weights", action="store_true",
                        help="untrained backbones, for smoke tests only: numbers are meaningless")
    parser.add_argument("--vae-epochs", type=int, default=100)
    parser.add_argument("--vae-images", type=int, default=10000,
                        help="augmented images per VAE epoch (the paper: 10000)")
    parser.add_argument("--stc-frame-step", type=int, default=10,
                        help="keep every n-th STC frame, train and test (default 10)")
    parser.add_argument("--stc-spade-train", type=int, default=1000,
                        help="training frames SPADE stores on STC (its memory grows with them)")
    parser.add_argument("--feature-memory-gb", type=float, default=4.0,
                        help="memory for backbone features shared between models of a class")
    parser.add_argument("--threads", type=int, help="torch CPU threads")
    args = parser.parse_args(argv)
    args.argv = list(sys.argv[1:] if argv is None else argv)
    args.tables = [t.strip().upper() for t in args.tables.split(",") if t.strip()]
    unknown = [t for t in args.tables if t not in TABLES]
    if unknown:
        parser.error(f"unknown tables {unknown}; choose among {', '.join(TABLE_IDS)}")
    if args.classes:
        args.classes = [c.strip() for c in args.classes.split(",") if c.strip()]
        bad = [c for c in args.classes if c not in MVTEC_CATEGORIES]
        if bad and not args.quick:
            parser.error(f"unknown MVTec AD classes {bad}; choose among "
                         f"{', '.join(MVTEC_CATEGORIES)}")
    if args.quick and (args.mvtec or args.stc or args.classes):
        parser.error("--quick runs on the built-in demo set; drop --mvtec, --stc and --classes")
    needs_mvtec = any(TABLES[t].setting != "stc" for t in args.tables)
    if not args.quick and needs_mvtec and args.mvtec is None:
        parser.error("give --mvtec PATH (or --quick for the demo set)")
    return args


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    profile = quick_profile(args) if args.quick else paper_profile(args)
    _, failed = run_tables(profile, args)
    # The report is written either way; the status tells scripts (and CI) whether it is whole.
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
