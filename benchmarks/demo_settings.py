"""How the demo's sizes change what it shows: the grid behind ``skpadim.demo.DEMO_CONFIG``.

Runs :func:`skpadim.demo.run_demo` (EfficientNet-Lite0, 100 random channels, one PaDiM
model per texture) for each tile size and training count of the grid and prints, as
Markdown, per texture: image AUROC, pixel AUROC and PRO overall and per defect kind, with
the wall time of the whole run (fit, maps, metrics, report files). Then the chosen setting
again with other seeds, to show how much of a difference is noise: with 15 images per
defect kind and 60 normal ones, a per-kind image AUROC moves by about 0.05 from seed to seed.

Every run uses one thread (the demo is the README's first command, on laptops).

Usage::

    python benchmarks/demo_settings.py > benchmarks/demo_settings_output.md
    python benchmarks/demo_settings.py --quick     # tiny, checks that it runs
"""

import argparse
import platform
import tempfile
import time

SIZES = (128, 160, 224)
N_TRAINS = (80, 150, 250)
N_TEST = 120
N_FEATURES = 100
SEEDS = (1, 2)  # seed 0 is in the grid


def run(config, random_state=0):
    """The demo's report and its wall time (seconds) for one setting."""
    from skpadim.demo import run_demo

    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as folder:
        report = run_demo(folder, config=config, verbose=False,
                          random_state=random_state).report
    return report, time.perf_counter() - start


def _fmt(value):
    return "n/a" if value is None else f"{value:.2f}"


def rows(report, label):
    """One Markdown row per texture: overall metrics, then image AUROC / PRO per kind."""
    from skpadim.datasets import DEFECT_TYPES

    lines = []
    for texture, metrics in report["sets"].items():
        overall = metrics["overall"]
        kinds = [metrics["defect_types"].get(kind, {}) for kind in DEFECT_TYPES]
        cells = [f"{_fmt(k.get('image_auroc'))} / {_fmt(k.get('pro'))}" for k in kinds]
        lines.append(f"| {label} | {texture} | {_fmt(overall['image_auroc'])} | "
                     f"{_fmt(overall['pixel_auroc'])} | {_fmt(overall['pro'])} | "
                     + " | ".join(cells) + " |")
    mean = report.get("mean", {})
    lines.append(f"| {label} | **mean** | {_fmt(mean.get('image_auroc'))} | "
                 f"{_fmt(mean.get('pixel_auroc'))} | {_fmt(mean.get('pro'))} |" + " |" * 4)
    return lines


def header():
    from skpadim.datasets import DEFECT_TYPES

    kinds = " | ".join(f"{kind} img / PRO" for kind in DEFECT_TYPES)
    return [f"| setting | texture | image AUROC | pixel AUROC | PRO | {kinds} |",
            "|---" * (5 + len(DEFECT_TYPES)) + "|"]


def print_grid(sizes, n_trains, n_test, n_features):
    table, times = header(), []
    for size in sizes:
        for n_train in n_trains:
            config = {"size": size, "n_train": n_train, "n_test": n_test,
                      "n_features": n_features}
            report, seconds = run(config)
            times.append(f"| {size} | {n_train} | {seconds:.0f} |")
            table += rows(report, f"{size} px, {n_train} train")
    print("\n".join(table))
    print("\n## Wall time of `run_demo` (s)\n\n| size | n_train | seconds |\n|---|---|---|")
    print("\n".join(times))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one tiny setting")
    parser.add_argument("--chosen", default="224,150",
                        help="size,n_train of the setting rerun with other seeds")
    parser.add_argument("--skip-grid", action="store_true",
                        help="only rerun the chosen setting with other seeds")
    args = parser.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    if args.quick:
        sizes, n_trains, n_test, n_features, seeds = (64,), (10,), 8, 20, (1,)
        chosen = (64, 10)
    else:
        sizes, n_trains, n_test, n_features, seeds = SIZES, N_TRAINS, N_TEST, N_FEATURES, SEEDS
        chosen = tuple(int(v) for v in args.chosen.split(","))

    print(f"# demo_settings: run_demo over tile size and training count "
          f"({n_test} test images per texture, half of them defective, {n_features} channels, "
          f"1 thread, {platform.machine()}, torch {torch.__version__})\n")
    print("Cells of a defect kind: its image AUROC / PRO (against all normal test images). "
          "Time: the whole `run_demo`, three textures.\n")
    if not args.skip_grid:
        print_grid(sizes, n_trains, n_test, n_features)

    size, n_train = chosen
    config = {"size": size, "n_train": n_train, "n_test": n_test, "n_features": n_features}
    print(f"\n## {size} px, {n_train} train: other seeds (other crops and defects)\n")
    table = header()
    for seed in seeds:
        table += rows(run(config, random_state=seed)[0], f"seed {seed}")
    print("\n".join(table))


if __name__ == "__main__":
    main()
