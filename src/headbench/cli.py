"""The `headbench` command: parses options and calls the Python API.

    headbench demo                       synthetic data, embedded EfficientNet-Lite0, every head
    headbench compare DATA [options]     train and compare heads on an image folder
    headbench analyze RUN_DIR [options]  add translation / size / small-data / CAM analyses
    headbench report RUN_DIR             re-render report.html
    headbench predict MODEL_DIR PATH...  top-k classes for images or folders
    headbench params / explain           parameter arithmetic and the worked pooling examples
    headbench cache ls | rm [KEY...]     the feature cache
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Callable, Sequence

from . import progress
from .errors import HeadbenchError


# ----------------------------------------------------------------------------------------------
# option parsing helpers: each turns a comma list into values or raises a one-line error

def _numbers(option: str, kind: type = int) -> Callable[[str], list]:
    """A parser for comma-separated numbers of `kind` that names `option` when it fails."""
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            word = "integers" if kind is int else "numbers"
            raise argparse.ArgumentTypeError(f"{option} takes comma-separated {word}, got '{text}'")
    return parse


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and exit code 2."""

    def error(self, message: str) -> None:
        raise HeadbenchError(f"{self.prog}: {message}")


# ----------------------------------------------------------------------------------------------
# commands

def cmd_params(args: argparse.Namespace) -> int:
    from .model import param_table
    from .heads import DEFAULT_HEADS
    if args.heads == []:
        raise HeadbenchError("--heads is empty; name at least one head, e.g. --heads gap,flatten")
    rows = param_table(args.backbone, args.num_classes, heads=args.heads or DEFAULT_HEADS,
                       hidden=tuple(args.hidden) or None, input_size=args.input_size or 224,
                       weights=args.weights, dropout=args.dropout)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    from rich.table import Table
    table = Table(title=f"{args.backbone} at {args.input_size or 224} px, "
                        f"{args.num_classes} classes"
                        + (f", hidden {','.join(map(str, args.hidden))}" if args.hidden else ""))
    for col in ("head", "feature map", "head params", "total params", "head FLOPs"):
        table.add_column(col, justify="left" if col in ("head", "feature map") else "right")
    for r in rows:
        table.add_row(r["head"], r["feature_map"], f"{r['head_params']:,}", f"{r['total_params']:,}",
                      f"{r['head_flops']:,}")
    progress.console.print(table)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_text
    print(explain_text(args.backbone, args.num_classes, tuple(args.hidden), args.input_size))
    return 0


def _compare_kwargs(args: argparse.Namespace) -> dict:
    kwargs = dict(backbone=args.backbone, weights=args.weights, seeds=args.seeds,
                  hidden=args.hidden, dropout=args.dropout, epochs=args.epochs,
                  batch_size=args.batch_size, lr=args.lr, patience=args.patience,
                  input_size=args.input_size,
                  precision=args.precision, cache_dir=args.cache_dir, out=args.out,
                  val_fraction=args.val_fraction, split=args.split, split_seed=args.split_seed,
                  workers=args.workers, shifts=args.shifts, sizes=args.sizes, shots=args.shots,
                  cam=args.cam, report=not args.no_report)
    if args.heads is not None:  # an empty --heads is an error, not the defaults
        kwargs["heads"] = args.heads
    if args.weight_decays:
        kwargs["weight_decays"] = args.weight_decays
    return kwargs


def _print_findings(findings: list[dict]) -> None:
    """Significant findings and the gap-vs-flatten ones; the rest are counted (all are in the report)."""
    headline = {"gap", "flatten"}
    shown = [f for f in findings if f.get("significant") or {f.get("a"), f.get("b")} == headline
             or (f.get("kind") == "resolution" and f.get("a") is None)]
    if findings:
        print("findings:")
    for f in shown:
        print(f"- {f['text']}")
    if len(findings) > len(shown):
        print(f"- {len(findings) - len(shown)} more comparisons show no significant difference "
              "(results.json, report.html)")


