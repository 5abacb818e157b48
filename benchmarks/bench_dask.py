"""PaDiM fitted on a two-worker Dask cluster against one process with two threads.

On the same machine and the same images (R18-Rd100 with random weights, read from a local
state-dict file as offline ImageNet weights would be; 224x224 images, no resize or crop),
prints:

(a) fitting throughput, in images/s, of ``skpadim.fit_in_batches`` in this process with
    ``torch.set_num_threads(2)``, and of :func:`skpadim.dask.fit` on a ``LocalCluster`` of 2
    workers x 1 thread, and their ratio;
(b) peak memory (``VmHWM`` of ``/proc/self/status``) of the local process and of each worker;
(c) how far the two models are apart: float64 means and covariances (relative), float32
    factors, offset_ and scores;
(d) bytes that cross the network: the pipeline sent once to each worker and one
    PatchMoments per partition.

The cluster's start-up and the workers' first import of torch are not timed. Absolute times
depend on the machine; on 2 cores the ratio says what the scheduling overhead costs.

Usage::

    python benchmarks/bench_dask.py               # 256 images (over 5 minutes on 2 cores)
    python benchmarks/bench_dask.py --images 128  # what bench_dask_output.md holds
    python benchmarks/bench_dask.py --quick    # 16 images, for CI (< 90 s)
"""

import argparse
import os
import pickle
import platform
import sys
import tempfile
import time

import numpy as np
import torch


def vm_hwm_mb():
    """Peak resident memory of this process, in MB (Linux; NaN elsewhere)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def textures(n, size, seed=0):
    """``n`` smooth random RGB textures of ``size`` x ``size``, uint8."""
    gen = np.random.RandomState(seed)
    coarse = gen.randint(0, 256, (n, size // 8, size // 8, 3)).astype(np.float32)
    images = coarse.repeat(8, axis=1).repeat(8, axis=2)
    images += gen.normal(0, 12, images.shape).astype(np.float32)
    return np.clip(images, 0, 255).astype(np.uint8)


def padim(weights):
    from skpadim import make_padim

    return make_padim("R18-Rd100", weights=weights, resize=None, crop=None, random_state=0)


def moments_bytes(moments):
    return sum(t.nbytes for t in moments if torch.is_tensor(t))


def warm_up():
    import skpadim  # noqa: F401  (imports torch and torchvision once, before timing)

    return os.getpid()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small run for CI (< 90 s)")
    parser.add_argument("--images", type=int, default=256, help="images in the full run")
    args = parser.parse_args(argv)
    n_images, size = (16, 224) if args.quick else (args.images, 224)

    import torchvision
    from distributed import Client, LocalCluster

    import dask.array as da
    import skpadim
    import skpadim.dask

    folder = tempfile.mkdtemp()
    weights = os.path.join(folder, "resnet18.pth")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    images = textures(n_images, size)

    torch.set_num_threads(2)
    start = time.perf_counter()
    local = skpadim.fit_in_batches(padim(weights), images, batch_size=32)
    local_s = time.perf_counter() - start
    local_mb = vm_hwm_mb()

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=None) as cluster, Client(cluster) as client:
        client.run(warm_up)
        partition = n_images // 4  # two partitions per worker
        X = da.from_array(images, chunks=(partition, size, size, 3))
        start = time.perf_counter()
        remote = skpadim.dask.fit(padim(weights), X, client, batch_size=32)
        dask_s = time.perf_counter() - start
        worker_mb = sorted(client.run(vm_hwm_mb).values())

    g, w = remote[-1], local[-1]
    mean_err = float(((g._moments.mean - w._moments.mean).abs().max()
                      / w._moments.mean.abs().max()))
    cov_g, cov_w = g._moments.covariance(), w._moments.covariance()
    cov_err = float((cov_g - cov_w).abs().max() / cov_w.abs().max())
    chol_err = float(np.abs(g.precisions_cholesky_ - w.precisions_cholesky_).max()
                     / np.abs(w.precisions_cholesky_).max())
    test = images[:8]
    score_err = float(np.max(np.abs(remote.score_samples(test) - local.score_samples(test))
                             / np.abs(local.score_samples(test))))
    offset_err = abs(g.offset_ - w.offset_) / abs(w.offset_)
    same_sample = np.array_equal(g.calibration_samples_, w.calibration_samples_)
    pipeline_mb = len(pickle.dumps(padim(weights).fit(images[:2]))) / 1e6

    print(f"# skpadim.dask.fit vs fit_in_batches{' (--quick)' if args.quick else ''}")
    print()
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"Python {sys.version.split()[0]}, torch {torch.__version__}")
    print(f"R18-Rd100, random weights from a state-dict file, {n_images} images of "
          f"{size}x{size}, grid {g.grid_shape_}, {g.n_features_in_} features; "
          f"batch_size=32; dask: {n_images // partition} partitions of {partition} images")
    print()
    print("| run | time (s) | images/s | peak memory (MB, VmHWM) |")
    print("|---|---|---|---|")
    print(f"| fit_in_batches, 1 process x 2 threads | {local_s:.1f} | {n_images / local_s:.1f} "
          f"| {local_mb:.0f} (this process, images included) |")
    print(f"| skpadim.dask.fit, 2 workers x 1 thread | {dask_s:.1f} | {n_images / dask_s:.1f} "
          f"| {' / '.join(f'{m:.0f}' for m in worker_mb)} (per worker) |")
    print()
    print(f"throughput ratio (dask / local): {local_s / dask_s:.2f}")
    print()
    print("Models (relative differences, dask vs local):")
    print(f"- float64 means {mean_err:.1e}, covariances {cov_err:.1e} (tolerance 1e-10)")
    print(f"- float32 factors {chol_err:.1e}, scores {score_err:.1e}, offset_ {offset_err:.1e}")
    print(f"- same calibration samples ({len(w.calibration_samples_)}): {same_sample}")
    print()
    print(f"Network: the fitted pipeline, {pipeline_mb:.1f} MB, once per worker; one "
          f"PatchMoments per partition, {moments_bytes(g._moments) / 1e6:.1f} MB whatever its "
          "number of images; no feature map.")
    ok = mean_err <= 1e-10 and cov_err <= 1e-10 and same_sample
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
