"""Thin texture defects at full resolution against the 224-px default: does looking closer help?

Four PaDiM models (EfficientNet-Lite0 with its ImageNet weights, the same 100 random
channels for all four within a seed) inspect the same 256 x 512 texture images:

1. ``preset="paper"``: the former default, resized to 256 x 256 and centre-cropped to
   224 x 224 (a 2x shrink of the width; 23% of the area unseen);
2. ``preset="full-view"``: resized to 256 x 256, no crop (the same 2x shrink);
3. full resolution, one Gaussian per position of the whole image
   (``positions="image", resize=None, crop=None``; 256 x 512 needs no backbone tiles);
4. full resolution, one Gaussian per position of a 256-px tile shared by every tile of
   every image (``positions="tile", tile=256``; three tiles per image, 64 px overlap).

Every map is brought back to the image's own 256 x 512 pixels before the pixel metrics
(:func:`skpadim.features.restore_geometry`); where a model does not look (the paper
crop's border) its map holds a value below all its scores, so a defect there counts as
missed instead of dropping out of the metrics. That also makes every normal pixel there a
true negative at every threshold, which flatters the pixel metrics when few defects lie on
the border (here 0.3% of the defect pixels): the row "paper 256->224, border nearest"
extends the map's edge values over the border instead (same image scores).

The images. scikit-image's ``brick``, ``grass`` and ``gravel`` photos are 512 x 512, and
training and test must not share pixels, so training images come from the top half and
test images from the bottom half, as in :func:`skpadim.datasets.make_texture_defects`.
A half is 256 x 512: the largest native-resolution image it holds. To get many different
images of that size, each is a 256 x 512 window, at a random offset, of the half extended
by its mirror images in both directions (columns ``0..511`` then ``511..0``, rows
``0..255`` then ``255..0``, repeating): no pixel is resampled and the only artefacts,
mirror axes at random places, are as common in training as in test images. (Windows of
the half's own rows, all of them sharing the same rows, were tried first: every model
then flagged the rows where the test half differs from the training half, brick's mortar
lines, and image AUROCs were near chance.) So the resolution gap tested is 2x along the
width only; in images larger than the 256 x 256 the presets shrink to, it would be larger.

The defects are painted at full resolution by the package's own painter
(``skpadim.datasets._defects.paint_defect``, the demo's) on a 224 x 224 window at a
random place of the image, so they are the demo's defects: scratches drawn 1.2 to 2.5 px
wide, cracks 1.0 to 2.0 px with thinner branches, and, as a non-thin control, stains of
13 to 31 px semi-axis. Masks are exact (see ``paint_defect``) and include the
anti-aliased fringe, so they are about half a pixel wider; the output gives their
measured widths. Each
defect kind is evaluated on the normal test images plus the images with that kind:
image AUROC, pixel AUROC and PRO up to a false positive rate of 0.3. Each seed draws its
own windows, defects and channels; the table gives mean +- std over the seeds.

Threads: ``--threads`` (default 1). On a machine whose cores other jobs keep busy, two
torch threads made the fits about ten times slower than one (the moments' many small
float64 operations, each a parallel region waiting for a busy core); on an idle machine,
use 2.

Usage::

    python benchmarks/bench_highres_quality.py --quick     # 1 texture, 1 seed: < 1 min (CI)
    python benchmarks/bench_highres_quality.py --out benchmarks/bench_highres_quality_output.md
                                               # 13 to 21 minutes on 2 busy cores
"""

import argparse
import os
import platform
import sys
import time

import numpy as np

TEXTURES = ("brick", "grass", "gravel")
KINDS = ("scratch", "crack", "stain")
THIN = ("scratch", "crack")  # the stain is the non-thin control
#: Rows of the photo's half, and the width of an image (the half's full width).
HEIGHT, WIDTH = 256, 512
#: Side of the square window a defect is painted in. paint_defect scales widths and lengths
#: with it; at 224 px they are the demo's (``make_texture_defects(size=224)``).
DEFECT_WINDOW = 224
N_FEATURES = 100
MAX_FPR = 0.3
#: (label, make_padim keyword arguments besides the backbone, channels and seed)
MODELS = (
    ("paper 256->224", {"preset": "paper"}),
    ("full-view 256", {"preset": "full-view"}),
    ("full-res per-position", {"positions": "image", "resize": None, "crop": None}),
    ("full-res tile-shared 256", {"positions": "tile", "tile": 256}),
)
#: 60 training images: with 24 the per-position models (the paper's too) told even stains
#: poorly from normal images (brick, seed 0: image AUROC 0.61 paper, 0.77 per-position;
#: 0.90 and 0.99 with 60).
FULL = {"textures": TEXTURES, "seeds": (0, 1, 2), "n_train": 60, "n_normal": 12,
        "n_per_kind": 10}
