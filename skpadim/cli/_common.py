"""What the commands share: exit codes, errors, logging, option types and option groups,
and the steps every command takes (open the data set, open the model, check an output).

Only light modules are imported at the top of the CLI's modules: numpy, torch and the
estimators are imported inside the commands, so that ``--help`` and ``--version`` answer at
once.
"""

import argparse
import os
import sys
import textwrap

EXIT_OK = 0
EXIT_UNEXPECTED = 1
EXIT_USAGE = 2
EXIT_DATA = 3
EXIT_MODEL_FILE = 4
EXIT_BACKBONE = 5
EXIT_INTERRUPTED = 130

EXIT_CODES_HELP = """\
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

DATA_HELP = """\
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

METHODS = ("padim", "spade", "vae")  # skpadim.inspection.METHODS, without importing numpy
FORMATS = ("auto", "mvtec", "stc", "folder", "anomalib-folder")
FOLDER_OPTIONS = ("normal_dir", "abnormal_dir", "normal_test_dir", "mask_dir", "mask_suffix")


class Failure(Exception):
    """An expected error with the exit status it maps to."""

    def __init__(self, code, message):
        super().__init__(message)
        self.code = code


class Log:
    """Information and progress bars on stderr, unless quiet."""

    def __init__(self, quiet):
        self.quiet = quiet

    def info(self, message):
        if not self.quiet:
            print(message, file=sys.stderr, flush=True)

    def progress(self, **kwargs):
        from tqdm.auto import tqdm

        return tqdm(disable=self.quiet, file=sys.stderr, **kwargs)


def unseen_warning(unseen_area):
    """The line ``score`` and ``evaluate`` print for a model that does not look at the
    whole image (its crop), or None."""
    if not unseen_area:
        return None
    return (f"warning: the model crops its input and does not look at {unseen_area:.0%} of "
            "each image (the border); defects there go unseen. Fit with --crop none to "
            "inspect every pixel.")


# ---------------------------------------------------------------------------- option types
def positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def number_up_to(high):
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


def finite_number(text):
    import math

    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def formatter(prog):
    return argparse.RawDescriptionHelpFormatter(prog, max_help_position=32)


def wrap(text):
    """Wrap a description: the raw formatter keeps the epilogs' layout but wraps nothing."""
    return textwrap.fill(text, width=88)


# ---------------------------------------------------------------------------- option groups
def parent_parsers():
    """The option groups commands share, by name: each an argparse parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-q", "--quiet", action="store_true",
                        help="no progress bars or information on stderr")
    network = argparse.ArgumentParser(add_help=False)
    network.add_argument("--device", default="auto",
                         help="torch device: auto (CUDA if available), cpu, cuda, cuda:1, ... "
                              "(default: auto)")
    network.add_argument("--batch-size", type=positive_int, default=32,
                         help="images per forward pass (default: 32)")
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--format", choices=FORMATS, default="auto",
                      help="data set layout (default: auto, detected from the folders)")
    data.add_argument("--category",
                      help="MVTec AD layout: the category folder's name (any name), when "
                           "DATA is the folder above it")
    data.add_argument("--frame-step", type=positive_int, default=1,
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
    model_file = argparse.ArgumentParser(add_help=False)
    model_file.add_argument("--allow-pickle", action="store_true",
                            help="also read a pickle (joblib) model file: this runs the "
                                 "file's code; only for files you trust")
    model_file.add_argument("--method", choices=METHODS,
                            help="the detector the model file must hold (default: whichever "
                                 "of padim, spade, vae it holds)")
    thresholds = argparse.ArgumentParser(add_help=False)
    group = thresholds.add_argument_group("thresholds (anomaly units; default: the model's)")
    group.add_argument("--threshold", type=finite_number, metavar="T",
                       help="image threshold: an image is anomalous when its score is above "
                            "T; for PaDiM and the VAE the pixel threshold follows it unless "
                            "it was set (or --pixel-threshold is given)")
    group.add_argument("--pixel-threshold", type=finite_number, metavar="T",
                       help="pixel threshold: defect masks mark the map values above T")
    return {"common": common, "network": network, "data": data, "model_file": model_file,
            "thresholds": thresholds}


# ---------------------------------------------------------------------------- shared steps
def open_data(args):
    """The data set of ``args.data`` in its layout (:func:`skpadim.datasets.load_dataset`)."""
    from ..datasets import load_dataset

    # Options not given are None, which load_dataset ignores.
    folders = {k: getattr(args, k) for k in FOLDER_OPTIONS}
    return load_dataset(args.data, args.format, category=args.category,
                        frame_step=args.frame_step, **folders)


def open_model(args):
    """The model file ``args.model``, checked and on ``args.device`` (exit 4 if unusable)."""
    from ..inspection import open_model as _open
    from ..io._persistence import file_format

    path = args.model
    if os.path.isfile(path) and not args.allow_pickle and file_format(path) == "pickle":
        raise Failure(
            EXIT_MODEL_FILE,
            f"model file {path!r} is a pickle file (joblib): loading it would run any code "
            "it contains, so it is refused. Refit the model with 'skpadim fit' (which writes "
            "the safe format), re-save it from Python with skpadim.save, or, only for a file "
            "you trust, pass --allow-pickle",
        )
    model = _open(path, allow_pickle=args.allow_pickle, device=getattr(args, "device", None),
                  method=getattr(args, "method", None))
    thresholds = {"image": getattr(args, "threshold", None),
                  "pixel": getattr(args, "pixel_threshold", None)}
    if any(v is not None for v in thresholds.values()):
        # The detector's own method: a plain sklearn Pipeline has none.
        final_step(model).set_thresholds(**thresholds)
    return model


def check_writable(path, what="model file"):
    """Before any work: the file's folder exists (or is made) and is writable."""
    from ..io._atomic import check_writable as _check

    try:
        _check(path)
    except OSError as exc:
        raise Failure(EXIT_MODEL_FILE, f"cannot write {what} {path!r}: "
                                       f"{exc.strerror or exc}") from None


def save_model(model, path):
    from ..exceptions import ModelFileError
    from ..io._persistence import save

    try:
        save(model, path)
    except ModelFileError as exc:
        raise Failure(EXIT_MODEL_FILE, str(exc)) from None


def final_step(model):
    return model.steps[-1][1] if hasattr(model, "steps") else model


def thresholds_line(model):
    final = final_step(model)
    return (f"image threshold {final.image_threshold_:.4g}, pixel threshold "
            f"{final.pixel_threshold_:.4g}")
