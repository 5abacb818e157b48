"""ONNX export: onnxruntime on the CPU against skpadim's torch path, on the same model.

R18-Rd100 (random weights: speed does not depend on them), 224 x 224 images, no resize or
crop, both with 2 threads: ms per image of ``pipe.inspect`` (torch, batch norms folded)
and of the exported graph run by onnxruntime (:class:`skpadim.export.OnnxModel`), with the
torch time split into backbone and head (Mahalanobis distances, maps), their agreement, and
the sizes of the model files (ONNX float32, ONNX float16, ``skpadim.save``).

    python benchmarks/bench_onnx.py            # the full run (writes nothing by itself)
    python benchmarks/bench_onnx.py --quick    # a smaller run, well under a minute (CI)
"""

import argparse
import os
import sys
import tempfile
import time

import numpy as np
import torch

import skpadim
from skpadim import make_padim
from skpadim.export import OnnxModel, export_onnx
from skpadim._batches import _split, _transform

THREADS = 2


def _best_of(repeats, fn):
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def run(size, n_train, n_test, batch_size, repeats):
    torch.set_num_threads(THREADS)
    rng = np.random.RandomState(0)
    train = rng.randint(0, 256, (n_train, size, size, 3), dtype=np.uint8)
    test = rng.randint(0, 256, (n_test, size, size, 3), dtype=np.uint8)
    pipe = make_padim("R18-Rd100", weights=None, resize=None, crop=None, device="cpu",
                      batch_size=batch_size, random_state=0).fit(train)
    pipe[0].set_params(batch_size=batch_size)
    folder = tempfile.mkdtemp()
    files = {name: os.path.join(folder, name) for name in
             ("float32.onnx", "float16.onnx", "model.safetensors")}
    start = time.perf_counter()
    export_onnx(pipe, files["float32.onnx"])
    export_seconds = time.perf_counter() - start
    export_onnx(pipe, files["float16.onnx"], storage_dtype="float16")
    skpadim.save(pipe, files["model.safetensors"])

    session = OnnxModel(files["float32.onnx"], intra_op_num_threads=THREADS)
    expected = pipe.inspect(test)  # also warms both up
    got = session.inspect(test, batch_size=batch_size)
    error = float(np.abs(got.maps - expected.maps).max() / np.abs(expected.maps).max())
    same_labels = bool(np.array_equal(got.labels, expected.labels))

    transformers, final = _split(pipe)
    features = [_transform(transformers, test[s : s + batch_size])
                for s in range(0, n_test, batch_size)]
    t_torch = _best_of(repeats, lambda: pipe.inspect(test))
    t_backbone = _best_of(repeats, lambda: [_transform(transformers, test[s : s + batch_size])
                                            for s in range(0, n_test, batch_size)])
    t_head = _best_of(repeats, lambda: [final._maps_and_scores(f) for f in features])
    t_onnx = _best_of(repeats, lambda: session.inspect(test, batch_size=batch_size))
    half = OnnxModel(files["float16.onnx"], intra_op_num_threads=THREADS)
    half.inspect(test[:batch_size])
    t_half = _best_of(repeats, lambda: half.inspect(test, batch_size=batch_size))

    ms = 1000.0 / n_test
    lines = [
        f"R18-Rd100, random weights, {size} x {size} px, {n_train} training / {n_test} test "
        f"images, batches of {batch_size}, {THREADS} threads, best of {repeats}; torch "
        f"{torch.__version__}, onnxruntime {_ort_version()}",
        "",
        "| path | ms / image |",
        "|---|---|",
        f"| torch, pipe.inspect | {t_torch * ms:.1f} |",
        f"| - of which backbone (features of the kept channels) | {t_backbone * ms:.1f} |",
        f"| - of which head (distances, maps, scores) | {t_head * ms:.1f} |",
        f"| onnxruntime, float32 factors | {t_onnx * ms:.1f} |",
        f"| onnxruntime, float16 factors | {t_half * ms:.1f} |",
        "",
        f"onnxruntime speed-up over torch: {t_torch / t_onnx:.2f}x (float16 file: "
        f"{t_torch / t_half:.2f}x)",
        f"agreement: max |maps diff| / max map = {error:.2e}; same labels: {same_labels}",
        f"export time (float32): {export_seconds:.1f} s",
        "",
        "| file | MiB |",
        "|---|---|",
    ] + [f"| {name} | {os.path.getsize(path) / 2**20:.1f} |" for name, path in files.items()]
    return "\n".join(lines)


def _ort_version():
    import onnxruntime

    return onnxruntime.__version__


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="112 px, 8 test images: a smoke run for CI")
    args = parser.parse_args(argv)
    if args.quick:
        report = run(size=112, n_train=8, n_test=8, batch_size=8, repeats=1)
    else:
        report = run(size=224, n_train=32, n_test=64, batch_size=16, repeats=3)
    print(report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