QUICK = {"textures": ("grass",), "seeds": (0,), "n_train": 3, "n_normal": 2, "n_per_kind": 1}


# ------------------------------------------------------------------------------ data
def half_photo(texture, half):
    """The top or bottom half (256 x 512) of a scikit-image photo, as RGB uint8."""
    from skimage import data

    grey = np.asarray(getattr(data, texture)())
    rows = slice(0, HEIGHT) if half == "top" else slice(HEIGHT, 2 * HEIGHT)
    return np.repeat(grey[rows, :, None], 3, axis=2)


def windows(strip, n, rng):
    """``n`` windows of ``strip``'s size at random offsets of its mirror-periodic extension.

    The extension is the strip followed by its mirror image, in both directions and
    repeated: every window is made of the photo's own pixels, with at most one mirror axis
    across and one along it. Random rows matter: windows that all share the strip's rows
    would teach a per-position model where the texture's rows (brick's mortar) lie in
    the training half, and the test half's lie elsewhere.
    """
    period = np.concatenate([strip, strip[:, ::-1]], axis=1)
    period = np.concatenate([period, period[::-1]], axis=0)
    (h, w), (ph, pw) = strip.shape[:2], period.shape[:2]
    tops, lefts = rng.randint(0, ph, size=n), rng.randint(0, pw, size=n)
    return np.stack([period.take(np.arange(top, top + h), axis=0, mode="wrap")
                     .take(np.arange(left, left + w), axis=1, mode="wrap")
                     for top, left in zip(tops, lefts)])


def make_split(texture, seed, n_train, n_normal, n_per_kind):
    """Training images, test images, their masks and defect kinds ("good" when normal)."""
    from skpadim.datasets._defects import paint_defect  # the demo's painter (private)

    rng = np.random.RandomState([seed, TEXTURES.index(texture)])
    train = windows(half_photo(texture, "top"), n_train, rng)
    kinds = np.array(["good"] * n_normal + [k for k in KINDS for _ in range(n_per_kind)])
    test = windows(half_photo(texture, "bottom"), len(kinds), rng).astype(np.float32)
    masks = np.zeros(test.shape[:3], dtype=bool)
    for i in np.flatnonzero(kinds != "good"):
        top = rng.randint(0, HEIGHT - DEFECT_WINDOW + 1)
        left = rng.randint(0, WIDTH - DEFECT_WINDOW + 1)
        window = np.s_[top : top + DEFECT_WINDOW, left : left + DEFECT_WINDOW]
        # paint_defect paints its (square) view of the image in place.
        masks[i][window] = paint_defect(test[i][window], kinds[i], rng)
    return train, np.rint(test).astype(np.uint8), masks, kinds


def mask_width(mask):
    """Mean width of a defect in pixels: its area over the length of its skeleton."""
    from skimage.morphology import skeletonize

    return mask.sum() / max(int(skeletonize(mask).sum()), 1)


# ---------------------------------------------------------------------------- models
def build(options, seed):
    from skpadim import make_padim

    return make_padim("efficientnet_lite0", n_features=N_FEATURES, weights="DEFAULT",
                      random_state=seed, **options)


def full_size_maps(pipe, maps, border="lowest"):
    """``maps`` over the images' own pixels.

    Where a cropping model does not look, ``border="lowest"`` puts a value below all its
    scores (a defect there is missed, not dropped; a normal pixel there is a true negative
    at every threshold) and ``"nearest"`` extends the map's edge values outwards.
    """
    from skpadim.features import restore_geometry

    step = pipe[0]
    if tuple(maps.shape[1:]) == (HEIGHT, WIDTH) and step.resize is None and step.crop is None:
        return maps
    fill = float(maps.min()) - 1.0 if border == "lowest" else border
    return restore_geometry(maps, (HEIGHT, WIDTH), resize=step.resize, crop=step.crop,
                            fill=fill, interpolation="bilinear")


