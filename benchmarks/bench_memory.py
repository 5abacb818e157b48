"""skpadim.estimate_memory against the measured peak memory of PaDiM fits.

Each configuration is fitted in a child process of its own, so that one fit's memory does
not hide in the next one's: the child imports skpadim, builds the pipeline and the images
(random uint8, as many as the row's "fitted on"), takes its resident memory as the
baseline, resets the kernel's peak counter (``/proc/self/clear_refs``; where that is
refused, the peak so far is the baseline), fits, and reads its peak resident memory
(``VmHWM`` of ``/proc/self/status``). The model is then saved with ``skpadim.save``, and
the bytes of its tensors are compared with the estimated ``model_size``. The estimates are
computed in this process, before any child runs, from the settings and the image size
alone.

Configuration: ``make_padim("resnet18", n_features=100, weights=None, resize=None,
crop=None, random_state=0)``, the CPU, unless a row says otherwise. Prints a Markdown
table; ratio = estimated / measured.

Usage::

    python benchmarks/bench_memory.py                  # 7 fits, 10 to 20 minutes, 6 GB
    python benchmarks/bench_memory.py --quick          # 2 small fits, for CI (< 1 minute)
    python benchmarks/bench_memory.py --out benchmarks/bench_memory_output.md
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import torch
from _peak import reset_peak, status  # benchmarks/_peak.py: the child's own VmHWM

N_IMAGES = 16
#: (label, height, width, make_padim keyword arguments besides the defaults above, images)
FULL = [
    ("224x224", 224, 224, {}, N_IMAGES),
    ("448x448", 448, 448, {}, N_IMAGES),
    ("640x640", 640, 640, {}, N_IMAGES),
    ("320x960", 320, 960, {}, N_IMAGES),
    ("640x640, 30 features", 640, 640, {"n_features": 30}, N_IMAGES),
    ("448x448, Lite0", 448, 448, {"backbone": "efficientnet_lite0"}, N_IMAGES),
    # Native high resolution, what the estimate is for: the backbone on 512 px tiles, the
    # Gaussians on the whole image's grid (6 GB; 2048 x 2048 would need 23 GB).
    ("1024x1024, tile 512", 1024, 1024, {"tile": 512}, 4),
]
QUICK = [  # below 224 x 224 the allocator's noise is a larger part of the peak
    ("224x224", 224, 224, {}, N_IMAGES),
    ("320x320", 320, 320, {}, N_IMAGES),
]
#: Tolerance the estimate is tuned to, on every row.
TOLERANCE = 0.15


def pipeline(options):
    from skpadim import make_padim

    settings = dict(backbone="resnet18", n_features=100, weights=None, resize=None,
                    crop=None, random_state=0)
    settings.update(options)
    return make_padim(settings.pop("backbone"), **settings)


def child(height, width, options, n_images):
    """Fit one configuration; print its measured peak and model bytes as JSON."""
    import numpy as np

    import skpadim

    pipe = pipeline(options)
    images = np.random.RandomState(0).randint(0, 256, (n_images, height, width, 3),
                                              dtype=np.uint8)
    baseline = reset_peak()
    start = time.perf_counter()
    pipe.fit(images)
    seconds = time.perf_counter() - start
    peak = status("VmHWM") - baseline
    with tempfile.TemporaryDirectory() as folder:
        path = skpadim.save(pipe, os.path.join(folder, "model.safetensors"))
        file_bytes = os.path.getsize(path)
        from safetensors import safe_open

        with safe_open(path, "pt") as f:
            tensor_bytes = sum(f.get_tensor(k).nbytes for k in f.keys())
    print(json.dumps({"peak": peak, "tensor_bytes": tensor_bytes, "file_bytes": file_bytes,
                      "seconds": seconds}))


def measure(height, width, options, n_images):
    command = [sys.executable, __file__, "--child",
               json.dumps([height, width, options, n_images])]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode:
        raise RuntimeError(f"child {height}x{width} {options} failed:\n{done.stderr}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def _mb(n_bytes):
    return f"{n_bytes / 1e6:,.0f}"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="2 small fits, for CI (< 1 minute)")
    parser.add_argument("--out", help="also write the output to this file")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        child(*json.loads(args.child))
        return 0

    from skpadim._memory import estimate_memory

    rows = QUICK if args.quick else FULL
    lines = [
        f"# estimate_memory vs measured fits{' (--quick)' if args.quick else ''}",
        "",
        f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"torch {torch.__version__}; random uint8 images, R18-Rd100 (random weights, no "
        "resize or crop) unless the row says otherwise; peaks are the fit's increase of "
        "VmHWM over the resident memory before it",
        "",
        "| images | fitted on | positions | estimated peak (MB) | measured peak (MB) | ratio "
        "| phase of the peak | estimated model (MB) | saved tensors (MB) | file (MB) "
        "| fit (s) |",
        "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|",
    ]
    print("\n".join(lines), flush=True)
    worst = 0.0
    for label, height, width, options, n_images in rows:
        estimate = estimate_memory(pipeline(options), (height, width), n_images=n_images)
        measured = measure(height, width, options, n_images)
        ratio = estimate.fit_peak / measured["peak"]
        worst = max(worst, abs(ratio - 1))
        row = (f"| {label} | {n_images} | {estimate.positions} | {_mb(estimate.fit_peak)} "
               f"| {_mb(measured['peak'])} | {ratio:.2f} | {estimate.peak_phase} "
               f"| {_mb(estimate.model_size)} | {_mb(measured['tensor_bytes'])} "
               f"| {_mb(measured['file_bytes'])} | {measured['seconds']:.1f} |")
        print(row, flush=True)
        lines.append(row)
        if estimate.model_size != measured["tensor_bytes"]:
            raise SystemExit(f"{label}: estimated model size {estimate.model_size} B, saved "
                             f"tensors {measured['tensor_bytes']} B")
    summary = f"\nlargest deviation of the estimated peak: {worst:.0%} (tolerance {TOLERANCE:.0%})"
    print(summary)
    lines.append(summary)
    if args.out:
        command = " ".join(["python benchmarks/bench_memory.py", *(argv or sys.argv[1:])])
        with open(args.out, "w") as f:
            f.write(f"<!-- Written by: {command}, {time.strftime('%Y-%m-%d')}. -->\n\n")
            f.write("\n".join(lines) + "\n")
    return 1 if worst > TOLERANCE else 0


if __name__ == "__main__":
    sys.exit(main())
