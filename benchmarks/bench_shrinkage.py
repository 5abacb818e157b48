"""Shrinkage covariance (OAS, Ledoit-Wolf) against PaDiM's fixed epsilon, on built-in textures.

For each texture ("brick", "grass", "gravel") and seed, one data set is drawn with
:func:`skpadim.datasets.make_texture_defects` and one PaDiM pipeline with EfficientNet-Lite0
ImageNet weights (``make_padim("efficientnet_lite0", resize=None, crop=None)``, 100 random
channels, offline weights). The backbone and the channel selection (``pipe[:-1]``) are fitted
once per seed and their features reused: three :class:`skpadim.PatchGaussian` differing only in
``covariance`` ("empirical", "oas", "ledoit-wolf"; ``reg_covar=0.01`` in all three) are fitted
on the same training features and scored on the same test features. With 60 training images
and 100 dimensions each position's sample covariance is singular, the regime shrinkage is for.

Prints image AUROC, pixel AUROC and PRO (FPR <= 0.3) per texture and overall, as the mean and
the standard error over seeds, and the paired difference of each shrinkage estimator to
"empirical" (mean and standard error over all texture-seed pairs), which is what decides
whether a difference is beyond the noise.

Usage::

    python benchmarks/bench_shrinkage.py           # 3 textures x 3 seeds, 128 px, 60 / 30
    python benchmarks/bench_shrinkage.py --quick   # 1 texture, 1 seed, 64 px, for CI
"""

import argparse
import time

import numpy as np
import torch
from sklearn.base import clone

from skpadim import PatchGaussian, make_padim
from skpadim.datasets import make_texture_defects
from skpadim.evaluation import image_auroc, pixel_auroc, pro_score

METHODS = ("empirical", "oas", "ledoit-wolf")
METRICS = ("image AUROC", "pixel AUROC", "PRO")


def evaluate(texture, seed, size, n_train, n_test):
    """``{method: (image AUROC, pixel AUROC, PRO)}`` and mean intensities, one data set."""
    data = make_texture_defects(texture, n_train=n_train, n_test=n_test, size=size,
                                random_state=seed)
    pipe = make_padim("efficientnet_lite0", resize=None, crop=None, random_state=seed)
    features = pipe[:-1].fit(data.train_images)
    train, test = features.transform(data.train_images), features.transform(data.test_images)
    results, intensities = {}, {}
    for method in METHODS:
        model = clone(pipe[-1]).set_params(covariance=method).fit(train)
        maps = model.anomaly_maps(test)
        scores = -model.score_samples(test)
        results[method] = (image_auroc(data.test_labels, scores),
                           pixel_auroc(data.test_masks, maps), pro_score(data.test_masks, maps))
        intensities[method] = float(np.mean(model.shrinkage_))
    return results, intensities, train.shape


def _mean_se(values):
    values = np.asarray(values, dtype=float)
    se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else float("nan")
    return f"{values.mean():.4f} ± {se:.4f}"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one small run (< 60 s)")
    args = parser.parse_args()
    if args.quick:
        textures, seeds, size, n_train, n_test = ("brick",), (0,), 64, 20, 10
    else:
        textures, seeds = ("brick", "grass", "gravel"), (0, 1, 2)
        size, n_train, n_test = 128, 60, 30
    torch.set_num_threads(2)
    start = time.perf_counter()
    rows = {}                                         # (texture, seed) -> {method: metrics}
    rhos = {m: [] for m in METHODS}
    for texture in textures:
        for seed in seeds:
            results, intensities, shape = evaluate(texture, seed, size, n_train, n_test)
            rows[texture, seed] = results
            for m in METHODS:
                rhos[m].append(intensities[m])
            print(f"# {texture} seed {seed}: " + "; ".join(
                f"{m} " + " ".join(f"{v:.4f}" for v in results[m]) for m in METHODS), flush=True)

    print(f"\n{len(textures)} textures x {len(seeds)} seeds, {size} px, {n_train} train / "
          f"{n_test} test images (half anomalous), EfficientNet-Lite0 ImageNet, "
          f"{shape[1]} channels on a {shape[2]}x{shape[3]} grid, reg_covar=0.01; "
          "mean ± standard error over seeds.\n")
    print("| texture | covariance | " + " | ".join(METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for texture in (*textures, "all"):
        keys = [k for k in rows if texture in ("all", k[0])]
        for m in METHODS:
            cells = [_mean_se([rows[k][m][i] for k in keys]) for i in range(len(METRICS))]
            print(f"| {texture} | {m} | " + " | ".join(cells) + " |")
    print("\nPaired difference to empirical over all texture-seed pairs "
          "(mean ± standard error):\n")
    print("| covariance | mean shrinkage | " + " | ".join(f"Δ {m}" for m in METRICS) + " |")
    print("|---|---|" + "---|" * len(METRICS))
    for m in METHODS[1:]:
        cells = [_mean_se([rows[k][m][i] - rows[k]["empirical"][i] for k in rows])
                 for i in range(len(METRICS))]
        print(f"| {m} | {np.mean(rhos[m]):.3f} | " + " | ".join(cells) + " |")
    print(f"\n{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
