"""The `headbench` command: parses options and calls the Python API.

    headbench demo                       synthetic data, embedded EfficientNet-Lite0, every head
    headbench compare DATA [options]     train and compare heads on an image folder
    headbench analyze RUN_DIR [options]  add translation / size / small-data / CAM analyses
    headbench report RUN_DIR             re-render report.html
    headbench log RUN_DIR --to mlflow    log a finished run to MLflow or TensorBoard
    headbench predict MODEL_DIR PATH...  top-k classes for images or folders
    headbench export MODEL_DIR --onnx F  ONNX export, verified against PyTorch
    headbench params / explain           parameter arithmetic and the worked pooling examples
    headbench cache ls | rm [KEY...]     the feature cache

The options of `compare` and `analyze` are generated from `config.CompareConfig` and
`config.AnalyzeConfig`: one flag per field, with the field's help and default. An error about
an option (`HeadbenchError.param`) is shown with its flag: "error: --dropout must be in [0, 1)"
(exit code 2); a disk error is "error: cannot write '<path>': no space left on device" (exit
code 1). Names from folders and model files are printed through `progress.printable`, so a
file name cannot send terminal control sequences.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import re
import sys
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from . import distributed
from . import io as _io
from . import progress
from .progress import printable
from .config import GROUPS, AnalysisOptions, AnalyzeConfig, CompareConfig, fields_of, flag_of
from .errors import DiskError, HeadbenchError
from .heads import MAX_CLASSES, NAMED_CLAIMS
from .images import MAX_SIZE, MIN_SIZE

# parameter name -> flag, for the errors (head options such as pool_size have no flag)
FLAGS = {f.name: flag_of(f) for cls in (CompareConfig, AnalyzeConfig) for f in fields_of(cls)
         if not f.metadata.get("positional")}


def say(text: str, file=None) -> None:
    """Print one line of results that may hold user names, control characters escaped."""
    print(printable(text), file=file)


class _Parser(argparse.ArgumentParser):
    """argparse that reports a bad option as one line and exit code 2."""

    def error(self, message: str) -> None:
        raise HeadbenchError(f"{self.prog}: {message}")


def with_flag(error: HeadbenchError, flags: dict[str, str] = FLAGS) -> str:
    """The error's message with the flags of its parameter and of the parameters it advises on.

    >>> with_flag(HeadbenchError("dropout must be in [0, 1), got 1.5", param="dropout"))
    '--dropout must be in [0, 1), got 1.5'
    >>> with_flag(HeadbenchError("unknown precision 'fp8'", param="precision"))
    "--precision: unknown precision 'fp8'"
    >>> with_flag(HeadbenchError("fails at 8x8 px; is input_size too small?", hints=["input_size"]))
    'fails at 8x8 px; is --input-size too small?'
    """
    text = str(error)
    for name in error.hints:
        if name in flags:
            text = re.sub(rf"(?<![\w-]){re.escape(name)}\b", flags[name], text)
    flag = flags.get(error.param)
    if flag is None:
        return text
    if re.match(rf"{re.escape(error.param)}\b", text):
        return flag + text[len(error.param):]
    return f"{flag}: {text}"


def parser_flags(parser: argparse.ArgumentParser) -> dict[str, str]:
    """parameter name -> flag of every option of `parser` (its long form)."""
    return {a.dest: max(a.option_strings, key=len) for a in parser._actions
            if a.option_strings and a.dest not in ("help", argparse.SUPPRESS)}


# ----------------------------------------------------------------------------------------------
# options generated from a config dataclass

def _default_text(f: dataclasses.Field) -> str | None:
    """The field's default as a user would type it; None when there is nothing to show."""
    value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
    if value is None or value == () or value == "":
        return None
    values = value if isinstance(value, (tuple, list)) else [value]
    return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in values)


