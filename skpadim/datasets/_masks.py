"""Reading ground-truth masks from the references the loaders return."""

import os
from numbers import Integral

import numpy as np

from ..exceptions import DatasetError, InvalidImageError
from ..features._image_files import image_size, read_image

__all__ = ["read_masks"]


def read_masks(mask_refs, image_paths):
    """Read ground-truth masks at their images' native resolution.

    Parameters
    ----------
    mask_refs : sequence
        One reference per image, as the loaders return them in ``test_masks``:

        - a path to a mask image, where a non-zero pixel (in any channel) marks a defect;
        - ``None`` for a normal image, read as an all-False mask of that image's size;
        - a tuple ``(npy_path, frame_index)``: frame ``frame_index`` of a ``.npy`` array of
          shape ``(n_frames, H, W)``, non-zero marks a defect (ShanghaiTech Campus). The array
          is memory-mapped, so reading a few frames does not load the whole video.
    image_paths : sequence of str or path-like
        The image each mask belongs to. Only the image's header is read, for its size.

    Returns
    -------
    masks : ndarray of shape (n_images, H, W), dtype bool
        True marks an anomalous pixel.

    Raises
    ------
    DatasetError
        Naming the file, if a mask or image is missing or unreadable, a frame index is out of
        range, or a mask's size differs from its image's; also if the images do not all have
        one size (then read them in groups of equal size).

    Examples
    --------
    >>> import os, tempfile
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim.datasets import read_masks
    >>> tmp = tempfile.TemporaryDirectory()
    >>> image, mask = os.path.join(tmp.name, "a.png"), os.path.join(tmp.name, "a_mask.png")
    >>> Image.new("RGB", (6, 4)).save(image)
    >>> drawn = np.zeros((4, 6), dtype=np.uint8)
    >>> drawn[1:3, 2:4] = 255
    >>> Image.fromarray(drawn).save(mask)
    >>> masks = read_masks([mask, None], [image, image])
    >>> masks.shape, masks.dtype, int(masks[0].sum()), int(masks[1].sum())
    ((2, 4, 6), dtype('bool'), 4, 0)
    >>> tmp.cleanup()
    """
    mask_refs, image_paths = list(mask_refs), list(image_paths)
    if len(mask_refs) != len(image_paths):
        raise InvalidImageError(
            f"got {len(mask_refs)} mask references for {len(image_paths)} images; pass one "
            "per image, None for a normal one"
        )
    npy_cache = {}
    masks = [
        load_mask(ref, image_size(path), os.fspath(path), npy_cache)
        for ref, path in zip(mask_refs, image_paths)
    ]
    if not masks:
        return np.zeros((0, 0, 0), dtype=bool)
    for mask, path in zip(masks, image_paths):
        if mask.shape != masks[0].shape:
            raise DatasetError(
                f"image {os.fspath(path)!r} is {_hw(mask.shape)} but "
                f"{os.fspath(image_paths[0])!r} is {_hw(masks[0].shape)}: masks of differently "
                "sized images cannot share one array; read them in groups of equal size"
            )
    return np.stack(masks)


def _hw(shape):
    return f"{shape[0]}x{shape[1]} (height x width)"


def load_mask(ref, size, image, npy_cache=None):
    """Read one mask reference as a bool ``(H, W)`` array and check it has ``size``.

    ``image`` names the mask's image in error messages; ``npy_cache`` keeps memory-mapped
    arrays open across calls, so a video's frames are not re-opened one by one.
    """
    if ref is None:
        return np.zeros(size, dtype=bool)
    if isinstance(ref, tuple) and len(ref) == 2:
        mask, name = _npy_frame(*ref, {} if npy_cache is None else npy_cache), ref
    elif isinstance(ref, (str, os.PathLike)):
        mask, name = read_image(ref).any(axis=-1), os.fspath(ref)
    else:
        raise InvalidImageError(
            f"a mask reference must be a path, None or (npy_path, frame_index), got {ref!r}"
        )
    if mask.shape != tuple(size):
        raise DatasetError(
            f"mask {name!r} is {_hw(mask.shape)} but its image {image!r} is {_hw(size)}; a mask "
            "must have its image's size"
        )
    return mask


def _npy_frame(npy_path, index, npy_cache):
    npy_path = os.fspath(npy_path)
    if npy_path not in npy_cache:
        frames = load_npy(npy_path, mmap_mode="r")
        if frames.ndim != 3:
            raise DatasetError(
                f"mask array {npy_path!r} has shape {frames.shape}; expected "
                "(n_frames, height, width)"
            )
        npy_cache[npy_path] = frames
    frames = npy_cache[npy_path]
    valid = isinstance(index, Integral) and not isinstance(index, bool)
    if not valid or not 0 <= index < len(frames):
        raise DatasetError(
            f"frame {index!r} is not a valid index for mask array {npy_path!r} of "
            f"{len(frames)} frames"
        )
    return np.asarray(frames[index]) != 0


def load_npy(path, mmap_mode=None):
    """``np.load`` that raises a DatasetError naming the file it cannot read."""
    try:
        return np.load(path, mmap_mode=mmap_mode)
    except FileNotFoundError as exc:
        raise DatasetError(f"mask file not found: {os.fspath(path)!r}") from exc
    except (OSError, ValueError) as exc:
        raise DatasetError(
            f"cannot read mask array {os.fspath(path)!r} ({exc}); is the file a complete .npy?"
        ) from exc
