"""PaDiM, SPADE and the VAE baseline side by side: same data, same metrics, one run.

For every data set and method this prints one row of a Markdown table:

- image AUROC, pixel AUROC and PRO (up to FPR 0.3), from :mod:`skpadim.evaluation`, with the
  ground-truth masks brought through each method's own resize and crop;
- fit time, and inference time per test image (anomaly map and image score together);
- size of the fitted model as :func:`skpadim.save` writes it: the whole pipeline (backbone
  included), and the detector alone (PaDiM's Gaussians, SPADE's stored features; the VAE is
  all detector).

The default run fits on this machine's CPU in a few minutes: EfficientNet-Lite0 features
(their weights install offline), the three scikit-image textures with drawn defects at
128x128, and a VAE trained for a few CPU-sized epochs, far from the paper's 100 epochs of
10,000 images (so its row says little about the VAE's potential, only about its cost).
On a GPU and MVTec AD, the paper's settings are a few flags away.

Usage::

    python benchmarks/bench_methods.py            # demo textures, Lite0, a few minutes
    python benchmarks/bench_methods.py --quick    # CI-sized, under a minute
    python benchmarks/bench_methods.py --mvtec /data/mvtec_ad --category bottle \\
        --backbone wide_resnet50_2 --device cuda --vae-epochs 100 --vae-augmented 10000
"""

import argparse
import os
import platform
import sys
import tempfile
import time
import warnings

import numpy as np
import torch
from sklearn.pipeline import Pipeline

import skpadim
from skpadim import make_padim, scoring
from skpadim import SPADE, VAE, make_spade
from skpadim.evaluation import image_auroc, pixel_auroc, pro_score
from skpadim.exceptions import SkpadimWarning
from skpadim.features import transform_masks
from skpadim.features._images import n_images

METHODS = ("PaDiM", "SPADE", "VAE")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="one texture, 64 px, a tiny VAE: for CI (< 1 minute)")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    parser.add_argument("--backbone", default="efficientnet_lite0",
                        help="feature extractor of PaDiM and SPADE (default: %(default)s)")
    parser.add_argument("--weights", default="DEFAULT",
                        help="backbone weights: a torchvision name, a state-dict path or 'none'")
    parser.add_argument("--device", default="auto", help="torch device (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--textures", nargs="+", default=["brick", "grass", "gravel"])
    parser.add_argument("--size", type=int, default=None,
                        help="texture image size, or MVTec resize (default: 128; MVTec: 256)")
    parser.add_argument("--crop", type=int, default=None,
                        help="center crop for PaDiM and SPADE (MVTec default: 224)")
    parser.add_argument("--n-train", type=int, default=30)
    parser.add_argument("--n-test", type=int, default=20)
    parser.add_argument("--mvtec", metavar="PATH", help="MVTec AD root folder")
    parser.add_argument("--category", default="bottle", help="MVTec AD category")
    parser.add_argument("--n-neighbors", type=int, default=50, help="SPADE's K")
    parser.add_argument("--vae-epochs", type=int, default=10)
    parser.add_argument("--vae-augmented", type=int, default=32,
                        help="augmented images per VAE epoch (paper: 10000)")
    parser.add_argument("--vae-batch-size", type=int, default=16)
    parser.add_argument("--vae-learning-rate", type=float, default=1e-3,
                        help="(paper: 1e-4, for its 100 epochs of 10,000 images)")
    parser.add_argument("--batch-size", type=int, default=16, help="test images per pass")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.quick:
        args.textures, args.size, args.n_train, args.n_test = ["brick"], args.size or 64, 10, 10
        args.vae_epochs, args.vae_augmented, args.vae_batch_size = 2, 8, 8
    if args.weights.lower() == "none":
        args.weights = None
    return args


# ---------------------------------------------------------------------- data
def texture_sets(args):
    from skpadim.datasets import make_texture_defects

    for texture in args.textures:
        data = make_texture_defects(texture, n_train=args.n_train, n_test=args.n_test,
                                    size=args.size, random_state=args.seed)
        yield texture, data.train_images, data.test_images, data.test_labels, data.test_masks


def mvtec_set(args):
    from skpadim.datasets import load_mvtec, read_masks

    data = load_mvtec(args.mvtec, args.category)
    masks = read_masks(data.test_masks, data.test_images)
    yield args.category, data.train_images, data.test_images, data.test_labels, masks