def add_config_options(parser: argparse.ArgumentParser, cls: type) -> None:
    """One argument per field of the options dataclass `cls`.

    Values stay strings (comma lists too): the dataclass parses and checks them, naming the
    field. Absent options are left out of the namespace (SUPPRESS), so the dataclass's own
    defaults apply; `--help` shows them, grouped as `config.GROUPS` says.
    """
    groups = {title: parser.add_argument_group(title) for title in GROUPS}
    group_of = {name: groups[title] for title, names in GROUPS.items() for name in names}
    for f in fields_of(cls):
        text = f.metadata.get("help", "").replace("%", "%%")
        if f.metadata.get("positional"):
            parser.add_argument(f.name, help=text)
            continue
        default = _default_text(f)
        if f.name == "cache_dir" and cls is CompareConfig:  # where it resolves on this machine
            from .features import default_cache_dir
            text += f"; here {str(default_cache_dir()).replace('%', '%%')}"
        add = group_of.get(f.name, parser).add_argument
        if isinstance(f.default, bool):  # the help says what the option does when on
            add(flag_of(f), dest=f.name, default=argparse.SUPPRESS,
                action="store_false" if f.default else "store_true",
                help=f"do not {text}" if f.default else text)
            continue
        if "default" not in text:  # some helps explain their default
            text += f" (default: {default if default is not None else 'none'})"
        repeat = {"action": "append"} if f.metadata.get("repeat") else {}  # --log a --log b
        add(flag_of(f), dest=f.name, default=argparse.SUPPRESS, help=text, **repeat)


def config_values(args: argparse.Namespace, cls: type) -> dict[str, Any]:
    """The fields of `cls` given on the command line, as typed."""
    return {f.name: getattr(args, f.name) for f in fields_of(cls) if hasattr(args, f.name)}


# ----------------------------------------------------------------------------------------------
# value types of the hand-written commands

def _numbers(option: str, kind: type = int) -> Callable[[str], list]:
    """A parser for comma-separated numbers of `kind` that names `option` when it fails."""
    def parse(text: str) -> list:
        try:
            return [kind(v) for v in text.split(",") if v.strip()]
        except ValueError:
            word = "integers" if kind is int else "numbers"
            raise argparse.ArgumentTypeError(f"{option} takes comma-separated {word}, got '{text}'")
    return parse


