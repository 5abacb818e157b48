"""ShanghaiTech Campus (STC), read from its commonly distributed folder layout."""

import os

import numpy as np

from ..exceptions import DatasetError
from ._base import check_positive_int, list_dirs, list_images, make_bunch, require_dir
from ._masks import load_npy

__all__ = ["load_stc"]


def load_stc(root, frame_step=1, scenes=None):
    """Load the ShanghaiTech Campus video anomaly data set as frames.

    The layout, as the data set is commonly distributed, with the training videos extracted
    to frames::

        <root>/training/frames/<video>/<frame>.jpg          normal training frames
        <root>/testing/frames/<video>/<frame>.jpg           test frames
        <root>/testing/test_frame_mask/<video>.npy          (n_frames,), non-zero = anomalous
        <root>/testing/test_pixel_mask/<video>.npy          (n_frames, H, W), non-zero = anomalous

    Videos are named ``<scene>_<number>`` (``01_001``); the frames of a video, in natural
    file-name order, are the rows of its ``.npy`` masks. The training set ships as
    ``training/videos/*.avi``; extract each video to ``training/frames/<video>/`` first, e.g.
    ``ffmpeg -i training/videos/01_001.avi -start_number 0 training/frames/01_001/%03d.jpg``.

    The PaDiM paper resizes STC frames to 256x256 with no crop: pipelines use
    ``resize=256, crop=None`` (the Bunch's ``resize`` and ``crop``).

    Parameters
    ----------
    root : str or path-like
        The folder holding ``training`` and ``testing``.
    frame_step : int, default=1
        Keep every ``frame_step``-th frame of each video (frames 0, ``frame_step``, ...), in
        training and test. STC has about 270,000 training and 40,000 test frames; consecutive
        frames are nearly identical, so a step of 5 to 10 loses little.
    scenes : iterable of int or str, or None, default=None
        Keep only the videos of these scenes (cameras), as numbers (``1``) or as written in
        video names (``"01"``). None keeps all 13.

    Returns
    -------
    data : :class:`~sklearn.utils.Bunch`
        With fields:

        - ``train_images`` : list of str, training frames, video by video.
        - ``test_images`` : list of str, test frames, video by video.
        - ``test_labels`` : ndarray of shape (n_test,), int; 1 = anomalous frame, from
          ``test_frame_mask``.
        - ``test_masks`` : list of tuple; ``(npy_path, frame_index)`` into
          ``test_pixel_mask`` for every test frame, normal ones included (their masks are
          empty). Read them with :func:`read_masks`.
        - ``test_defect_types`` : ndarray of str, ``"anomaly"`` or ``"good"`` (STC does not
          name its anomalies).
        - ``train_videos``, ``test_videos`` : ndarray of str, the video of each frame;
          ``test_frame_indices`` : ndarray of int, each test frame's index in its video.
        - ``name`` : ``"shanghaitech_campus"``; ``resize`` : 256; ``crop`` : None.

    Raises
    ------
    DatasetError
        Naming the path: a folder is missing, the training videos are not extracted, a
        video has no frames, a mask file is missing, or a mask's frame count differs from
        its video's.

    Examples
    --------
    A tiny tree in STC's layout: one training and one test video of four frames.

    >>> import tempfile
    >>> from pathlib import Path
    >>> import numpy as np
    >>> from PIL import Image
    >>> from skpadim.datasets import load_stc, read_masks
    >>> root = tempfile.TemporaryDirectory()
    >>> for part, video in [("training", "01_001"), ("testing", "01_0014")]:
    ...     folder = Path(root.name, part, "frames", video)
    ...     folder.mkdir(parents=True)
    ...     for i in range(4):
    ...         Image.new("RGB", (8, 6)).save(folder / f"{i:03d}.jpg")
    >>> pixel = np.zeros((4, 6, 8), dtype=np.uint8)
    >>> pixel[2:, 1:3, 1:3] = 1
    >>> for kind, array in [("pixel", pixel), ("frame", pixel.any(axis=(1, 2)))]:
    ...     folder = Path(root.name, "testing", f"test_{kind}_mask")
    ...     folder.mkdir()
    ...     np.save(folder / "01_0014.npy", array)
    >>> data = load_stc(root.name, frame_step=2)
    >>> len(data.train_images), data.test_labels, data.test_frame_indices
    (2, array([0, 1]), array([0, 2]))
    >>> read_masks(data.test_masks, data.test_images).sum(axis=(1, 2))
    array([0, 4])
    >>> root.cleanup()
    """
    root = require_dir(root, "ShanghaiTech Campus root folder")
    frame_step = check_positive_int(frame_step, "frame_step")
    train_dir = _training_frames(root)
    test_dir = require_dir(os.path.join(root, "testing", "frames"), "STC test frame folder")
    pixel_dir = require_dir(
        os.path.join(root, "testing", "test_pixel_mask"), "STC pixel mask folder"
    )
    label_dir = require_dir(
        os.path.join(root, "testing", "test_frame_mask"), "STC frame label folder"
    )

    train, train_videos = [], []
    for video in _select(list_dirs(train_dir), scenes, train_dir):
        frames = _frames(train_dir, video)[::frame_step]
        train += frames
        train_videos += [video] * len(frames)

    test, labels, masks, videos, indices = [], [], [], [], []
    for video in _select(list_dirs(test_dir), scenes, test_dir):
        frames = _frames(test_dir, video)
        frame_labels, pixel_path = _video_masks(video, len(frames), label_dir, pixel_dir)
        keep = range(0, len(frames), frame_step)
        test += [frames[i] for i in keep]
        labels += [int(frame_labels[i] != 0) for i in keep]
        masks += [(pixel_path, i) for i in keep]
        videos += [video] * len(keep)
        indices += list(keep)
    return make_bunch(
        "shanghaitech_campus", train, test, labels, masks,
        ["anomaly" if y else "good" for y in labels],
        train_videos=np.asarray(train_videos, dtype=str),
        test_videos=np.asarray(videos, dtype=str),
        test_frame_indices=np.asarray(indices, dtype=np.int64),
        resize=256, crop=None,
    )


