"""Checks that need a CUDA machine: GPU results match the CPU's, and models fitted on a GPU
load and score on a CPU-only machine.

Usage (on a machine with a GPU)::

    python benchmarks/gpu_check.py [--out DIR]

Prints one line per check and a JSON summary; exits non-zero if a check fails. CI has no GPU
and does not run it.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import joblib
import numpy as np
import torch

from skpadim import anomaly_maps, make_padim

LOAD_ON_CPU = """
import sys, json, joblib, numpy as np, torch
assert not torch.cuda.is_available(), "this check must run without CUDA"
model = joblib.load(sys.argv[1])
images = np.load(sys.argv[2])
np.save(sys.argv[3], model.score_samples(images))
"""


def images(n, size, seed):
    rng = np.random.RandomState(seed)
    small = rng.randint(0, 256, (n, size // 8, size // 8, 3)).astype(np.float32)
    big = small.repeat(8, axis=1).repeat(8, axis=2) + rng.normal(0, 10, (n, size, size, 3))
    return np.clip(big, 0, 255).astype(np.uint8)


def score_without_cuda(model_path, images_path, tmp):
    out = tmp / "cpu_scores.npy"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([sys.executable, "-c", LOAD_ON_CPU, str(model_path), str(images_path),
                    str(out)], check=True, env=env)
    return np.load(out)


def rel(a, b):
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-12))


def check_padim(tmp, train, test, results):
    kwargs = dict(n_features=100, weights=None, resize=None, crop=None, random_state=0)
    gpu = make_padim("resnet18", device="cuda", **kwargs).fit(train)
    cpu = make_padim("resnet18", device="cpu", **kwargs).fit(train)
    s_gpu, s_cpu = gpu.score_samples(test), cpu.score_samples(test)
    results["padim_gpu_vs_cpu_rel_diff"] = rel(s_gpu, s_cpu)
    path = tmp / "padim.joblib"
    joblib.dump(gpu, path)
    s_loaded = score_without_cuda(path, tmp / "test.npy", tmp)
    results["padim_gpu_model_on_cpu_rel_diff_vs_cpu_fit"] = rel(s_loaded, s_cpu)
    torch.cuda.synchronize()
    start = time.perf_counter()
    features = gpu[:-1].transform(test)
    torch.cuda.synchronize()
    backbone = time.perf_counter() - start
    start = time.perf_counter()
    gpu[-1].anomaly_maps(features)
    rest = time.perf_counter() - start
    results["padim_gpu_ms_per_image_backbone"] = 1e3 * backbone / len(test)
    results["padim_ms_per_image_rest"] = 1e3 * rest / len(test)
    results["padim_maps_shape"] = list(anomaly_maps(gpu, test[:2]).shape)


def check_vae(tmp, train, test, results):
    from skpadim.detectors import VAE

    vae = VAE(weights=None, resize=72, random_crop=68, crop=64, n_epochs=2, n_augmented=64,
              batch_size=16, random_state=0, device="cuda").fit(train)
    s_gpu = vae.score_samples(test)
    path = tmp / "vae.joblib"
    joblib.dump(vae, path)
    s_loaded = score_without_cuda(path, tmp / "test.npy", tmp)
    results["vae_gpu_model_on_cpu_rel_diff"] = rel(s_loaded, s_gpu)
    results["vae_loss_curve"] = [float(v) for v in vae.loss_curve_]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="folder for the JSON summary")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 2
    results = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__}
    train, test = images(32, 128, 0), images(16, 128, 1)
    failures = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        np.save(tmp / "test.npy", test)
        for name, check in (("padim", check_padim), ("vae", check_vae)):
            try:
                check(tmp, train, test, results)
                print(f"{name}: ok", flush=True)
            except Exception as exc:  # report every check, even after a failure
                failures.append(f"{name}: {type(exc).__name__}: {exc}")
                print(failures[-1], flush=True)
    # TF32 convolutions on the GPU differ from the CPU's float32 in the third digit.
    if results.get("padim_gpu_vs_cpu_rel_diff", 1) > 5e-3:
        failures.append("padim: GPU and CPU scores differ by more than 0.5%")
    if results.get("padim_gpu_model_on_cpu_rel_diff_vs_cpu_fit", 1) > 5e-3:
        failures.append("padim: a GPU-fitted model scores differently on the CPU")
    if results.get("vae_gpu_model_on_cpu_rel_diff", 1) > 5e-3:
        failures.append("vae: a GPU-trained model scores differently on the CPU")
    results["failures"] = failures
    text = json.dumps(results, indent=2)
    print(text)
    if args.out:
        Path(args.out).mkdir(parents=True, exist_ok=True)
        (Path(args.out) / "gpu_check.json").write_text(text)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