# ---------------------------------------------------------------------- methods
def build(method, args, resize, crop):
    """The model, and the (resize, crop) its anomaly maps correspond to."""
    common = dict(device=args.device, random_state=args.seed)
    if method == "PaDiM":
        model = make_padim(args.backbone, weights=args.weights, resize=resize, crop=crop,
                           batch_size=args.batch_size, **common)
        return model, (resize, crop)
    if method == "SPADE":
        model = make_spade(args.backbone, weights=args.weights, resize=resize, crop=crop,
                           n_neighbors=args.n_neighbors, batch_size=args.batch_size, **common)
        return model, (resize, crop)
    # The VAE gets the paper's geometry (resize 292, random crop 282, center crop 256 for
    # MVTec AD's 256), scaled to the size the other methods resize to.
    side = resize
    vae_resize, random_crop = round(side * 292 / 256), round(side * 282 / 256)
    model = VAE(resize=vae_resize, random_crop=random_crop, crop=side,
                n_epochs=args.vae_epochs, n_augmented=args.vae_augmented,
                batch_size=args.vae_batch_size, learning_rate=args.vae_learning_rate,
                **common)
    return model, (vae_resize, side)


def predict(model, X, batch_size):
    """Image scores and anomaly maps in one pass over the test images."""
    if isinstance(model, Pipeline):
        transformers, detector = model[:-1], model[-1]
    else:
        transformers, detector = None, model
    scores, maps = [], []
    for start in range(0, n_images(X), batch_size):
        part = X[start : start + batch_size]
        features = transformers.transform(part) if transformers is not None else part
        part_maps = detector.anomaly_maps(features)
        # SPADE's image score is its own k-NN score; the others take the map's maximum.
        if isinstance(detector, SPADE):
            scores.append(detector.anomaly_scores(features))
        else:
            scores.append(scoring.image_scores(part_maps))
        maps.append(part_maps)
    return np.concatenate(scores), np.concatenate(maps)


def model_megabytes(model):
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "model.safetensors")
        skpadim.save(model, path)
        return os.path.getsize(path) / 1e6


def evaluate(method, args, name, train, test, labels, masks, resize, crop):
    model, geometry = build(method, args, resize, crop)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", SkpadimWarning)  # SPADE: K clamped to the train set
        model.fit(train)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    scores, maps = predict(model, test, args.batch_size)
    per_image_ms = 1000 * (time.perf_counter() - start) / n_images(test)
    masks = transform_masks(masks, *geometry)
    return dict(
        method=method, data=name, image_auroc=image_auroc(labels, scores),
        pixel_auroc=pixel_auroc(masks, maps), pro=pro_score(masks, maps), fit_s=fit_s,
        infer_ms=per_image_ms, size_mb=model_megabytes(model),
        detector_mb=model_megabytes(model[-1] if isinstance(model, Pipeline) else model),
    )


# ---------------------------------------------------------------------- report
def table(rows):
    lines = [
        "| method | data | image AUROC | pixel AUROC | PRO | fit (s) | inference (ms/img) "
        "| model (MB) | detector (MB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['method']} | {r['data']} | {r['image_auroc']:.3f} | {r['pixel_auroc']:.3f} "
            f"| {r['pro']:.3f} | {r['fit_s']:.1f} | {r['infer_ms']:.0f} | {r['size_mb']:.2f} "
            f"| {r['detector_mb']:.2f} |"
        )
    return "\n".join(lines)


def mean_rows(rows):
    out = []
    for method in dict.fromkeys(r["method"] for r in rows):
        mine = [r for r in rows if r["method"] == method]
        mean = {k: float(np.mean([r[k] for r in mine])) for k in mine[0]
                if k not in ("method", "data")}
        out.append(dict(method=method, data=f"mean of {len(mine)}", **mean))
    return out


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.mvtec:
        resize, crop = args.size or 256, args.crop or 224  # the paper's preprocessing
        datasets = mvtec_set(args)
    else:
        args.size = resize = args.size or 128
        crop = args.crop
        datasets = texture_sets(args)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"# PaDiM vs SPADE vs VAE ({'quick' if args.quick else 'default'} run)\n")
    given = sys.argv[1:] if argv is None else argv
    command = " ".join(["python benchmarks/bench_methods.py", *given])
    print(f"command: `{command}`  ")
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__} "
          f"with {torch.get_num_threads()} threads, device {args.device}, load average "
          f"{load:.1f} at start  ")
    print(f"features: {args.backbone} (weights {args.weights}); images {resize} px"
          f"{f', center crop {crop}' if crop else ''}; {args.n_train} train / {args.n_test} "
          f"test images per set; SPADE K={args.n_neighbors} (at most the training images); "
          f"VAE {args.vae_epochs} epochs x {args.vae_augmented} augmented images, lr "
          f"{args.vae_learning_rate}\n", flush=True)
    rows = []
    for name, train, test, labels, masks in datasets:
        for method in args.methods:
            rows.append(evaluate(method, args, name, train, test, labels, masks, resize, crop))
            print(f"done: {method} on {name}", file=sys.stderr, flush=True)
    if len({r["data"] for r in rows}) > 1:
        rows += mean_rows(rows)
    print()
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
