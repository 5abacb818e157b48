"""``skpadim threshold``: set a model's image and pixel thresholds, fixed or tuned on a
labelled validation set, and save the model with them."""

import argparse

from ._common import (
    DATA_HELP,
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_USAGE,
    Failure,
    check_writable,
    final_step,
    finite_number,
    formatter,
    open_data,
    open_model,
    save_model,
    thresholds_line,
    wrap,
)


def _rule(choices):
    def parse(text):
        if text.lower() in choices:
            return text.lower()
        try:
            return finite_number(text)
        except argparse.ArgumentTypeError:
            raise argparse.ArgumentTypeError(
                f"expected {', '.join(choices)} or a number, got {text!r}") from None

    return parse


def add_parser(commands, parents):
    p = commands.add_parser(
        "threshold", parents=[parents[k] for k in ("common", "network", "data")],
        formatter_class=formatter,
        help="set a model's thresholds: fixed, or tuned on labelled validation images",
        description=wrap(
            "Set the image threshold (an image is anomalous when its score is above it) and "
            "the pixel threshold (defect masks mark the map values above it) of a fitted "
            "model, and save the model with them: they travel in the model file, and in "
            "its ONNX export. Each is 'keep' (the model's), a number (anomaly units), 'f1' "
            "(the F1-optimal threshold on the test images of DATA, a labelled validation "
            "set in any layout fit reads) or, for the image threshold, 'adaptive' "
            "(anomalib's F1AdaptiveThreshold value). The pixel threshold needs masks; "
            "without --pixel, PaDiM and the VAE move it with the image threshold (their "
            "image score is the map's maximum). Tune on images the final evaluation does "
            "not use."),
        epilog="examples:\n"
               "  skpadim threshold bottle.safetensors validation/bottle --image f1 "
               "--pixel f1 --out bottle-tuned.safetensors\n"
               "  skpadim threshold bottle.safetensors --image 14.2 --pixel 12 "
               "--out bottle-fixed.safetensors\n\n" + DATA_HELP + "\n" + EXIT_CODES_HELP,
    )
    p.add_argument("model", metavar="MODEL", help="a model file written by skpadim fit")
    p.add_argument("data", metavar="DATA", nargs="?",
                   help="labelled validation images (needed by 'f1' and 'adaptive')")
    p.add_argument("--out", required=True, metavar="FILE",
                   help="where to save the model with its new thresholds (may be MODEL)")
    p.add_argument("--image", type=_rule(("keep", "f1", "adaptive")), default="keep",
                   help="image threshold: keep, f1, adaptive or a number (default: keep)")
    p.add_argument("--pixel", type=_rule(("keep", "f1")), default="keep",
                   help="pixel threshold: keep, f1 or a number (default: keep)")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read a pickle (joblib) model file: this runs the file's code; "
                        "only for files you trust")
    p.set_defaults(run=run)


def run(args, log):
    from ..evaluation._thresholds import tune_thresholds
    from ..exceptions import DatasetError
    from ..inspection import ModelMasks

    rules = {"image": None if args.image == "keep" else args.image,
             "pixel": None if args.pixel == "keep" else args.pixel}
    tuned = [k for k, v in rules.items() if isinstance(v, str)]
    if tuned and args.data is None:
        raise Failure(EXIT_USAGE, f"--{tuned[0]} {rules[tuned[0]]} tunes on labelled images: "
                                  "give the validation data set folder after MODEL")
    check_writable(args.out)
    model = open_model(args)
    log.info(f"before: {thresholds_line(model)}")
    if tuned:
        data = open_data(args)
        log.info(data.description)
        if not len(data.test_images):
            raise DatasetError(f"data set {args.data!r} has no labelled images to tune on; "
                               "in the anomalib-folder layout, name them with "
                               "--normal-test-dir and --abnormal-dir")
        masks = None
        if rules["pixel"] == "f1":
            if data.test_masks is None:
                raise DatasetError(f"--pixel f1 needs masks, and data set {args.data!r} has "
                                   "none; pass a number, or keep the pixel threshold")
            masks = ModelMasks(model, data.test_masks, data.test_images)
        tune_thresholds(model, data.test_images, data.test_labels, masks,
                        image=rules["image"], pixel=rules["pixel"],
                        batch_size=args.batch_size)
    else:
        final_step(model).set_thresholds(**rules)
    save_model(model, args.out)
    print(f"model saved to {args.out} ({thresholds_line(model)})")
    return EXIT_OK