def unseen_share(pipe, masks):
    """Share of the defect pixels that lie where ``pipe`` does not look."""
    from skpadim.features import restore_geometry

    step = pipe[0]
    if step.crop is None:
        return 0.0
    probe = np.zeros((1, *((step.crop,) * 2 if np.isscalar(step.crop) else step.crop)))
    unseen = np.isnan(restore_geometry(probe, (HEIGHT, WIDTH), step.resize, step.crop))[0]
    return float(masks[:, unseen].sum() / max(masks.sum(), 1))


def evaluate(kinds, scores, maps, masks):
    """Per defect kind, against all normal test images: image AUROC, pixel AUROC, PRO."""
    from skpadim.evaluation import image_auroc, pixel_auroc, pro_score

    out = {}
    for kind in KINDS:
        keep = (kinds == "good") | (kinds == kind)
        out[kind] = (image_auroc(kinds[keep] == kind, scores[keep]),
                     pixel_auroc(masks[keep], maps[keep]),
                     pro_score(masks[keep], maps[keep], max_fpr=MAX_FPR))
    return out


def run_once(texture, seed, config):
    """Fit and score every model on one texture and seed; metrics, times and defect facts."""
    from skpadim import inspect_images

    train, test, masks, kinds = make_split(texture, seed, config["n_train"],
                                           config["n_normal"], config["n_per_kind"])
    facts = {kind: [mask_width(m) for m in masks[kinds == kind]] for kind in THIN}
    results, times, unseen = {}, {}, {}
    for label, options in MODELS:
        start = time.perf_counter()
        pipe = build(options, seed).fit(train)
        fitted = time.perf_counter()
        found = inspect_images(pipe, test)
        times[label] = (fitted - start, time.perf_counter() - fitted)
        results[label] = evaluate(kinds, found.anomaly_scores,
                                  full_size_maps(pipe, found.maps), masks)
        if pipe[0].crop is not None:
            # The lowest score flatters the pixel metrics when few defects lie on the
            # border: its normal pixels there are never false positives.
            results[f"{label}, border nearest"] = evaluate(
                kinds, found.anomaly_scores, full_size_maps(pipe, found.maps, "nearest"),
                masks)
        unseen[label] = unseen_share(pipe, masks)
        print(f"  {texture} seed {seed} {label}: fit {times[label][0]:.0f} s, inspect "
              f"{times[label][1]:.0f} s; " + "; ".join(
                  f"{k} " + "/".join(f"{v:.2f}" for v in results[label][k]) for k in KINDS),
              file=sys.stderr, flush=True)
        del pipe, found
    return results, times, facts, unseen


# ---------------------------------------------------------------------------- output
def _cell(values):
    values = np.asarray(values, dtype=float)
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{values.mean():.2f} ± {values.std(ddof=1):.2f}"


def tables(runs, config):
    """Markdown: the per texture table, and the means over textures."""
    labels = list(next(iter(runs.values()))[0])  # the models, and the paper's border variant
    names = ("image AUROC", "pixel AUROC", f"PRO (FPR ≤ {MAX_FPR})")
    lines = ["| texture | defect | model | " + " | ".join(names) + " |",
             "|---|---|---|" + "---:|" * len(names)]
    for texture in config["textures"]:
        for kind in KINDS:
            for label in labels:
                per_seed = [runs[texture, s][0][label][kind] for s in config["seeds"]]
                cells = [_cell([r[m] for r in per_seed]) for m in range(len(names))]
                lines.append(f"| {texture} | {kind} | {label} | " + " | ".join(cells) + " |")
    summary = ["| defect | model | " + " | ".join(names) + " |",
               "|---|---|" + "---:|" * len(names)]
    for kind in KINDS:
        for label in labels:
            # Mean over textures first, so the spread is that of the seeds.
            per_seed = [np.mean([runs[t, s][0][label][kind] for t in config["textures"]],
                                axis=0) for s in config["seeds"]]
            cells = [_cell([r[m] for r in per_seed]) for m in range(len(names))]
            summary.append(f"| {kind} | {label} | " + " | ".join(cells) + " |")
    return lines, summary


