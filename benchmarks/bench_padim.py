"""skpadim's PaDiM against the keep-every-embedding, explicit-inverse baseline, side by side.

Prints, measured in one run on this machine:

(a) peak RSS of fitting on N_small and N_large images (each fit in a fresh process), ours
    (``fit_in_batches``: streamed float64 moments) vs the baseline (anomalib's recipe: all
    embeddings kept, ``torch.linalg.inv``). Target: ours large/small <= 1.2.
(b) per-image inference time split into backbone and the rest (distances, maps, scores), ours
    vs the baseline's explicit-inverse scoring on the same features. Target: rest <= 10% of
    the backbone.
(c) size on disk of the fitted normality model (ours: packed Cholesky factors of the
    precisions; baseline: mean + float32 inverse covariances), with the scores compared.
    Target: <= 0.55x at unchanged scores. Plus the float16 storage option: its size and its
    effect on pixel AUROC on the demo textures with Lite0 features.

Absolute numbers depend on the machine; the ratios are what the targets are about.

Usage::

    python benchmarks/bench_padim.py            # R18-Rd100, 224 px, N = 64 and 512
    python benchmarks/bench_padim.py --quick    # small, for CI
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import torch
from sklearn.base import clone

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the baseline lives with the tests

from reference_padim import ReferencePadim  # noqa: E402

from skpadim import anomaly_maps, fit_in_batches, make_padim  # noqa: E402
from skpadim.preprocessing import read_image  # noqa: E402


def write_images(folder, n, size, seed=0):
    """n smooth random RGB PNGs; reading them from disk keeps the input out of the RSS."""
    from PIL import Image

    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        small = rng.randint(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        paths.append(str(folder / f"{i:04d}.png"))
        img.save(paths[-1])
    return paths


def _pipeline(args, weights):
    return make_padim("resnet18", n_features=args.n_features, weights=weights,
                      resize=args.size, crop=None, interpolation="bilinear", mode="mirror",
                      reg_covar=0.01001, random_state=0, device="cpu",
                      batch_size=args.batch_size)


def _baseline(args, weights, indices):
    return ReferencePadim(torch.load(weights, weights_only=True), indices, image_size=args.size)


def fit_worker(args):
    """Runs in a child process: fit one model, print its peak RSS."""
    import resource

    torch.set_num_threads(args.threads)
    paths = json.loads(Path(args.paths_file).read_text())[: args.n]
    if args.method == "ours":
        fit_in_batches(_pipeline(args, args.weights), paths, batch_size=args.batch_size)
    else:
        indices = np.load(args.indices)
        batches = (np.stack([read_image(p) for p in paths[i : i + args.batch_size]])
                   for i in range(0, len(paths), args.batch_size))
        _baseline(args, args.weights, indices).fit_batches(batches)
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_rss(args, method, n, paths_file, weights, indices_file):
    cmd = [sys.executable, __file__, "--worker", "--method", method, "--n", str(n),
           "--paths-file", paths_file, "--weights", weights, "--indices", indices_file,
           "--size", str(args.size), "--n-features", str(args.n_features),
           "--batch-size", str(args.batch_size), "--threads", str(args.threads)]
    out = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_rss_mb"]


def timed(fn, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def inference_split(args, pipe, baseline, images):
    n = len(images)
    t_backbone, features = timed(lambda: pipe[:-1].transform(images), args.repeats)
    t_ours, ours = timed(lambda: pipe[-1].anomaly_maps(features), args.repeats)
    embeddings = torch.from_numpy(features)
    t_base, theirs = timed(
        lambda: baseline.maps_from_distances(baseline.distances_from_embeddings(embeddings)),
        args.repeats)
    return {"backbone_ms": 1e3 * t_backbone / n, "ours_rest_ms": 1e3 * t_ours / n,
            "baseline_rest_ms": 1e3 * t_base / n,
            "max_rel_map_diff": float(np.abs(ours - theirs).max() / np.abs(theirs).max())}


def model_sizes(tmp, args, pipe, baseline, images, train_paths):
    ours_path, base_path = tmp / "ours.joblib", tmp / "baseline.pt"
    joblib.dump(pipe[-1], ours_path)
    torch.save({"mean": baseline.mean, "inv_covariance": baseline.inv_covariance}, base_path)
    reloaded = joblib.load(ours_path)
    features = pipe[:-1].transform(images)
    same = np.array_equal(reloaded.score_samples(features), pipe[-1].score_samples(features))
    half = clone(pipe).set_params(patchgaussian__storage_dtype="float16")
    fit_in_batches(half, train_paths, batch_size=args.batch_size)
    half_path = tmp / "ours_fp16.joblib"
    joblib.dump(half[-1], half_path)
    return {"ours_mb": ours_path.stat().st_size / 2**20,
            "baseline_mb": base_path.stat().st_size / 2**20,
            "float16_mb": half_path.stat().st_size / 2**20,
            "scores_identical_after_reload": same}


def float16_quality(args):
    from skpadim.datasets import make_texture_defects
    from skpadim.metrics import pixel_auroc

    data = make_texture_defects("brick", n_train=args.texture_n, n_test=args.texture_n,
                                size=128, random_state=0)
    out = {}
    for dtype in ("float32", "float16"):
        pipe = make_padim("efficientnet_lite0", resize=None, crop=None, storage_dtype=dtype,
                          random_state=0, device="cpu").fit(data.train_images)
        out[dtype] = pixel_auroc(data.test_masks, anomaly_maps(pipe, data.test_images))
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="ours", help=argparse.SUPPRESS)
    parser.add_argument("--n", type=int, default=0, help=argparse.SUPPRESS)
    parser.add_argument("--paths-file", help=argparse.SUPPRESS)
    parser.add_argument("--weights", help=argparse.SUPPRESS)
    parser.add_argument("--indices", help=argparse.SUPPRESS)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--n-features", type=int, default=100)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--n-small", type=int, default=64)
    parser.add_argument("--n-large", type=int, default=512)
    parser.add_argument("--texture-n", type=int, default=40)
    args = parser.parse_args(argv)
    if args.worker:
        return fit_worker(args)
    if args.quick:
        args.size, args.n_small, args.n_large, args.repeats, args.texture_n = 96, 16, 64, 1, 12
    torch.set_num_threads(args.threads)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        paths = write_images(tmp, args.n_large, args.size)
        paths_file = tmp / "paths.json"
        paths_file.write_text(json.dumps(paths))
        weights = tmp / "resnet18.pth"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            import torchvision

            torch.save(torchvision.models.resnet18().state_dict(), weights)
        pipe = _pipeline(args, str(weights))
        fit_in_batches(pipe, paths[: args.n_small], batch_size=args.batch_size)
        indices = pipe[1].feature_indices_
        np.save(tmp / "indices.npy", indices)

        rss = {m: [peak_rss(args, m, n, str(paths_file), str(weights), str(tmp / "indices.npy"))
                   for n in (args.n_small, args.n_large)] for m in ("ours", "baseline")}

        baseline = _baseline(args, weights, indices)
        baseline.fit(np.stack([read_image(p) for p in paths[: args.n_small]]))
        test = np.stack([read_image(p) for p in paths[-32:]])
        timing = inference_split(args, pipe, baseline, test)
        sizes = model_sizes(tmp, args, pipe, baseline, test, paths[: args.n_small])
    quality = float16_quality(args)

    n1, n2 = args.n_small, args.n_large
    print(f"# bench_padim: R18-Rd{args.n_features}, {args.size}x{args.size} images, "
          f"{args.threads} threads, torch {torch.__version__}\n")
    print("## (a) peak RSS of fit (MB)\n")
    print(f"| method | N={n1} | N={n2} | ratio N={n2}/N={n1} |\n|---|---|---|---|")
    for m in ("ours", "baseline"):
        print(f"| {m} | {rss[m][0]:.0f} | {rss[m][1]:.0f} | {rss[m][1] / rss[m][0]:.2f} |")
    print(f"\ntarget: ours <= 1.2 -> {'met' if rss['ours'][1] / rss['ours'][0] <= 1.2 else 'MISSED'}")
    print("\n## (b) inference time per image (ms, batches of 32)\n")
    print("| part | ms/image | share of backbone |\n|---|---|---|")
    b = timing["backbone_ms"]
    print(f"| backbone + selection | {b:.2f} | 100% |")
    print(f"| rest, ours (Cholesky factors) | {timing['ours_rest_ms']:.2f} | "
          f"{100 * timing['ours_rest_ms'] / b:.1f}% |")
    print(f"| rest, baseline (explicit inverse) | {timing['baseline_rest_ms']:.2f} | "
          f"{100 * timing['baseline_rest_ms'] / b:.1f}% |")
    print(f"\nmax relative difference of the maps, ours vs baseline: "
          f"{timing['max_rel_map_diff']:.1e}")
    print(f"target: rest <= 10% -> {'met' if timing['ours_rest_ms'] <= 0.1 * b else 'MISSED'}")
    print("\n## (c) fitted normality model on disk (MB)\n")
    print("| model | MB | vs baseline |\n|---|---|---|")
    print(f"| baseline: mean + float32 inverse covariances | {sizes['baseline_mb']:.1f} | 1.00x |")
    print(f"| ours, float32 | {sizes['ours_mb']:.1f} | "
          f"{sizes['ours_mb'] / sizes['baseline_mb']:.2f}x |")
    print(f"| ours, float16 | {sizes['float16_mb']:.1f} | "
          f"{sizes['float16_mb'] / sizes['baseline_mb']:.2f}x |")
    print(f"\nscores identical after reload: {sizes['scores_identical_after_reload']}; "
          f"target <= 0.55x -> "
          f"{'met' if sizes['ours_mb'] <= 0.55 * sizes['baseline_mb'] else 'MISSED'}")
    print(f"\nfloat16 storage, pixel AUROC on the brick demo texture (Lite0): "
          f"float32 {quality['float32']:.4f}, float16 {quality['float16']:.4f} "
          f"(difference {quality['float16'] - quality['float32']:+.4f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
