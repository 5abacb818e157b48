"""skpadim's PaDiM against the keep-every-embedding, explicit-inverse baseline, side by side.

Prints, measured in one run on this machine (each measurement in a fresh child process,
which reads its *own* peak memory, ``VmHWM`` in ``/proc/self/status``, after resetting it
through ``/proc/self/clear_refs``; ``ru_maxrss`` of a child would inherit the parent's):

(a) RSS increase of fitting (peak minus the RSS after imports) on N_small and N_large
    images: ``make_padim(...).fit(paths)`` (the quick start), ``fit_in_batches`` on a
    hand-made Pipeline, and the baseline (anomalib's recipe: every embedding kept,
    ``torch.linalg.inv``). Targets: ours large/small <= 1.10, and ours at N_small <= the
    baseline's.
(b) fit seconds per image at N_time images, default settings: ours <= the baseline.
(c) RSS increase of ``score_samples`` on 1000 vs 250 images at 64 px (arrays and paths):
    ratio <= 1.2.
(d) end to end, uint8 images in, maps and scores of the same images from one call
    (``pipe.inspect``) vs the baseline (embed, distances, maps, maximum): ours at least
    2x faster per image. Also the split of our inference into backbone and the rest, and
    the maps' agreement with the baseline's.
(e) size on disk of the fitted normality model, float32 and float16, with the scores
    compared after reloading, and the float16 option's pixel AUROC on a demo texture.

With ``--anomalib`` (and anomalib importable) the real ``PadimModel`` is measured in (a),
(b) and (d) too. Absolute numbers depend on the machine; the ratios are what the targets
are about.

Usage::

    python benchmarks/bench_padim.py              # R18-Rd100, 224 px, N = 64 / 512 / 256
    python benchmarks/bench_padim.py --quick      # small, for CI
    python benchmarks/bench_padim.py --anomalib   # also the real anomalib
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


# ---------------------------------------------------------------------------- memory
def _status(field):
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024  # kB -> MB
    raise RuntimeError(f"{field} not in /proc/self/status")


def reset_peak():
    """Make VmHWM forget the peak so far (Linux >= 4.0); returns the RSS it starts from."""
    Path("/proc/self/clear_refs").write_text("5")
    return _status("VmRSS")


def peak_mb():
    return _status("VmHWM")


# ---------------------------------------------------------------------------- data
def write_images(folder, n, size, seed=0):
    """n smooth random RGB PNGs; reading them from disk keeps the input out of the RSS."""
    import numpy as np
    from PIL import Image

    rng = np.random.RandomState(seed)
    paths = []
    for i in range(n):
        small = rng.randint(0, 256, (size // 8, size // 8, 3)).astype(np.uint8)
        img = Image.fromarray(small).resize((size, size), Image.BILINEAR)
        paths.append(str(folder / f"{i:04d}.png"))
        img.save(paths[-1])
    return paths


def _pipeline(args, weights, **overrides):
    from skpadim import make_padim

    settings = dict(n_features=args.n_features, weights=weights, preset="anomalib",
                    random_state=0, device="cpu", batch_size=args.batch_size)
    settings.update(overrides)
    return make_padim("resnet18", **settings)


def _plain_pipeline(args, weights):
    from sklearn.pipeline import Pipeline

    return Pipeline(list(_pipeline(args, weights).steps))


def _baseline(args, weights, indices):
    import torch

    sys.path.insert(0, str(HERE.parent / "tests"))  # the baseline lives with the tests
    from reference_padim import ReferencePadim

    return ReferencePadim(torch.load(weights, weights_only=True), indices, image_size=args.size)


def _uint8_batches(paths, batch_size):
    import numpy as np

    from skpadim.features import read_image

    for i in range(0, len(paths), batch_size):
        yield np.stack([read_image(p) for p in paths[i : i + batch_size]])


# ---------------------------------------------------------------------------- anomalib
def _anomalib_model(args, weights, indices):
    import torch
    from anomalib.models.image.padim.torch_model import PadimModel

    model = PadimModel(backbone="resnet18", layers=["layer1", "layer2", "layer3"],
                       pre_trained=False, n_features=args.n_features)
    state = torch.load(weights, weights_only=True)
    model.feature_extractor.feature_extractor.load_state_dict(state, strict=False)
    model.idx = torch.as_tensor(indices)
    return model


def _anomalib_input(images):
    import torch

    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def _anomalib_fit(model, batches):
    """As anomalib's Lightning module fits: a training forward per batch, then ``fit``."""
    import torch

    model.train()
    kept = []
    with torch.no_grad():
        for batch in batches:
            out = model(_anomalib_input(batch))
            if not hasattr(model, "memory_bank"):  # anomalib 1.x: the caller keeps them
                kept.append(out)
    if kept:
        model.gaussian.fit(torch.vstack(kept))
    else:  # anomalib 2.x: the model's memory bank holds every embedding
        model.fit()
    model.eval()
    return model