def facts_lines(runs, config):
    widths = {kind: [w for key in runs for w in runs[key][2][kind]] for kind in THIN}
    unseen = [runs[key][3][MODELS[0][0]] for key in runs]
    lines = [f"- {kind}: mask width {np.median(w):.1f} px (median of area / skeleton length; "
             f"{np.percentile(w, 10):.1f} to {np.percentile(w, 90):.1f} px, 10th to 90th "
             f"percentile of {len(w)} defects)" for kind, w in widths.items()]
    lines.append(f"- defect pixels outside the paper preset's crop: {np.mean(unseen):.1%} "
                 "(counted as missed)")
    return lines


def time_lines(runs, config):
    n_runs = len(runs)
    lines = ["| model | fit (s, mean per run) | inspect (s, mean per run) | total (s) |",
             "|---|---:|---:|---:|"]
    for label, _ in MODELS:
        fit = [runs[key][1][label][0] for key in runs]
        inspect = [runs[key][1][label][1] for key in runs]
        lines.append(f"| {label} | {np.mean(fit):.1f} | {np.mean(inspect):.1f} "
                     f"| {sum(fit) + sum(inspect):.0f} |")
    lines.append(f"\n{n_runs} runs (texture x seed), each fitting on {config['n_train']} "
                 f"and inspecting {config['n_normal'] + len(KINDS) * config['n_per_kind']} "
                 "images per model.")
    return lines


def config_lines(runs, config):
    n_test = config["n_normal"] + len(KINDS) * config["n_per_kind"]
    return [
        (f"- EfficientNet-Lite0 (ImageNet weights), {N_FEATURES} random channels, the "
         "seed's `random_state` for all four models; other settings the full-view preset's "
         "(bicubic, `reg_covar=0.01`, blur sigma 4)."),
        (f"- Textures {', '.join(config['textures'])}; seeds "
         f"{', '.join(map(str, config['seeds']))}."),
        (f"- Images {HEIGHT} x {WIDTH}, native pixels: windows, at random offsets, of the "
         "photo's half (train: top, test: bottom) extended by its mirror images in both "
         "directions."),
        (f"- Per texture and seed: {config['n_train']} training images; {n_test} test "
         f"images: {config['n_normal']} normal and {config['n_per_kind']} per defect kind, "
         f"one defect each, painted at full resolution in a {DEFECT_WINDOW} x "
         f"{DEFECT_WINDOW} window at a random place."),
        ("- Each kind is scored on the normal test images plus that kind's; maps of the "
         "resizing models are brought back to 256 x 512 (`restore_geometry`, bilinear), "
         "the paper crop's border below every score (so its defects are missed and its "
         "normal pixels never false positives); in the row *border nearest*, the map's "
         "edge values extended over the border instead."),
        *facts_lines(runs, config),
        "",
        "Models: " + "; ".join(f"**{label}**: `{options}`" for label, options in MODELS) + ".",
    ]


def report(runs, config, seconds, args):
    import torch

    table, summary = tables(runs, config)
    quick = " (--quick)" if args.quick else ""
    lines = [
        f"# Thin defects at full resolution vs the 224-px default{quick}",
        "",
        (f"{platform.machine()}, {os.cpu_count()} cores shared with other jobs, "
         f"{args.threads} torch thread(s), Python {platform.python_version()}, torch "
         f"{torch.__version__}, {time.strftime('%Y-%m-%d')}; whole run "
         f"{seconds / 60:.1f} min."),
        "",
        "## Configuration",
        "",
        *config_lines(runs, config),
        "",
        "## Means over the textures (mean ± std over seeds)",
        "",
        *summary,
        "",
        "## Per texture (mean ± std over seeds)",
        "",
        *table,
        "",
        "## Wall time per model",
        "",
        *time_lines(runs, config),
    ]
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="1 texture, 1 seed, a few images: checks that it runs (CI)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (default 1)")
    parser.add_argument("--out", help="also write the Markdown to this file")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(args.threads)
    config = QUICK if args.quick else FULL
    start = time.perf_counter()
    runs = {(texture, seed): run_once(texture, seed, config)
            for seed in config["seeds"] for texture in config["textures"]}
    text = report(runs, config, time.perf_counter() - start, args)
    print(text)
    if args.out:
        command = " ".join(["python benchmarks/bench_highres_quality.py",
                            *(argv if argv is not None else sys.argv[1:])])
        with open(args.out, "w") as f:
            f.write(f"<!-- Written by: {command}. -->\n\n{text}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