def _training_frames(root):
    frames = os.path.join(root, "training", "frames")
    videos = os.path.join(root, "training", "videos")
    if not os.path.isdir(frames) and os.path.isdir(videos):
        raise DatasetError(
            f"STC training frames not found: {frames!r}; the training set in {videos!r} is "
            "video files, which must be extracted to frames first, one folder per video, e.g. "
            f"mkdir -p {frames}/01_001 && ffmpeg -i {videos}/01_001.avi -start_number 0 "
            f"{frames}/01_001/%03d.jpg"
        )
    return require_dir(frames, "STC training frame folder")


def _select(videos, scenes, folder):
    if not videos:
        raise DatasetError(f"no video folders in {folder!r}; expected <video>/<frame>.jpg")
    if scenes is None:
        return videos
    wanted = {int(s) for s in scenes}
    chosen = [v for v in videos if v.split("_")[0].isdigit() and int(v.split("_")[0]) in wanted]
    if not chosen:
        present = sorted({v.split("_")[0] for v in videos})
        raise DatasetError(
            f"no video of scenes {sorted(wanted)} in {folder!r}; scenes present: {present}"
        )
    return chosen


def _frames(folder, video):
    frames = list_images(os.path.join(folder, video))
    if not frames:
        raise DatasetError(f"video folder {os.path.join(folder, video)!r} holds no frames")
    return frames


def _video_masks(video, n_frames, label_dir, pixel_dir):
    """The frame labels of a video and the path of its pixel masks, checked against its frames."""
    label_path = os.path.join(label_dir, video + ".npy")
    pixel_path = os.path.join(pixel_dir, video + ".npy")
    labels = load_npy(label_path).reshape(-1)
    pixels = load_npy(pixel_path, mmap_mode="r")  # header only: masks are read later
    if pixels.ndim != 3:
        raise DatasetError(
            f"mask array {pixel_path!r} has shape {pixels.shape}; expected "
            "(n_frames, height, width)"
        )
    for path, n in [(label_path, len(labels)), (pixel_path, len(pixels))]:
        if n != n_frames:
            raise DatasetError(
                f"mask file {path!r} covers {n} frames but video {video!r} has {n_frames}; "
                "each row of a video's masks belongs to one of its frames"
            )
    return labels, pixel_path

