"""The ``skpadim`` command: fit, score and evaluate PaDiM models from a shell, or run the demo.

Each command lives in a module of its own (``skpadim/cli/_fit.py``, ``_score.py``, ...);
the data set layouts, mask matching and model checks they use are library functions
(:func:`skpadim.datasets.load_dataset`, :func:`skpadim.datasets.match_masks`,
:func:`skpadim.inspection.open_model`).

Commands
--------
``skpadim fit DATA --model FILE [--method padim|spade|vae]``
    Fit PaDiM (or SPADE, or the VAE) on the normal training images of a data set and save
    it (:func:`skpadim.save`).
``skpadim score FILE IMAGES... --out DIR``
    Score images, and folders of them at any depth: scores as CSV and JSON Lines keyed by
    each image's path relative to the folder given, and per image, in trees that mirror
    the folders and in the image's own geometry, its raw map, defect mask, overlay and
    side-by-side panel.
``skpadim evaluate FILE DATA --out DIR``
    Image AUROC, pixel AUROC and PRO on a data set's test images, overall and per defect
    type, and precision, recall, F1 and the confusion matrix at the thresholds:
    ``metrics.json``, ``metrics.md``, ``roc.png``, ``pro.png``, scores, overlays, panels.
``skpadim threshold FILE [DATA] --out FILE``
    Set a model's image and pixel thresholds, fixed or tuned on labelled validation
    images (F1-optimal, or anomalib's adaptive threshold), and save the model.
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

import sys
import traceback

from . import _demo, _evaluate, _export, _fit, _score, _threshold
from ._common import (
    EXIT_BACKBONE,
    EXIT_CODES_HELP,
    EXIT_DATA,
    EXIT_INTERRUPTED,
    EXIT_MODEL_FILE,
    EXIT_OK,
    EXIT_UNEXPECTED,
    EXIT_USAGE,
    Failure,
    Log,
    formatter,
    parent_parsers,
    wrap,
)

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

_COMMANDS = (_fit, _score, _evaluate, _threshold, _export, _demo)


def build_parser():
    """The argument parser of the ``skpadim`` command.

    Returns
    -------
    parser : argparse.ArgumentParser
        With one sub-command per command (``fit``, ``score``, ``evaluate``, ``threshold``,
        ``export``, ``demo``); the parsed namespace's ``command`` names it and ``run`` is the
        function that runs it.

    See Also
    --------
    main : Parse the arguments and run the command.

    Examples
    --------
    >>> from skpadim.cli import build_parser
    >>> args = build_parser().parse_args(
    ...     ["fit", "mvtec/bottle", "--model", "bottle.safetensors", "--n-features", "50",
    ...      "--weights", "none"])
    >>> args.command, args.data, args.model, args.n_features, args.weights, args.method
    ('fit', 'mvtec/bottle', 'bottle.safetensors', 50, None, 'padim')
    """
    import argparse

    from .. import __version__

    parser = argparse.ArgumentParser(
        prog="skpadim",
        description=wrap("Image anomaly detection with PaDiM (and the SPADE and VAE "
                         "baselines): fit a model on normal images, score new images, "
                         "evaluate on a labelled test set, set its thresholds, export it, "
                         "or run the offline demo."),
        epilog="examples:\n"
               "  skpadim demo\n"
               "  skpadim fit mvtec/bottle --model bottle.safetensors\n"
               "  skpadim score bottle.safetensors new_images/ --out scores/\n"
               "  skpadim evaluate bottle.safetensors mvtec/bottle --out report/\n\n"
               "run 'skpadim COMMAND --help' for a command's options.\n\n" + EXIT_CODES_HELP,
        formatter_class=formatter,
    )
    parser.add_argument("--version", action="version", version=f"skpadim {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    parents = parent_parsers()
    for command in _COMMANDS:
        command.add_parser(commands, parents)
    return parser


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
        print("skpadim: error: a command is required (fit, score, evaluate, threshold, "
              "export, demo)", file=sys.stderr)
        return EXIT_USAGE

    from ..exceptions import (
        DatasetError,
        InvalidImageError,
        ModelFileError,
        SkpadimError,
        WeightsError,
    )

    def fail(code, message):
        print(f"skpadim {args.command}: error: {message}", file=sys.stderr)
        return code

    try:
        return args.run(args, Log(args.quiet))
    except Failure as exc:
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