def _anomalib_infer(model, images):
    import torch

    with torch.no_grad():
        out = model(_anomalib_input(images))
    return out.anomaly_map, out.pred_score


# ---------------------------------------------------------------------------- children
def worker(args):
    """Runs in a child process: one measurement, printed as JSON on the last line."""
    import numpy as np
    import torch

    torch.set_num_threads(args.threads)
    import skpadim  # noqa: F401  (imports count in the post-import RSS)

    paths = json.loads(Path(args.paths_file).read_text())
    weights, indices = args.weights, np.load(args.indices)
    out = {}
    if args.task == "fit":
        paths = paths[: args.n]
        start_rss = reset_peak()
        start = time.perf_counter()
        if args.method == "quick-start":
            _pipeline(args, weights).fit(paths)
        elif args.method == "fit_in_batches":
            from skpadim import fit_in_batches

            fit_in_batches(_plain_pipeline(args, weights), paths, batch_size=args.batch_size)
        elif args.method == "baseline":
            _baseline(args, weights, indices).fit_batches(_uint8_batches(paths, args.batch_size))
        elif args.method == "anomalib":
            _anomalib_fit(_anomalib_model(args, weights, indices),
                          _uint8_batches(paths, args.batch_size))
        out = {"seconds": time.perf_counter() - start,
               "increase_mb": peak_mb() - start_rss, "n": len(paths)}
    elif args.task == "score":
        from skpadim.features import read_image

        pipe = _pipeline(args, weights, n_features=20).fit(paths[:16])
        test = paths[: args.n]
        if args.method == "arrays":
            test = np.stack([read_image(p) for p in test])
        start_rss = reset_peak()
        scores = pipe.score_samples(test)
        out = {"increase_mb": peak_mb() - start_rss, "n": len(scores)}
    print(json.dumps(out))


def child(args, task, method, n, files, size=None, **extra):
    cmd = [sys.executable, __file__, "--worker", "--task", task, "--method", method,
           "--n", str(n), "--paths-file", files["paths"], "--weights", files["weights"],
           "--indices", files["indices"], "--size", str(size or args.size),
           "--n-features", str(args.n_features), "--batch-size", str(args.batch_size),
           "--threads", str(args.threads)]
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{task}/{method} N={n} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------- in-process
def timed(fn, repeats):
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def end_to_end(args, pipe, baseline, images, anomalib_model=None):
    import numpy as np

    n = len(images)
    t_ours, ours = timed(lambda: pipe.inspect(images), args.repeats)

    def theirs_fn():
        maps = np.concatenate([baseline.anomaly_maps(images[i : i + args.batch_size])
                               for i in range(0, n, args.batch_size)])
        return maps, maps.max(axis=(1, 2))

    t_base, (theirs, theirs_scores) = timed(theirs_fn, args.repeats)
    t_backbone, features = timed(lambda: pipe[:-1].transform(images), args.repeats)
    t_rest, _ = timed(lambda: pipe[-1]._maps_and_scores(features), args.repeats)
    out = {"ours_ms": 1e3 * t_ours / n, "baseline_ms": 1e3 * t_base / n,
           "backbone_ms": 1e3 * t_backbone / n, "rest_ms": 1e3 * t_rest / n,
           "max_rel_map_diff": float(np.abs(ours.maps - theirs).max() / np.abs(theirs).max()),
           "scores_rank_equal": bool(np.array_equal(np.argsort(ours.anomaly_scores),
                                                    np.argsort(theirs_scores)))}
    if anomalib_model is not None:
        t_ano, _ = timed(lambda: [_anomalib_infer(anomalib_model, images[i : i + args.batch_size])
                                  for i in range(0, n, args.batch_size)], args.repeats)
        out["anomalib_ms"] = 1e3 * t_ano / n
    return out


