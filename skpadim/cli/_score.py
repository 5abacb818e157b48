"""``skpadim score``: score image files and folder trees with a fitted model."""

import os

from ._common import (
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_USAGE,
    Failure,
    formatter,
    open_model,
    thresholds_line,
    unseen_warning,
    wrap,
)
from ._images import MAP_FORMATS, ImageOutputs


def add_parser(commands, parents):
    p = commands.add_parser(
        "score", parents=[parents[k] for k in ("common", "network", "model_file", "thresholds")],
        formatter_class=formatter,
        help="score images with a fitted model: scores, maps, masks, overlays, panels",
        description=wrap(
            "Score images with a fitted PaDiM, SPADE or VAE model; folders are searched at "
            "any depth. Every output is in the image's own size: the model's resize and crop "
            "are undone, and the border the crop removed is unknown (NaN in the maps, never "
            "in a mask, hatched in the pictures). Writes DIR/scores.csv and DIR/scores.jsonl "
            "(one row per image: its path relative to the folder given, anomaly score, "
            "verdict, the thresholds, the files written) and, per image, mirroring the "
            "folder tree: DIR/maps/<path>.npy (the raw anomaly map, float32; --maps png16 "
            "for 16-bit PNGs), DIR/masks/<path>.png (defect mask: map above the pixel "
            "threshold), DIR/overlays/<path>.png (the map over the image with a colour bar, "
            "the score, the verdict and the threshold; the ground truth outlined in cyan "
            "when --masks gives it) and DIR/panels/<path>.png (image | map | mask | ground "
            "truth)."),
        epilog="examples:\n"
               "  skpadim score bottle.safetensors mvtec_ad/bottle/test --out scores/\n"
               "  skpadim score bottle.safetensors mvtec_ad/bottle/test/broken_large "
               "--out scores/\n"
               "  skpadim score bottle.safetensors img1.png img2.png --out scores/ \\\n"
               "      --masks mvtec_ad/bottle/ground_truth/broken_large\n"
               "  skpadim score bottle.safetensors new/ --out scores/ --threshold 12.5 "
               "--normalize --maps png16\n\n" + EXIT_CODES_HELP,
    )
    p.add_argument("model", metavar="MODEL", help="a model file written by skpadim fit")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="image files, or folders whose image files are all scored, in "
                        "sub-folders too; several folders: paths relative to the folder "
                        "that holds them all")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--masks", nargs="+", metavar="MASK",
                   help="ground-truth mask files or folders; a mask belongs to the image "
                        "whose name it has, optionally with a _mask suffix (a.png <- a.png, "
                        "a_mask.png)")
    p.add_argument("--mask-suffix", action="append", metavar="SUFFIX",
                   help="what a mask's name adds to its image's, tried in order; repeat for "
                        "several (default: _mask, then nothing)")
    p.add_argument("--normalize", action="store_true",
                   help="add normalized_score: score / (score + image threshold), in [0, 1), "
                        "0.5 at the threshold (raw scores are always kept)")
    p.add_argument("--maps", choices=MAP_FORMATS, default="npy",
                   help="raw anomaly maps: npy (float32, NaN = unknown), png16 (16-bit PNG, "
                        "0 = unknown, scale in its text chunks) or none (default: npy)")
    p.add_argument("--no-masks", action="store_true", help="no defect masks")
    p.add_argument("--no-overlays", action="store_true", help="no overlays")
    p.add_argument("--no-panels", action="store_true", help="no side-by-side panels")
    p.set_defaults(run=run)


def _columns(args):
    return ("path", "anomaly_score", "normality_score",
            *(("normalized_score",) if args.normalize else ()), "label", "verdict",
            "image_threshold", "pixel_threshold", "ground_truth", "map", "defect_mask",
            "overlay", "panel", "file")


def run(args, log):
    from ..datasets import find_images, match_masks, output_names, read_masks
    from ..evaluation._thresholds import normalize_scores
    from ..evaluation._view import _view
    from ..exceptions import DatasetError
    from ..features._image_files import image_size
    from ..inspection import iter_inspect_files
    from ..io._results import ResultsWriter

    model = open_model(args)
    paths, keys = find_images(args.images)
    masks = [None] * len(paths)
    if args.masks:
        masks, unmatched = match_masks(paths, args.masks,
                                       suffixes=args.mask_suffix or ("_mask", ""))
        log.info(f"{sum(m is not None for m in masks)} of {len(paths)} images have a mask"
                 + (f"; {len(unmatched)} masks belong to no image given, e.g. "
                    f"{unmatched[0]!r}" if unmatched else ""))
        for image, mask in zip(paths, masks):  # before any output is written
            if mask is None:
                continue
            mask_size, size = image_size(mask), image_size(image)
            if mask_size != size:
                raise DatasetError(f"mask {mask!r} is {mask_size} pixels (H, W) but its "
                                   f"image {image!r} is {size}")
    log.info(thresholds_line(model))
    warning = unseen_warning(_view(model, paths)[2])
    if warning:
        log.info(warning)
    outputs = ImageOutputs(args.out, model, maps=args.maps, masks=not args.no_masks,
                           overlays=not args.no_overlays, panels=not args.no_panels)
    if args.normalize and not outputs.image_threshold > 0:
        raise Failure(EXIT_USAGE, "--normalize needs a positive image threshold (scores are "
                                  f"divided by score + threshold), got "
                                  f"{outputs.image_threshold:g}; pass a positive "
                                  "--threshold, or drop --normalize")
    names = output_names(keys, extension="")  # each kind of file adds its own
    os.makedirs(args.out, exist_ok=True)
    n_anomalous = 0
    with log.progress(total=len(paths), desc="score", unit="img") as bar, \
            ResultsWriter(args.out, columns=_columns(args)) as writer:
        for result in iter_inspect_files(model, paths, batch_size=args.batch_size):
            i = result.index
            ground_truth = None
            if masks[i] is not None:
                ground_truth = read_masks([masks[i]], [paths[i]])[0]
            normalized = (float(normalize_scores(result.anomaly_score,
                                                 outputs.image_threshold))
                          if args.normalize else None)
            files = outputs.write(names[i], result, ground_truth, normalized)
            n_anomalous += result.label == -1
            row = {"path": keys[i], "anomaly_score": result.anomaly_score,
                   "normality_score": -result.anomaly_score}
            if args.normalize:
                row["normalized_score"] = normalized
            row.update({"label": result.label,
                        "verdict": "anomalous" if result.label == -1 else "normal",
                        "image_threshold": outputs.image_threshold,
                        "pixel_threshold": outputs.pixel_threshold,
                        "ground_truth": masks[i] or "", **files, "file": paths[i]})
            writer.write(row)
            bar.update()
    print(f"scored {len(paths)} images: {n_anomalous} predicted anomalous (anomaly score above "
          f"{outputs.image_threshold:.4g}); results in {os.path.join(args.out, 'scores.csv')} "
          f"and scores.jsonl, per-image files under {args.out}")
    return EXIT_OK