def _whole(low: int, high: int = 1_000_000) -> Callable[[str], int]:
    """A parser for a whole number from `low` to `high`."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be a whole number from {low} to {high}, "
                                             f"got '{text[:40]}'")
        return value
    return parse


def _names(text: str) -> list[str]:
    return [v.strip() for v in text.split(",") if v.strip()]


def _field_help(name: str, default: Any = dataclasses.MISSING) -> str:
    """The help of a CompareConfig field, for the hand-written commands sharing the option, with
    `default` (the command's own) or the field's."""
    f = next(f for f in fields_of(CompareConfig) if f.name == name)
    text = f.metadata["help"]
    if "default" in text:
        return text
    shown = _default_text(f) if default is dataclasses.MISSING else default
    return f"{text} (default: {shown if shown is not None else 'none'})"


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
    from rich.text import Text
    table = Table(title=Text(f"{args.backbone} at {args.input_size or 224} px, "
                             f"{args.num_classes} classes"
                             + (f", hidden {','.join(map(str, args.hidden))}" if args.hidden
                                else "")))
    for col in ("head", "feature map", "head params", "total params", "head FLOPs"):
        table.add_column(col, justify="left" if col in ("head", "feature map") else "right")
    for r in rows:  # Text, not str: a registered head's name is never rich markup
        table.add_row(Text(r["head"]), r["feature_map"], f"{r['head_params']:,}",
                      f"{r['total_params']:,}", f"{r['head_flops']:,}")
    progress.show(table)
    return 0


def cmd_explain(args: argparse.Namespace) -> int:
    from .explain import explain_text
    print(explain_text(args.backbone, args.num_classes, tuple(args.hidden), args.input_size))
    return 0


def _print_findings(findings: list) -> None:
    """Significant findings, those of the headline claims (gap vs flatten: the question headbench
    answers; with several backbones, on each and between them) and the heads that cannot change
    resolution; the rest are counted (all are in the report)."""
    headline = [{c.head, c.versus} for c in NAMED_CLAIMS if c.headline]

    def names(f) -> set:  # the heads' own labels ('resnet50/gap' -> 'gap'), on one backbone
        parts = [str(x).rpartition("/") for x in (f.a, f.b)]
        return {p[2] for p in parts} if parts[0][0] == parts[1][0] else set()
    shown = [f for f in findings if f.significant or names(f) in headline
             or f.kind == "claim by backbone" or (f.kind == "resolution" and f.a is None)]
    if findings:
        print("findings:")
    for f in shown:
        say(f"- {f.text}")
    if len(findings) > len(shown):
        rest = len(findings) - len(shown)
        print(f"- {rest} more comparison{'s' if rest != 1 else ''}: no significant difference "
              "after the Holm correction, or not tested (results.json, report.html)")


def _print_suggestions(run) -> None:
    """The analyses this run did not do that need backbone passes, with their estimated cost."""
    from .analyses.registry import analysis_info, suggestions
    for name, value, seconds, measured in suggestions(run):
        cost = (f"≈ {progress.duration(seconds)} at this run's extraction rate" if measured
                else f"at least {progress.duration(seconds)} of backbone passes, plus decoding")
        say(f"more evidence: headbench analyze {run.run_dir} --{name.replace('_', '-')} {value}"
            f"   ({analysis_info(name).title}: {cost})")


def _print_result(run) -> None:
    """The summary table, findings, selected head and folders of a finished `Run`."""
    from .report import summary_table
    if run.verdict is not None:
        say(f"verdict: {run.verdict.text}")
    progress.show(summary_table(run))
    _print_findings(run.findings)
    from .selection import DESCRIPTION
    rule = (f"one-standard-error rule on {DESCRIPTION.get(run.verdict.selection, 'val')}"
            if run.verdict else "highest mean val accuracy")
    say(f"recommended: {run.best_head} ({rule}), model in {run.model_dir()}")
    _print_suggestions(run)
    say(f"run folder: {run.run_dir}")
    report = Path(run.run_dir) / "report.html"
    if report.exists():
        say(f"report:     {report}")


def cmd_compare(args: argparse.Namespace) -> int:
    from .compare import compare
    run = compare(CompareConfig(**config_values(args, CompareConfig)))
    if run is not None:  # None: a rank other than 0 under torchrun, rank 0 reports
        _print_result(run)
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from .demo import demo
    _print_result(demo(out=args.out, cache_dir=args.cache_dir, seeds=args.seeds,
                       analyses=not args.no_analyses))
    return 0


def cmd_analyze(args: argparse.Namespace) -> int:
    from .analyze import analyze
    options = config_values(args, AnalyzeConfig)
    analyses = fields_of(AnalysisOptions)
    if not {f.name for f in analyses} & set(options):  # said with flags, before the run is read
        raise HeadbenchError("analyze needs at least one of "
                             + ", ".join(flag_of(f) for f in analyses))
    run = analyze(options.pop("run_dir"), **options)
    _print_findings(run.findings)
    say(f"report: {Path(run.run_dir) / 'report.html'}")
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from .report import write_report
    say(str(write_report(args.run_dir)))  # a folder that is not a run gives Run.load's one line
    return 0


def cmd_log(args: argparse.Namespace) -> int:
    from .run import Run, is_complete
    from .tracking import check_available, log_run, parse_targets
    targets = parse_targets(args.to, param="to")
    check_available(targets, param="to")
    run = Run.load(args.run_dir)  # a folder that is not a run gives Run.load's one line
    if not is_complete(args.run_dir):
        raise HeadbenchError(f"run '{args.run_dir}' is incomplete (interrupted or still "
                             "running); rerun its compare to finish it, then log it")
    for line in log_run(run, targets):
        say(line)
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from .export import load_model, predict
    from .onnx import predict_onnx
    if args.engine == "onnx":
        rows = predict_onnx(args.model_dir, args.paths, topk=args.topk,
                            input_size=args.input_size)
    else:
        rows = predict(load_model(args.model_dir), args.paths, topk=args.topk,
                       input_size=args.input_size)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0 if any("top" in r for r in rows) else 1
    for row in rows:
        if "error" in row:
            say(f"{row['path']}: skipped ({row['error']})")
            continue
        top = ", ".join(f"{t['label']} {t['probability']:.3f}" for t in row["top"])
        say(f"{row['path']}: {top}")
    return 0 if any("top" in r for r in rows) else 1  # every image was unreadable


def cmd_export(args: argparse.Namespace) -> int:
    from .onnx import ONNX_VERIFICATION, export_onnx
    report = export_onnx(args.model_dir, args.onnx, dynamic_size=args.dynamic_size,
                         images=args.images, opset=args.opset)
    axes = "batch, height and width" if report["dynamic_size"] else "batch"
    say(f"exported {args.model_dir} -> {args.onnx or Path(args.model_dir) / 'model.onnx'} "
        f"(dynamic {axes}; opset {report['opset']}, {report['size_bytes'] / 1e6:.1f} MB)")
    diffs = ", ".join(f"{s} px {d:.2g}" for s, d in report["max_abs_diff"].items())
    say(f"verified with onnxruntime {report['versions']['onnxruntime']} on "
        f"{report['images']} images, max abs logit difference vs PyTorch: {diffs} "
        f"(tolerance {report['tolerance']:g}): passed")
    say(f"record: {Path(args.model_dir) / ONNX_VERIFICATION}")
    return 0


def cmd_cache(args: argparse.Namespace) -> int:
    from .cache import list_entries, remove_entries
    from .features import default_cache_dir
    cache_dir = args.cache_dir or default_cache_dir()
    if args.action == "ls":
        entries = list_entries(cache_dir)
        if not entries:
            say(f"no cached features in {cache_dir}")
        else:
            say(f"{cache_dir}:")
            say(f"{'key':<16}  {'backbone':<20} {'weights':<10} {'view':<14} {'prec':<5} "
                f"{'form':<7} {'images':>10}  {'size':>11}  per image")
        for e in entries:  # an entry without readable meta.json has None fields
            text = {k: str(e[k]) if e[k] is not None else "?" for k in
                    ("backbone", "weights", "view", "precision", "form")}
            images = e["images"] or 0
            per_image = f"{e['size_bytes'] / images / 1e3:8.1f} kB/img" if images else ""
            say(f"{e['key']}  {text['backbone']:<20} {text['weights']:<10} {text['view']:<14} "
                f"{text['precision']:<5} {text['form']:<7} {images:6d} img  "
                f"{e['size_bytes'] / 1e6:8.1f} MB{per_image}")
        return 0
    if not args.keys and not args.all:
        raise HeadbenchError("cache rm needs KEY... (see 'headbench cache ls') or --all")
    n = remove_entries(cache_dir, None if args.all else args.keys)
    say(f"removed {n} cache entr{'y' if n == 1 else 'ies'} from {cache_dir}")
    return 0


# ----------------------------------------------------------------------------------------------
# the parser

DESCRIPTION = """\
Which classification head should sit on your pretrained backbone? headbench trains every head
(gap, flatten, avgpool, dense_map, gmp, gem, catavgmax, attention, fastai; token, avg, map on
Vision Transformers; timm: the backbone's own head) from one cached backbone pass over your
images and answers in one sentence: the cheapest head not measurably worse than the best.

  headbench compare path/to/images      the comparison: a run folder with report.html
  headbench compare --help              every option, grouped, with its default
  headbench predict runs/<run>/heads/best image.jpg

Results go to stdout, progress to stderr (bars in a terminal; in a log, a line at least every
30 s). Exit codes: 0 done, 1 a disk error (what was kept is said), 2 a bad option or input."""


def build_parser() -> argparse.ArgumentParser:
    from .version import __version__
    parser = _Parser(prog="headbench", description=DESCRIPTION,
                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", action="version", version=f"headbench {__version__}")
    parser.add_argument("--quiet", "-q", action="store_true", help="no progress bars (for logs)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    # --quiet and --debug work after the subcommand too (SUPPRESS keeps the global value)
    common = _Parser(add_help=False)
    common.add_argument("--quiet", "-q", action="store_true", default=argparse.SUPPRESS,
                        help="no progress bars (for logs)")
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                        help="show tracebacks")

    p = sub.add_parser("compare", parents=[common],
                       help="train and compare heads on an image folder")
    add_config_options(p, CompareConfig)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("analyze", parents=[common],
                       help="add analyses to an existing run without retraining")
    add_config_options(p, AnalyzeConfig)
    p.set_defaults(func=cmd_analyze)

    p = sub.add_parser("demo", parents=[common],
                       help="the whole job on generated data with the embedded backbone")
    p.add_argument("--out", default=".", help=_field_help("out"))
    p.add_argument("--cache-dir", default=None, help=_field_help("cache_dir"))
    p.add_argument("--seeds", type=_whole(1), default=3, help=_field_help("seeds"))
    p.add_argument("--no-analyses", action="store_true", help="skip shift/size/shot/CAM analyses")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("params", parents=[common],
                       help="parameters and FLOPs of every head on a backbone")
    p.add_argument("--backbone", default="efficientnet_lite0", help=_field_help("backbone"))
    p.add_argument("--weights", default="none",
                   help="embedded | hub | none | PATH; counts do not depend on weights "
                        "(default: none)")
    p.add_argument("--input-size", type=_whole(MIN_SIZE, MAX_SIZE), default=None,
                   help="input side in pixels (default: 224)")
    p.add_argument("--heads", type=_names, default=None, help=_field_help("heads"))
    p.add_argument("--hidden", type=_numbers("--hidden"), default=[],
                   help=_field_help("hidden", "none"))
    p.add_argument("--dropout", type=float, default=None, help=_field_help("dropout"))
    p.add_argument("--num-classes", type=_whole(2, MAX_CLASSES), default=10,
                   help="number of classes (default: 10)")
    p.add_argument("--json", action="store_true", help="print the table as JSON")
    p.set_defaults(func=cmd_params)

    p = sub.add_parser("explain", parents=[common],
                       help="what GAP and Flatten keep, with live worked examples")
    p.add_argument("--backbone", default="resnet50",
                   help="the backbone of the examples (default: resnet50)")
    p.add_argument("--num-classes", type=_whole(2, MAX_CLASSES), default=10,
                   help="number of classes (default: 10)")
    p.add_argument("--hidden", type=_numbers("--hidden"), default=[1024],
                   help="hidden Linear+ReLU sizes of the Dense examples (default: 1024)")
    p.add_argument("--input-size", type=_whole(MIN_SIZE, MAX_SIZE), default=224,
                   help="input side in pixels (default: 224)")
    p.set_defaults(func=cmd_explain)

    p = sub.add_parser("report", parents=[common], help="re-render report.html of a run")
    p.add_argument("run_dir", help="a run folder written by compare (runs/<run>)")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser("log", parents=[common],
                       help="log a finished run to an experiment tracker (MLflow, TensorBoard)")
    p.add_argument("run_dir", help="a run folder written by compare (runs/<run>)")
    p.add_argument("--to", action="append", required=True, metavar="TRACKER",
                   help="mlflow[=URI] | tensorboard[=DIR], a comma list or repeated (required; "
                        "URI default: $MLFLOW_TRACKING_URI, else sqlite:///<out>/mlflow.db; DIR "
                        "default: <out>/tensorboard, the run in DIR/<run name>; <out> holds "
                        "the run's runs/ folder)")
    p.set_defaults(func=cmd_log)

    p = sub.add_parser("predict", parents=[common], help="top-k classes from a saved model")
    p.add_argument("model_dir", help="e.g. runs/<run>/heads/gap (or heads/best)")
    p.add_argument("paths", nargs="+", help="images or folders")
    p.add_argument("--topk", type=_whole(1), default=5,
                   help="classes per image, most probable first (default: 5)")
    p.add_argument("--input-size", type=_whole(MIN_SIZE, MAX_SIZE), default=None,
                   help="predict at another size (heads that accept any size only; default: "
                        "the model's)")
    p.add_argument("--engine", choices=["torch", "onnx"], default="torch",
                   help="torch: the model folder with PyTorch; onnx: its verified ONNX export "
                        "(or an exported .onnx file) with onnxruntime (default: torch)")
    p.add_argument("--json", action="store_true", help="print the predictions as JSON")
    p.set_defaults(func=cmd_predict)

    p = sub.add_parser("export", parents=[common],
                       help="export a saved model to ONNX, verified against PyTorch")
    p.add_argument("model_dir", help="e.g. runs/<run>/heads/gap")
    p.add_argument("--onnx", default=None, metavar="OUT",
                   help="the ONNX file to write (default: MODEL_DIR/model.onnx)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--dynamic-size", dest="dynamic_size", action="store_true", default=None,
                      help="dynamic height and width (the default for heads that accept any "
                           "size; refused for fixed-size heads)")
    size.add_argument("--fixed-size", dest="dynamic_size", action="store_false",
                      help="export at the training size only")
    p.add_argument("--images", nargs="+", default=None, metavar="PATH",
                   help="images or folders to verify on (default: images of the model's run)")
    p.add_argument("--opset", type=_whole(18), default=None,
                   help="ONNX opset (default: the exporter's)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("cache", parents=[common], help="list or remove cached features")
    p.add_argument("action", choices=["ls", "rm"], help="ls: list the entries; rm: remove some")
    p.add_argument("keys", nargs="*", help="entries to remove (rm): keys or their prefixes")
    p.add_argument("--all", action="store_true", help="rm: remove every entry")
    p.add_argument("--cache-dir", default=None, help=_field_help("cache_dir"))
    p.set_defaults(func=cmd_cache)
    parser.subcommands = sub.choices  # for the flags of an error's parameters
    return parser


# what a Ctrl-C keeps, by command
_RESUMES = ("interrupted; finished heads are kept in the run folder and extracted features in "
            "the cache: rerun the same command to resume")
_INTERRUPTED = {"compare": _RESUMES, "demo": _RESUMES,
                "analyze": "interrupted; extracted features are kept in the cache and a rerun "
                           "skips them"}


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    debug, command = "--debug" in argv, None
    parser = build_parser()
    warnings.showwarning = progress.show_warning
    try:
        args = parser.parse_args(argv)
        command = args.command
        progress.set_quiet(args.quiet)
        if command != "compare":
            distributed.refuse(command)
        return args.func(args)
    except DiskError as e:  # compare says what it kept
        if debug:
            raise
        say(f"error: {e}", file=sys.stderr)
        return 1
    except HeadbenchError as e:
        if debug:
            raise
        sub = parser.subcommands.get(command)
        flags = FLAGS | parser_flags(sub) if sub is not None else FLAGS
        say(f"error: {with_flag(e, flags)}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # `headbench ... | head`: the reader left, nothing to report
        with contextlib.suppress(OSError, ValueError):  # no flush error at exit either
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # as if killed by SIGPIPE, like other command-line tools
    except OSError as e:  # a full or read-only disk; commands say themselves what was kept
        if debug:
            raise
        say(f"error: {_io.os_error_text(e)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(_INTERRUPTED.get(command, "interrupted"), file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
