"""Evaluating a model over every pixel of its images, the ones it does not look at too.

A model that crops its input (the paper's 256 -> 224) makes maps of the crop only; taking
the ground truth through the same crop, as the paper does, silently drops the defects on
the border from the pixel metrics. :func:`evaluation_view` keeps them, and counts them.
"""

from typing import NamedTuple

import numpy as np

from ..inspection import ModelMasks, model_geometry

__all__ = ["EvaluationView", "evaluation_view"]


class EvaluationView(NamedTuple):
    """Maps and masks of a test set over all of each image, as :func:`evaluation_view`
    returns them.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.evaluation import EvaluationView
    >>> view = EvaluationView(np.zeros((1, 4, 4)), None, 0.0, np.zeros(1), np.zeros(1))
    >>> view.unseen_area, view.masks is None
    (0.0, True)
    """

    maps: np.ndarray
    """``(n, h, w)`` maps; where the model does not look, a value below every score."""
    masks: np.ndarray
    """``(n, h, w)`` bool ground truth over the same pixels, or None without masks."""
    unseen_area: float
    """Share of each image's area the model does not see (0 when it sees it all)."""
    unseen_defect: np.ndarray
    """Defect pixels of each image that lie where the model does not look."""
    defect: np.ndarray
    """Defect pixels of each image."""


def evaluation_view(model, maps, mask_refs, images):
    """Maps and masks to evaluate a model on, with nothing it does not see left out.

    A model that crops its input (the paper's 256 -> 224) makes maps of the crop only; taking
    the ground truth through the same crop, as the paper does, silently drops the defects
    on the border from the pixel metrics, and a model blind there would look perfect. Here
    the masks keep the whole (resized) image and the maps are put back into it
    (:func:`skpadim.features.uncrop_maps`), the border filled with a score below every map's
    and every threshold, so a defect the model cannot see counts as missed. For a model
    that sees the whole image, the maps and masks are those of its own geometry.

    Parameters
    ----------
    model : Pipeline or VAE
        The fitted model that made ``maps``.
    maps : ndarray of shape (n, h, w)
        Its anomaly maps of ``images``, in its geometry.
    mask_refs : sequence of str or None, or None
        One ground-truth mask per image (None for a normal one), as data set loaders
        return them; None when there are no masks.
    images : sequence of str
        The image files.

    Returns
    -------
    view : EvaluationView

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim import make_padim
    >>> from skpadim.evaluation import evaluation_view
    >>> folder = tempfile.mkdtemp()
    >>> image, mask = os.path.join(folder, "a.png"), os.path.join(folder, "a_mask.png")
    >>> Image.new("RGB", (32, 32)).save(image)
    >>> corner = np.zeros((32, 32), np.uint8); corner[:2, :2] = 255  # a defect on the border
    >>> Image.fromarray(corner).save(mask)
    >>> cropping = make_padim("resnet18", weights=None, resize=32, crop=24)
    >>> view = evaluation_view(cropping, np.ones((1, 24, 24)), [mask], [image])
    >>> view.maps.shape, view.masks.shape, round(view.unseen_area, 3)
    ((1, 32, 32), (1, 32, 32), 0.438)
    >>> view.unseen_defect.tolist(), view.defect.tolist(), bool(view.maps[0, 0, 0] < 1)
    ([4], [4], True)
    """
    from ..features._geometry import _center_crop_offset, uncrop_maps

    maps = np.asarray(maps)
    view, crop, unseen_area = _view(model, images)
    crops = unseen_area > 0
    if crops:
        below = float(maps.min()) - 1.0 if maps.size else 0.0
        maps = uncrop_maps(maps, view, crop, fill=min(below, -1.0))
    masks = None
    if mask_refs is not None:
        masks = ModelMasks(model, mask_refs, images, crop=not crops)[:]
    defect = (masks.sum(axis=(1, 2)) if masks is not None
              else np.zeros(len(maps), dtype=np.int64))
    unseen_defect = np.zeros_like(defect)
    if crops and masks is not None:
        top, left = _center_crop_offset(view, crop)
        seen = masks[:, top : top + crop[0], left : left + crop[1]].sum(axis=(1, 2))
        unseen_defect = defect - seen
    return EvaluationView(maps, masks, unseen_area, unseen_defect, defect)


def _view(model, images=()):
    """``(view, crop, unseen_area)``: the size of the image the model crops from (its
    resize, or the images' own size when they share one), its crop, and the share of the
    view's area outside the crop (0 for a model that sees everything)."""
    from ..features._geometry import _pair

    geometry = model_geometry(model)
    resize, crop = geometry["resize"], geometry["crop"]
    view = _pair(resize, "resize") if resize is not None else None
    if view is None and crop is not None and len(images):
        from ..features._images import image_sizes

        sizes = set(map(tuple, image_sizes(list(images))))
        view = sizes.pop() if len(sizes) == 1 else None
    if crop is None or view is None or _pair(crop, "crop") == view:
        return view, None, 0.0
    crop = _pair(crop, "crop")
    return view, crop, 1.0 - (crop[0] * crop[1]) / (view[0] * view[1])

