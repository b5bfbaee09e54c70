"""``invbench``: the command line. Parses arguments and hands each command to the module that owns it."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from bench.suite import Known


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without a GPU is an error."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: torch.cuda.is_available() is False on this machine (use --device cpu)")
    if requested not in ("cpu", "cuda"):
        raise ValueError(f"--device: expected auto, cpu or cuda, got {requested!r}")
    return requested


def _raise_interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def cli_run(args: argparse.Namespace, known: Known | None = None) -> int:
    """The ``run`` command. Exit status 0, or 1 when any cell ended ``error`` (its rows are still written)."""
    from bench.run.executors import make_executor
    from bench.run.progress import Progress, choose_mode
    from bench.run.rundir import check_out_dir, default_out
    from bench.run.runner import check_unchanged, run_suite
    from bench.suite import load_suite, restrict

    data_dir = getattr(args, "data_dir", None)
    if data_dir:  # searched first by the file data sets; workers inherit the environment
        folder = Path(data_dir).expanduser().resolve()
        if not folder.is_dir():
            raise ValueError(f"--data-dir: no such folder: {folder}")
        os.environ["INVBENCH_DATA"] = str(folder)
    suite = load_suite(args.suite, known)
    suite = restrict(suite, models=args.models, tasks=args.tasks, datasets=args.datasets, seeds=args.seeds,
                     timeout=args.timeout, known=known)
    device = resolve_device(args.device if args.device != "auto" else suite.device)
    out = Path(args.out) if args.out else default_out(suite.name)
    check_out_dir(out, args.resume)  # before any worker starts
    if args.resume and not getattr(args, "allow_changed", False):
        check_unchanged(out, suite)
    executor = make_executor(getattr(args, "executor", None) or "local", workers=args.workers, device=device,
                             out=out, slurm=suite.slurm)
    progress = Progress(0, choose_mode(args.quiet, sys.stderr), sys.stderr)
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _raise_interrupt) if main_thread else None
    t0 = time.monotonic()
    try:
        summary = run_suite(suite, out, executor=executor, resume=args.resume, progress=progress, device=device,
                            allow_changed=getattr(args, "allow_changed", False),
                            command=["invbench", *sys.argv[1:]])
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if not args.quiet:
        counts = ", ".join(f"{n} {s}" for s, n in summary.statuses.most_common())
        skipped = f", {summary.skipped} already done" if summary.skipped else ""
        print(f"{summary.total} cells ({counts or 'none run'}{skipped}) in {time.monotonic() - t0:.0f}s")
        print(f"run directory: {out}")
        print(f"make a report: invbench report {out}")
    return 1 if summary.statuses.get("error") else 0


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1 (``--workers``)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number of at least 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def shape_arg(text: str) -> tuple[int, ...]:
    """An argparse type: a per-example shape as comma-separated positive integers (``4`` or ``1,4,4``)."""
    try:
        shape = tuple(int(part) for part in text.split(","))
    except ValueError:
        shape = ()
    if not shape or any(n < 1 for n in shape):
        raise argparse.ArgumentTypeError(f"expected comma-separated positive integers such as 4 or 1,4,4, got {text!r}")
    return shape


def _cmd_list(args: argparse.Namespace) -> int:
    from models import registry

    rows = []
    for name, target in registry.entries().items():
        try:
            cls = registry.load_target(target)
            rows.append((name, cls.family, cls.backend, cls.capabilities.summary()))
        except Exception as exc:  # a broken third-party entry must not hide the others
            rows.append((name, "?", "?", f"cannot load {target}: {exc}"))
    widths = [max(len(r[i]) for r in [("name", "family", "backend", "capabilities"), *rows]) for i in range(3)]
    header = ("name", "family", "backend", "capabilities")
    for r in [header, *rows]:
        print(f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}")
    return 0


def _cmd_validate(args: argparse.Namespace) -> int:
    from models.testing import format_report, validate

    results = validate(args.model, shape=args.shape, seed=args.seed)
    print(format_report(args.model, results))
    return 0 if all(r.passed for r in results) else 1


def _cmd_run(args: argparse.Namespace) -> int:
    return cli_run(args)


def _cmd_report(args: argparse.Namespace) -> int:
    from bench.report.writer import cli_report

    return cli_report(args)


def _cmd_compare(args: argparse.Namespace) -> int:
    from bench.report.compare import cli_compare

    return cli_compare(args)


def _cmd_speedup(args: argparse.Namespace) -> int:
    from bench.report.speedup import cli_speedup

    return cli_speedup(args)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="invbench",
        description="Benchmark invertible neural networks: likelihood, classification, inverse cost, stability.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND")

    sp = sub.add_parser("list", help="list every registered model with family, backend and capabilities")
    sp.set_defaults(func=_cmd_list)

    sp = sub.add_parser("validate", help="run the conformance checks on a model (name or module:Class)")
    sp.add_argument("model", help="registered name (see `invbench list`) or 'module:Class'")
    sp.add_argument("--shape", type=shape_arg, default=None,
                    help="input shape, e.g. 4 or 1,4,4 (default: the model's test shape)")
    sp.add_argument("--seed", type=int, default=0)
    sp.set_defaults(func=_cmd_validate)

    sp = sub.add_parser("run", help="run a suite (default: quick) and write a results store")
    sp.add_argument("--suite", default="quick", help="suite name (quick, fashion, paper) or path to a TOML file")
    sp.add_argument("--models", nargs="+", default=None, help="restrict to these models (spaces or commas)")
    sp.add_argument("--tasks", nargs="+", default=None, help="restrict to these tasks (spaces or commas)")
    sp.add_argument("--datasets", nargs="+", default=None,
                    help="restrict to these data sets (spaces or commas; a path is kept whole)")
    sp.add_argument("--seeds", type=int, default=None, help="number of seeds (overrides the suite)")
    sp.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    sp.add_argument("--out", default=None, help="run directory (default: runs/<suite>-<timestamp>)")
    sp.add_argument("--data-dir", default=None,
                    help="folder searched first for Fashion-MNIST, MNIST, CIFAR-10 files; see $INVBENCH_DATA")
    sp.add_argument("--resume", action="store_true", help="skip cells already finished in --out")
    sp.add_argument("--allow-changed", action="store_true",
                    help="with --resume: continue although the suite's configuration changed (recorded per session)")
    sp.add_argument("--executor", choices=["inprocess", "local", "pool", "submitit"], default="local",
                    help="where cells run: one subprocess at a time, a process pool, or Slurm via submitit")
    sp.add_argument("--workers", type=positive_int, default=None, help="pool workers (default: one per GPU, else 1)")
    sp.add_argument("--timeout", type=float, default=None, help="per-cell timeout in seconds (overrides the suite)")
    sp.add_argument("--quiet", action="store_true", help="no progress bar")
    sp.set_defaults(func=_cmd_run)

    sp = sub.add_parser("report", help="write tables, plots and an HTML page from a results store")
    sp.add_argument("results", help="run directory or results.jsonl")
    sp.add_argument("-o", "--out", default=None, help="report folder (default: reports/<run name>)")
    sp.set_defaults(func=_cmd_report)

    sp = sub.add_parser("compare", help="compare two results stores; non-zero exit on regression")
    sp.add_argument("a", help="baseline run directory or results.jsonl")
    sp.add_argument("b", help="candidate run directory or results.jsonl")
    sp.add_argument("--threshold", type=float, default=0.05, help="relative change counted as a regression")
    sp.add_argument("--noise", type=float, default=0.0,
                    help="also require the change to exceed this many standard errors of the seed means (0: off)")
    sp.add_argument("--force", action="store_true",
                    help="compare stores of different suites, or sharing no key (otherwise exit 2)")
    sp.set_defaults(func=_cmd_compare)

    sp = sub.add_parser("speedup", help="per-task speed-up of run B over run A (e.g. GPU over CPU), same suite")
    sp.add_argument("a", help="baseline run directory or results.jsonl")
    sp.add_argument("b", help="the other run")
    sp.add_argument("-o", "--output", default=None, help="also write the Markdown table to this file")
    sp.set_defaults(func=_cmd_speedup)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # e.g. `invbench compare A B | head`
        sys.stderr.close()
        return 0
    except (ValueError, KeyError, FileNotFoundError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"invbench: error: {msg}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    raise SystemExit(main())
