"""``skpadim evaluate``: metrics of a fitted model on a data set's labelled test images."""

import os

from ._common import (
    DATA_HELP,
    EXIT_CODES_HELP,
    EXIT_OK,
    formatter,
    number_up_to,
    open_data,
    open_model,
    thresholds_line,
    unseen_warning,
    wrap,
)
from ._images import ImageOutputs


def add_parser(commands, parents):
    p = commands.add_parser(
        "evaluate",
        parents=[parents[k] for k in ("common", "network", "data", "model_file", "thresholds")],
        formatter_class=formatter,
        help="metrics on a data set's test images: AUROC, PRO, F1 at the threshold",
        description=wrap(
            "Evaluate a fitted PaDiM, SPADE or VAE model on the test images of DATA: image "
            "AUROC, pixel AUROC and PRO, overall and per defect type (each defect type "
            "against all normal test images); precision, recall, F1 and the confusion "
            "matrix at the model's image and pixel thresholds (or --threshold, "
            "--pixel-threshold), and the F1-optimal thresholds of this test set, for "
            "reference (to set them, tune them on a separate validation set with 'skpadim "
            "threshold'). Pixel metrics compare maps and masks at the model's resolution, "
            "over the whole image: when the model crops its input (as the paper's 224 of "
            "256), the border it does not see counts as not detected, and the report says "
            "how much ground truth lies there. Writes "
            "DIR/metrics.json, DIR/metrics.md, DIR/roc.png and DIR/pro.png (operating "
            "points marked), DIR/scores.csv and DIR/scores.jsonl, and overlays and panels "
            "of the highest-scoring images of each defect type in DIR/overlays/ and "
            "DIR/panels/, in the images' own geometry."),
        epilog="examples:\n"
               "  skpadim evaluate bottle.safetensors mvtec_ad/bottle --out report/\n"
               "  skpadim evaluate screw.safetensors mvtec_ad --category screw --out report/ "
               "--max-fpr 0.05\n"
               "  skpadim evaluate data.safetensors my_data/ --normal-dir good "
               "--normal-test-dir ok \\\n"
               "      --abnormal-dir crack --mask-dir masks/crack --out report/\n\n"
               + DATA_HELP + "\n" + EXIT_CODES_HELP,
    )
    p.add_argument("model", metavar="MODEL", help="a model file written by skpadim fit")
    p.add_argument("data", metavar="DATA", help="the data set folder")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--max-fpr", type=number_up_to(1.0), default=0.3,
                   help="PRO is integrated up to this false positive rate (default: 0.3)")
    p.add_argument("--overlays", type=int, default=2, metavar="N",
                   help="overlays and panels of the N highest-scoring images per defect "
                        "type and of normal images; 0 for none (default: 2)")
    p.set_defaults(run=run)


def run(args, log):
    import numpy as np

    from ..evaluation._report import metrics_markdown, write_report
    from ..evaluation._scored import ScoredSet, select_for_overlays
    from ..evaluation._view import evaluation_view
    from ..exceptions import DatasetError
    from ..features._geometry import restore_geometry
    from ..features._image_files import image_size
    from ..inspection import FileInspection, model_geometry
    from ..io._results import ResultsWriter
    from ..pipeline import iter_inspect_images

    model = open_model(args)
    geometry = model_geometry(model)
    data = open_data(args)
    log.info(data.description)
    log.info(thresholds_line(model))
    paths = list(data.test_images)
    if not paths:
        raise DatasetError(f"data set {args.data!r} has no test images to evaluate on; in "
                           "the anomalib-folder layout, name them with --normal-test-dir "
                           "and --abnormal-dir")
    # Pixel metrics (PRO, pixel AUROC) need every map at once.
    parts = []
    with log.progress(total=len(paths), desc="evaluate", unit="img") as bar:
        for _, part in iter_inspect_images(model, paths, batch_size=args.batch_size):
            parts.append(part)
            bar.update(len(part.maps))
    maps = np.concatenate([p.maps for p in parts])
    scores = np.concatenate([p.anomaly_scores for p in parts])
    labels = np.concatenate([p.labels for p in parts])
    view = evaluation_view(model, maps, data.test_masks, paths)
    defect_types = np.asarray(data.test_defect_types)
    unseen = _unseen_lines(view, defect_types)
    for line in unseen:
        log.info(line)
    scored = ScoredSet(np.asarray(data.test_labels), scores, defect_types, view.maps,
                       view.masks)
    outputs = ImageOutputs(args.out, model, maps="none", masks=False,
                           overlays=args.overlays > 0, panels=args.overlays > 0)
    thresholds = {"image": outputs.image_threshold, "pixel": outputs.pixel_threshold}
    info = {"model": os.fspath(args.model), "data": data.description,
            "geometry": f"resize {geometry['resize']}, crop {geometry['crop']} (pixel metrics "
                        "over the whole resized image)"}
    if unseen:
        info["unseen"] = " ".join(unseen)
    name = data.set_name
    try:
        report = write_report(args.out, {name: scored}, max_fpr=args.max_fpr, info=info,
                              thresholds={name: thresholds})
    except ImportError as exc:
        log.info(f"{exc}; writing the metrics without curve plots")
        report = write_report(args.out, {name: scored}, max_fpr=args.max_fpr, info=info,
                              thresholds={name: thresholds}, plots=False)
    columns = ("path", "defect_type", "true_label", "anomaly_score", "label", "verdict",
               "image_threshold", "pixel_threshold")
    with ResultsWriter(args.out, columns=columns) as writer:
        for i, path in enumerate(paths):
            writer.write({"path": path, "defect_type": str(scored.defect_types[i]),
                          "true_label": int(scored.labels[i]),
                          "anomaly_score": float(scores[i]), "label": int(labels[i]),
                          "verdict": "anomalous" if labels[i] == -1 else "normal",
                          "image_threshold": thresholds["image"],
                          "pixel_threshold": thresholds["pixel"]})
    if args.overlays > 0:
        from ..datasets import read_masks as read_original_masks

        for rank, i in enumerate(select_for_overlays(scored, args.overlays)):
            size = image_size(paths[i])
            restored = restore_geometry(maps[i][None], size, geometry["resize"],
                                        geometry["crop"])[0]
            result = FileInspection(i, paths[i], restored, float(scores[i]), int(labels[i]))
            truth = None
            if data.test_masks is not None and data.test_masks[i] is not None:
                truth = read_original_masks([data.test_masks[i]], [paths[i]])[0]
            stem = os.path.splitext(os.path.basename(paths[i]))[0]
            outputs.write(f"{rank:02d}_{scored.defect_types[i]}_{stem}", result, truth)
    print(metrics_markdown(report))
    print(f"report written to {args.out}")
    return EXIT_OK


def _unseen_lines(view, defect_types):
    """What a model that crops does not see: the share of each image, and of each defect
    type's ground truth (counted as missed by the pixel metrics)."""
    if not view.unseen_area:
        return []
    lines = [unseen_warning(view.unseen_area)
             + " The pixel metrics count them as not detected."]
    for kind in sorted(set(defect_types.tolist())):
        chosen = defect_types == kind
        total = int(view.defect[chosen].sum())
        hidden = int(view.unseen_defect[chosen].sum())
        if hidden:
            lines.append(f"warning: {hidden / total:.1%} of the ground-truth pixels of "
                         f"{kind!r} ({int((view.unseen_defect[chosen] > 0).sum())} images) lie "
                         "where the model does not look")
    return lines