def _print_result(result) -> None:
    from .report import summary_table
    progress.console.print(summary_table(result.results))
    _print_findings(result.findings)
    print(f"selected:   {result.best_head} (highest mean val accuracy), model in "
          f"{result.model_dir()}")
    print(f"run folder: {result.run_dir}")
    report = result.run_dir / "report.html"
    if report.exists():
        print(f"report:     {report}")


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare
    _print_result(compare(args.data, **_compare_kwargs(args)))
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo
    _print_result(demo(out=args.out, cache_dir=args.cache_dir, seeds=args.seeds,
                       analyses=not args.no_analyses))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze
    if not (args.shifts or args.sizes or args.shots or args.cam):
        raise HeadbenchError("analyze needs at least one of --shifts, --sizes, --shots, --cam")
    results = analyze(args.run_dir, shifts=args.shifts, sizes=args.sizes, shots=args.shots,
                      cam=args.cam, cache_dir=args.cache_dir, precision=args.precision)
    _print_findings(results.get("findings", []))
    print(f"report: {Path(args.run_dir) / 'report.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    run_dir = Path(args.run_dir)
    if not (run_dir / "results.json").is_file():
        raise HeadbenchError(f"'{run_dir}' is not a headbench run folder (no results.json)")
    print(write_report(run_dir))
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .export import load_model, predict
    model = load_model(args.model_dir)
    rows = predict(model, args.paths, topk=args.topk, input_size=args.input_size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if any("top" in r for r in rows) else 1
    for row in rows:
        if "error" in row:
            print(f"{row['path']}: skipped ({row['error']})")
            continue
        top = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top"])
        print(f"{row['path']}: {top}")
    return 0 if any("top" in r for r in rows) else 1  # every image was unreadable


def cmd_cache(args: argparse.Namespace) -> int:
    from .features import default_cache_dir, list_entries, remove_entries
    cache_dir = args.cache_dir or default_cache_dir()
    if args.action == "ls":
        entries = list_entries(cache_dir)
        if not entries:
            print(f"no cached features in {cache_dir}")
        for e in entries:  # an entry without readable meta.json has None fields
            text = {k: str(e[k]) if e[k] is not None else "?" for k in
                    ("backbone", "weights", "view", "precision")}
            print(f"{e['key']}  {text['backbone']:<20} {text['weights']:<10} {text['view']:<14} "
                  f"{text['precision']:<5} {e['images'] or 0:6d} img  {e['size_bytes'] / 1e6:8.1f} MB")
        return 0
    if not args.keys and not args.all:
        raise HeadbenchError("cache rm needs KEY... (see 'headbench cache ls') or --all")
    n = remove_entries(cache_dir, None if args.all else args.keys)
    print(f"removed {n} cache entr{'y' if n == 1 else 'ies'} from {cache_dir}")
    return 0


# ----------------------------------------------------------------------------------------------
# the parser

def _add_backbone_options(p: argparse.ArgumentParser, weights_default: str) -> None:
    p.add_argument("--backbone", default="efficientnet_lite0",
                   help="alias (resnet50, mobilenet, vgg16, efficientnet_lite0) or any timm name")
    p.add_argument("--weights", default=weights_default,
                   help="embedded | hub | none | PATH (.safetensors/.pth/.pt/.bin); default: "
                        + ("none (counts do not depend on weights)" if weights_default == "none"
                           else "embedded for efficientnet_lite0, else hub"))
    p.add_argument("--input-size", type=int, default=None, help="input side in pixels")


def _add_head_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--heads", type=_names, default=None, help="comma list, e.g. gap,flatten")
    p.add_argument("--hidden", type=_numbers("--hidden"), default=[],
                   help="hidden Linear+ReLU sizes, e.g. 1024,512")
    p.add_argument("--dropout", type=float, default=None, help="dropout before each Linear")


def _add_analysis_options(p: argparse.ArgumentParser) -> None:
    # parsed and checked by headbench.analyze, which names the option in its errors
    p.add_argument("--shifts", default=None, help="translations in pixels, e.g. 0,8,16,32")
    p.add_argument("--sizes", default=None, help="test input sizes, e.g. 160,224,288,384")
    p.add_argument("--shots", default=None,
                   help="training images per class, e.g. 1,2,5,10,25,all")
    p.add_argument("--cam", type=int, default=0, help="CAM overlays per head (correct and wrong)")
    p.add_argument("--cache-dir", default=None, help="feature cache (default: user cache dir)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="headbench", description=__doc__,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars (for logs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # --quiet works after the subcommand too (SUPPRESS keeps the global value when absent)
    quiet = _Parser(add_help=False)
    quiet.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                       help="no progress bars (for logs)")

    p = sub.add_parser("params", parents=[quiet],
                       help="parameters and FLOPs of every head on a backbone")
    _add_backbone_options(p, weights_default="none")
    _add_head_options(p)
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("explain", parents=[quiet],
                       help="what GAP and Flatten keep, with live worked examples")
    p.add_argument("--backbone", default="resnet50")
    p.add_argument("--num-classes", type=int, default=10)
    p.add_argument("--hidden", type=_numbers("--hidden"), default=[1024])
    p.add_argument("--input-size", type=int, default=224)
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("compare", parents=[quiet],
                       help="train and compare heads on an image folder")
    p.add_argument("data", help="folder of class folders, or with train/ val/ [test/]")
    _add_backbone_options(p, weights_default="default")
    _add_head_options(p)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--epochs", type=int, default=40, help="maximum epochs (early stopping on val)")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--patience", type=int, default=8,
                   help="early-stopping patience in epochs on val loss (0: off)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decays", type=_numbers("--weight-decays", float), default=None,
                   help="sweep picked on val, default 1e-4,1e-3,1e-2,1e-1")
    p.add_argument("--precision", default="auto", help="auto | fp32 | bf16 (extraction)")
    p.add_argument("--out", default=".", help="runs/ is created here")
    p.add_argument("--val-fraction", type=float, default=0.15)
    p.add_argument("--split", type=_numbers("--split", float), default=[0.7, 0.15, 0.15])
    p.add_argument("--split-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=None, help="image decoding processes")
    p.add_argument("--no-report", action="store_true")
    _add_analysis_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("demo", parents=[quiet],
                       help="the whole job on generated data with the embedded backbone")
    p.add_argument("--out", default=".")
    p.add_argument("--cache-dir", default=None)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--no-analyses", action="store_true", help="skip shift/size/shot/CAM analyses")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("analyze", parents=[quiet],
                       help="add analyses to an existing run without retraining")
    p.add_argument("run_dir")
    _add_analysis_options(p)
    p.add_argument("--precision", default=None,
                   help="extraction precision for new views (default: the run's)")
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("report", parents=[quiet], help="re-render report.html of a run")
    p.add_argument("run_dir")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("predict", parents=[quiet], help="top-k classes from a saved model")
    p.add_argument("model_dir", help="e.g. runs/<run>/heads/gap")
    p.add_argument("paths", nargs="+", help="images or folders")
    p.add_argument("--topk", type=int, default=5)
    p.add_argument("--input-size", type=int, default=None,
                   help="predict at another size (global-pooling heads only)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("cache", parents=[quiet], help="list or remove cached features")
    p.add_argument("action", choices=["ls", "rm"])
    p.add_argument("keys", nargs="*")
    p.add_argument("--all", action="store_true")
    p.add_argument("--cache-dir", default=None)
    p.set_defaults(func=cmd_cache)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        args = build_parser().parse_args(argv)
        progress.set_quiet(args.quiet)
        return args.func(args)
    except HeadbenchError as e:
        if debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; extracted features are kept in the cache and a re-run skips them",
              file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
