"""Rd-MVTec AD: the PaDiM paper's non-aligned variant of a data set."""

from numbers import Real

import numpy as np
import torch
from sklearn.utils import check_random_state

from ..exceptions import InvalidImageError
from ..features._geometry import _pair, resize_and_crop
from ..features._image_files import _is_path_list, read_image
from ..features._images import _array_to_tensor, n_images
from ._masks import load_mask

__all__ = ["make_rd_mvtec"]


def make_rd_mvtec(images, masks=None, max_angle=10.0, resize=256, crop=224, random_state=0):
    """Misalign images as in the PaDiM paper's Rd-MVTec AD experiment.

    Each image is resized to ``resize`` (bicubic), rotated about its centre by an angle drawn
    uniformly from ``(-max_angle, max_angle)`` degrees (bilinear; corners the rotation
    uncovers are black), then cropped to ``crop`` at a uniformly drawn position. Its mask, if
    given, goes through the same resize, rotation and crop with nearest-neighbour sampling,
    so it stays binary and on the defect. The paper applies this to the training and test
    images alike and averages results over 5 seeds.

    Parameters
    ----------
    images : ndarray of shape (n, H, W, 3) or (n, H, W), dtype uint8, or list of str
        The images, or paths to them (read one at a time, so sizes may differ).
    masks : ndarray of shape (n, H, W), list of mask references, or None, default=None
        Ground truth for ``images``, non-zero marking a defect: an array, or the
        ``test_masks`` of a loader (paths, None for a normal image, or ``(npy_path, index)``).
    max_angle : float, default=10.0
        Largest rotation, in degrees; the paper uses 10.
    resize : int or (int, int), default=256
        Size before rotating and cropping.
    crop : int or (int, int), default=224
        Size of the random crop; at most ``resize``.
    random_state : int, RandomState instance or None, default=0
        Seeds the angles and crop positions; the same seed gives the same output.

    Returns
    -------
    images : ndarray of shape (n, crop, crop, 3), dtype uint8
    masks : ndarray of shape (n, crop, crop), dtype bool, or None
        None when ``masks`` is None.

    Examples
    --------
    >>> import numpy as np
    >>> from skpadim.datasets import make_rd_mvtec
    >>> images = np.zeros((2, 64, 64, 3), dtype=np.uint8)
    >>> masks = np.zeros((2, 64, 64), dtype=bool)
    >>> images[:, 24:40, 24:40], masks[:, 24:40, 24:40] = 255, True
    >>> moved, moved_masks = make_rd_mvtec(images, masks, resize=64, crop=48, random_state=0)
    >>> moved.shape, moved.dtype, moved_masks.shape
    ((2, 48, 48, 3), dtype('uint8'), (2, 48, 48))
    >>> bool((moved[moved_masks] > 128).mean() > 0.95)
    True
    """
    if isinstance(max_angle, bool) or not isinstance(max_angle, Real) or not max_angle >= 0:
        raise ValueError(f"max_angle must be a non-negative number of degrees, got {max_angle!r}")
    resize, crop = _pair(resize, "resize"), _pair(crop, "crop")
    if crop[0] > resize[0] or crop[1] > resize[1]:
        raise InvalidImageError(f"crop {crop} must fit in resize {resize}; lower crop")
    n = n_images(images)
    if masks is not None and len(masks) != n:
        raise InvalidImageError(f"got {len(masks)} masks for {n} images; pass one per image")
    rng = check_random_state(random_state)
    angles = rng.uniform(-max_angle, max_angle, size=n)
    tops = rng.randint(0, resize[0] - crop[0] + 1, size=n)
    lefts = rng.randint(0, resize[1] - crop[1] + 1, size=n)

    out_images = np.empty((n, *crop, 3), dtype=np.uint8)
    out_masks = None if masks is None else np.empty((n, *crop), dtype=bool)
    for i in range(n):
        image = _image_tensor(images, i)
        box = (angles[i], tops[i], lefts[i], crop)
        moved = _move(resize_and_crop(image, resize, interpolation="bicubic"), "bilinear", *box)
        out_images[i] = moved[0].permute(1, 2, 0).mul(255).round().clamp(0, 255).byte().numpy()
        if masks is not None:
            mask = _mask_tensor(masks, i, images, tuple(image.shape[-2:]))
            mask = resize_and_crop(mask, resize, interpolation="nearest")
            out_masks[i] = _move(mask, "nearest", *box)[0, 0].numpy() > 0.5
    return out_images, out_masks


def _move(t, interpolation, angle, top, left, crop):
    """Rotate ``t`` (1, c, H, W) about its centre, then crop ``crop`` at ``(top, left)``."""
    from torchvision.transforms.v2 import InterpolationMode
    from torchvision.transforms.v2.functional import rotate

    mode = InterpolationMode.BILINEAR if interpolation == "bilinear" else InterpolationMode.NEAREST
    t = rotate(t, float(angle), interpolation=mode, fill=0.0)
    return t[..., top : top + crop[0], left : left + crop[1]]


def _image_tensor(images, i):
    if _is_path_list(images):
        # A copy: PIL's arrays are read-only, which torch.from_numpy warns about.
        return _array_to_tensor(np.array(read_image(images[i]))[None])
    return _array_to_tensor(np.asarray(images[i : i + 1]))


def _mask_tensor(masks, i, images, size):
    if isinstance(masks, np.ndarray):
        mask = masks[i] != 0
        if mask.shape != size:
            raise InvalidImageError(
                f"mask {i} is {mask.shape} but its image is {size}; a mask has its image's size"
            )
    else:
        name = images[i] if _is_path_list(images) else f"image {i}"
        mask = load_mask(masks[i], size, str(name))
    return torch.from_numpy(mask.astype(np.float32))[None, None]