def model_sizes(tmp, args, pipe, images, train_paths):
    import numpy as np
    import torch
    from sklearn.base import clone

    import skpadim

    save = getattr(skpadim, "save", None)
    load = getattr(skpadim, "load", None)
    if save is None:  # older skpadim: joblib
        import joblib

        save, load = joblib.dump, joblib.load
    ours_path, base_path = tmp / "ours.model", tmp / "baseline.pt"
    save(pipe[-1], ours_path)
    cov = torch.from_numpy(pipe[-1].covariances_)
    torch.save({"mean": torch.from_numpy(pipe[-1].mean_),
                "inv_covariance": torch.linalg.inv(cov).float()},
               base_path)
    features = pipe[:-1].transform(images)
    same = np.array_equal(load(ours_path).score_samples(features),
                          pipe[-1].score_samples(features))
    half = clone(pipe).set_params(patchgaussian__storage_dtype="float16").fit(train_paths)
    half_path = tmp / "ours_fp16.model"
    save(half[-1], half_path)
    return {"ours_mb": ours_path.stat().st_size / 2**20,
            "baseline_mb": base_path.stat().st_size / 2**20,
            "float16_mb": half_path.stat().st_size / 2**20,
            "scores_identical_after_reload": same}


def float16_quality(args):
    from skpadim import anomaly_maps, make_padim
    from skpadim.datasets import make_texture_defects
    from skpadim.evaluation import pixel_auroc

    data = make_texture_defects("brick", n_train=args.texture_n, n_test=args.texture_n,
                                size=128, random_state=0)
    out = {}
    for dtype in ("float32", "float16"):
        pipe = make_padim("efficientnet_lite0", resize=None, crop=None, storage_dtype=dtype,
                          random_state=0, device="cpu").fit(data.train_images)
        out[dtype] = pixel_auroc(data.test_masks, anomaly_maps(pipe, data.test_images))
    return out


# ---------------------------------------------------------------------------- report
def verdict(ok):
    return "met" if ok else "MISSED"


