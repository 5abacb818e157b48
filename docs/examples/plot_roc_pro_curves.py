"""
ROC and PRO curves
==================

Anomaly detection is judged at two levels. At the image level, the ROC curve asks how
well the image scores separate defective images from normal ones. At the pixel level, the
pixel ROC pools every pixel of every test image, so large defects dominate it; the
per-region overlap (PRO) curve gives every defect region the same weight, whatever its
size, and is read up to a false positive rate of 0.3, as MVTec AD reports it.

This example draws the three curves for two PaDiM models that differ only in how many
of the backbone's 176 channels they keep. The backbone runs once: both models start from
the same features.
"""

# %%
# Features, computed once
# -----------------------
import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import roc_curve
from sklearn.pipeline import make_pipeline

from skpadim import BackboneFeatures, PatchGaussian, RandomFeatureSelector, anomaly_maps
from skpadim.datasets import make_texture_defects
from skpadim.evaluation import image_auroc, pixel_auroc, pro_curve, pro_score

data = make_texture_defects("gravel", n_train=40, n_test=24, size=128, random_state=1)

backbone = BackboneFeatures("efficientnet_lite0", resize=None, crop=None)
train_features = backbone.fit_transform(data.train_images)
test_features = backbone.transform(data.test_images)
print(train_features.shape)  # (n_images, channels, grid height, grid width)

# %%
# Two models on the same features
# -------------------------------
# Without a :class:`~skpadim.BackboneFeatures` step, :class:`~skpadim.PatchGaussian` makes
# maps at four times the patch grid (Lite0's first tapped layer has stride 4): 128 x 128,
# the size of the images and masks.
results = {}
for n_features in (10, 100):
    model = make_pipeline(
        RandomFeatureSelector(n_features=n_features, random_state=0), PatchGaussian()
    ).fit(train_features)
    scores = -model.score_samples(test_features)  # higher = more anomalous
    maps = anomaly_maps(model, test_features)
    results[f"Rd{n_features}"] = scores, maps
    print(
        f"Rd{n_features}: image AUROC {image_auroc(data.test_labels, scores):.3f}, "
        f"pixel AUROC {pixel_auroc(data.test_masks, maps):.3f}, "
        f"PRO {pro_score(data.test_masks, maps):.3f}"
    )

# %%
# The curves
# ----------
# :func:`~skpadim.evaluation.pro_curve` has one point per distinct score;
# :func:`~skpadim.evaluation.pro_score` is the area under it up to a false positive rate of
# 0.3, divided by 0.3 (the shaded part of the right-hand plot).
fig, (ax_image, ax_pixel, ax_pro) = plt.subplots(1, 3, figsize=(12, 4))
for name, (scores, maps) in results.items():
    fpr, tpr, _ = roc_curve(data.test_labels, scores)
    ax_image.plot(fpr, tpr, label=name)
    fpr, tpr, _ = roc_curve(data.test_masks.ravel(), maps.ravel())
    ax_pixel.plot(fpr, tpr, label=name)
    fpr, pro, _ = pro_curve(data.test_masks, maps)
    line, = ax_pro.plot(fpr, pro, label=f"{name}: PRO {pro_score(data.test_masks, maps):.3f}")
    within = fpr <= 0.3
    ax_pro.fill_between(fpr[within], pro[within], alpha=0.15, color=line.get_color())

ax_image.set(title="Image ROC", xlabel="false positive rate", ylabel="true positive rate")
ax_pixel.set(title="Pixel ROC", xlabel="false positive rate", ylabel="true positive rate")
ax_pro.set(title="PRO curve", xlabel="false positive rate", ylabel="per-region overlap")
ax_pro.axvline(0.3, color="grey", linestyle=":")
for ax in (ax_image, ax_pixel, ax_pro):
    ax.plot([0, 1], [0, 1], color="lightgrey", linestyle="--", zorder=0)
    ax.legend(loc="lower right")
fig.tight_layout()
plt.show()
