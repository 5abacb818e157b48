"""``skpadim export``: write a fitted model as one ONNX graph."""

import os

from ._common import (
    EXIT_BACKBONE,
    EXIT_CODES_HELP,
    EXIT_MODEL_FILE,
    EXIT_OK,
    Failure,
    check_writable,
    formatter,
    wrap,
)


def add_parser(commands, parents):
    p = commands.add_parser(
        "export", parents=[parents["common"]], formatter_class=formatter,
        help="write a fitted model as an ONNX graph (onnxruntime, C++, C#, ...)",
        description=wrap("Write a fitted PaDiM pipeline or VAE as one ONNX graph: input "
                         "'images', uint8 (n, H, W, 3) RGB at the model's input size (its "
                         "resize; the graph crops but does not resize); outputs "
                         "'anomaly_maps' float32 (n, h, w), 'scores' float32 (n,) and "
                         "'labels' int64 (n,), +1 normal / -1 anomalous. The thresholds and "
                         "the contract are in the file's metadata. Needs the onnx extra: pip "
                         "install 'skpadim[onnx]'."),
        epilog="examples:\n"
               "  skpadim export bottle.safetensors --format onnx --out bottle.onnx\n"
               "  skpadim export wr50.safetensors --format onnx --out wr50.onnx "
               "--storage-dtype float16\n\n" + EXIT_CODES_HELP,
    )
    p.add_argument("model", metavar="MODEL", help="a model file written by skpadim fit or "
                                                  "skpadim.save")
    p.add_argument("--allow-pickle", action="store_true",
                   help="also read a pickle (joblib) model file: this runs the file's code; "
                        "only for files you trust")
    p.add_argument("--format", choices=("onnx",), default="onnx",
                   help="output format (default: onnx)")
    p.add_argument("--out", required=True, metavar="FILE", help="the .onnx file to write")
    p.add_argument("--opset", type=int, choices=range(17, 24), default=18, metavar="N",
                   help="ONNX opset, 17 to 23 (default: 18)")
    p.add_argument("--storage-dtype", choices=("float32", "float16"),
                   help="precision of PaDiM's factors in the file (default: the model's)")
    p.set_defaults(run=run)


def run(args, log):
    from ..exceptions import ConfigurationError, ModelFileError
    from ..inspection import _describe
    from ._common import open_model

    args.device, args.method = None, None
    try:
        model = open_model(args)
        from ..io._onnx import export_onnx

        check_writable(args.out, "ONNX file")
        log.info(f"exporting {_describe(model)} to {args.format}")
        written = export_onnx(model, args.out, opset=args.opset,
                              storage_dtype=args.storage_dtype)
    except (ModelFileError, ConfigurationError) as exc:  # not a model export can take
        raise Failure(EXIT_MODEL_FILE, str(exc)) from None
    except ImportError as exc:  # the onnx extra is missing
        raise Failure(EXIT_BACKBONE, str(exc)) from None
    sizes = ", ".join(f"{p} ({os.path.getsize(p) / 2**20:.1f} MiB)" for p in written)
    print(f"exported to {sizes}")
    return EXIT_OK