def report(args, rss, fit_time, score_rss, e2e, sizes, quality):
    n1, n2 = args.n_small, args.n_large
    lines = [f"# bench_padim: R18-Rd{args.n_features}, {args.size}x{args.size} images, "
             f"{args.threads} threads, batch {args.batch_size}\n",
             "## (a) fit: RSS increase above the post-import RSS (MB, each child's own VmHWM)\n",
             f"| method | N={n1} | N={n2} | ratio N={n2}/N={n1} |", "|---|---|---|---|"]
    for m, (a, b) in rss.items():
        lines.append(f"| {m} | {a:.0f} | {b:.0f} | {b / a:.2f} |")
    ok_ratio = all(rss[m][1] / rss[m][0] <= 1.10 for m in ("quick-start", "fit_in_batches"))
    ok_floor = all(rss[m][0] <= rss["baseline"][0] for m in ("quick-start", "fit_in_batches"))
    lines += ["", f"target: ours ratio <= 1.10 -> {verdict(ok_ratio)}; ours at N={n1} <= "
                  f"baseline -> {verdict(ok_floor)}",
              f"\n## (b) fit seconds per image, N={args.n_time}, default settings\n",
              "| method | s/image | vs baseline |", "|---|---|---|"]
    base = fit_time["baseline"]
    for m, t in fit_time.items():
        lines.append(f"| {m} | {t:.4f} | {t / base:.2f}x |")
    lines += ["", f"target: quick start <= baseline -> {verdict(fit_time['quick-start'] <= base)}"
              + ("; <= anomalib -> " + verdict(fit_time["quick-start"] <= fit_time["anomalib"])
                 if "anomalib" in fit_time else ""),
              "\n## (c) score_samples: RSS increase (MB), 64 px images\n",
              f"| input | {args.n_score_small} images | {args.n_score_large} images | ratio |",
              "|---|---|---|---|"]
    ok_score = True
    for m, (a, b) in score_rss.items():
        lines.append(f"| {m} | {a:.1f} | {b:.1f} | {b / max(a, 1e-9):.2f} |")
        ok_score &= b / max(a, 1e-9) <= 1.2
    lines += ["", f"target: ratio <= 1.2 -> {verdict(ok_score)}",
              "\n## (d) end to end: uint8 images in, maps and scores out (ms/image)\n",
              "| method | ms/image | speed-up of ours |", "|---|---|---|",
              f"| ours, `pipe.inspect` (one pass) | {e2e['ours_ms']:.1f} | 1.00x |",
              f"| baseline (explicit inverse) | {e2e['baseline_ms']:.1f} | "
              f"{e2e['baseline_ms'] / e2e['ours_ms']:.2f}x |"]
    if "anomalib_ms" in e2e:
        lines.append(f"| anomalib PadimModel | {e2e['anomalib_ms']:.1f} | "
                     f"{e2e['anomalib_ms'] / e2e['ours_ms']:.2f}x |")
    lines += ["", f"ours split: backbone + selection {e2e['backbone_ms']:.1f} ms, rest "
                  f"(distances, maps, scores) {e2e['rest_ms']:.2f} ms "
                  f"({100 * e2e['rest_ms'] / e2e['backbone_ms']:.1f}% of the backbone)",
              f"max relative difference of the maps, ours vs baseline: "
              f"{e2e['max_rel_map_diff']:.1e}; same ranking of image scores: "
              f"{e2e['scores_rank_equal']}",
              f"target: >= 2x -> {verdict(e2e['baseline_ms'] >= 2 * e2e['ours_ms'])}",
              "\n## (e) fitted normality model on disk (MB)\n",
              "| model | MB | vs baseline |", "|---|---|---|",
              f"| baseline: mean + float32 inverse covariances | {sizes['baseline_mb']:.1f} | "
              "1.00x |",
              f"| ours, float32 | {sizes['ours_mb']:.1f} | "
              f"{sizes['ours_mb'] / sizes['baseline_mb']:.2f}x |",
              f"| ours, float16 | {sizes['float16_mb']:.1f} | "
              f"{sizes['float16_mb'] / sizes['baseline_mb']:.2f}x |",
              "", f"scores identical after reload: {sizes['scores_identical_after_reload']}",
              f"\nfloat16 storage, pixel AUROC on the brick demo texture (Lite0): "
              f"float32 {quality['float32']:.4f}, float16 {quality['float16']:.4f} "
              f"(difference {quality['float16'] - quality['float32']:+.4f})"]
    print("\n".join(lines))
    return ok_ratio and ok_floor and ok_score


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, for CI")
    parser.add_argument("--anomalib", action="store_true",
                        help="also measure anomalib's PadimModel (needs anomalib installed)")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--task", default="fit", help=argparse.SUPPRESS)
    parser.add_argument("--method", default="quick-start", help=argparse.SUPPRESS)
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
    parser.add_argument("--n-time", type=int, default=256)
    parser.add_argument("--n-score-small", type=int, default=250)
    parser.add_argument("--n-score-large", type=int, default=1000)
    parser.add_argument("--texture-n", type=int, default=40)
    args = parser.parse_args(argv)
    if args.worker:
        return worker(args)
    if args.quick:
        (args.size, args.n_small, args.n_large, args.n_time, args.repeats, args.texture_n,
         args.n_score_small, args.n_score_large) = 96, 16, 64, 32, 1, 12, 40, 160

    import numpy as np
    import torch

    from skpadim.features import read_image

    torch.set_num_threads(args.threads)
    methods = ["quick-start", "fit_in_batches", "baseline"]
    if args.anomalib:
        try:
            import anomalib  # noqa: F401
        except ImportError:
            print("anomalib is not importable: measuring the imitation baseline only")
        else:
            methods.append("anomalib")

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        n_paths = max(args.n_large, args.n_time)
        paths = write_images(tmp, n_paths, args.size)
        small = tmp / "small"
        small.mkdir()
        score_paths = write_images(small, args.n_score_large, 64, seed=1)
        weights = tmp / "resnet18.pth"
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            import torchvision

            torch.save(torchvision.models.resnet18().state_dict(), weights)
        pipe = _pipeline(args, str(weights)).fit(paths[: args.n_small])
        indices = pipe[1].feature_indices_
        np.save(tmp / "indices.npy", indices)
        files = {"paths": str(tmp / "paths.json"), "weights": str(weights),
                 "indices": str(tmp / "indices.npy")}
        Path(files["paths"]).write_text(json.dumps(paths))

        rss, fit_time = {}, {}
        for m in methods:
            rss[m] = [child(args, "fit", m, n, files)["increase_mb"]
                      for n in (args.n_small, args.n_large)]
            result = child(args, "fit", m, args.n_time, files)
            fit_time[m] = result["seconds"] / result["n"]
        files_small = dict(files, paths=str(tmp / "score_paths.json"))
        Path(files_small["paths"]).write_text(json.dumps(score_paths))
        score_rss = {m: [child(args, "score", m, n, files_small, size=64)["increase_mb"]
                         for n in (args.n_score_small, args.n_score_large)]
                     for m in ("arrays", "paths")}

        baseline = _baseline(args, str(weights), indices)
        baseline.fit(np.stack([read_image(p) for p in paths[: args.n_small]]))
        test = np.stack([read_image(p) for p in paths[-64:]])
        anomalib_model = None
        if "anomalib" in methods:
            anomalib_model = _anomalib_fit(_anomalib_model(args, str(weights), indices),
                                           _uint8_batches(paths[: args.n_small], args.batch_size))
        e2e = end_to_end(args, pipe, baseline, test, anomalib_model)
        sizes = model_sizes(tmp, args, pipe, test, paths[: args.n_small])
    quality = float16_quality(args)
    report(args, rss, fit_time, score_rss, e2e, sizes, quality)
    return 0


if __name__ == "__main__":
    sys.exit(main())
