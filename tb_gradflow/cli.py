"""`tb-gradflow check`: the dashboard's diagnosis, headless, for CI.

    $ tb-gradflow check logs/seed001
    $ tb-gradflow check logs/seed001 --json --fail-on nonfinite,exploding

Exit status: 0 no alert fired (among the --fail-on kinds) and every run
was read; 1 at least one alert fired; 2 the command could not run (no such
directory, no tb_gradflow data at all, bad arguments); 3 no alert fired but
at least one run could not be read (cut short, corrupt, written by a newer
tb_gradflow; the JSON's "unreadable" list and the text output name each with
the reason). Runs are judged one by one: a broken run never hides the
others. Runs are read with the same Reader and rules as the TensorBoard
plugin, with the thresholds the training hook recorded. docs/cli.md
describes the JSON document.
"""

import argparse
import json
import math
import sys

from tb_gradflow import rules

# Version of the --json document; bumped only on incompatible changes
# (docs/cli.md describes every field).
JSON_FORMAT = "tb_gradflow.check/1"

EXIT_OK, EXIT_ALERTS, EXIT_ERROR, EXIT_UNREADABLE = 0, 1, 2, 3


def _finite_or_none(value):
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def check_impl(logdir, fail_on=rules.KINDS):
    """The check as data: (report dict, exit status). Pure reading, no printing.

    Raises:
      FileNotFoundError: `logdir` is not a directory.
    """
    from tb_gradflow.reader import Reader, UnreadableRun, UnreadableRunError, summarize

    reader = Reader.for_logdir(logdir)
    readable, unreadable = reader.survey()
    report = {
        "format": JSON_FORMAT,
        "logdir": str(logdir),
        "fail_on": list(fail_on),
        "runs": [],
        "unreadable": [],
        "alert_count": 0,
    }
    for run in readable:
        try:
            steps, verdicts, table = reader.verdicts(run)
        except UnreadableRunError as e:
            unreadable.append(UnreadableRun(run, e.reason))
            continue
        except Exception as e:  # one run's surprise must not hide the others
            unreadable.append(UnreadableRun(run, f"reading it failed ({type(e).__name__}: {e})"))
            continue
        alerts = summarize(steps, verdicts, table)
        report["runs"].append(
            {
                "run": run,
                "layers": len(table.layers),
                "logged_steps": int(len(steps)),
                "first_step": int(steps[0]) if len(steps) else None,
                "last_step": int(steps[-1]) if len(steps) else None,
                "thresholds": reader.thresholds(run, table=table).to_dict(),
                "alerts": [
                    dict(a.to_json(), worst_value=_finite_or_none(a.worst_value)) for a in alerts
                ],
            }
        )
        report["alert_count"] += sum(1 for a in alerts if a.kind in fail_on)
    report["unreadable"] = [u.to_json() for u in sorted(unreadable, key=lambda u: u.run)]
    if report["alert_count"]:
        status = EXIT_ALERTS
    elif report["unreadable"]:
        status = EXIT_UNREADABLE
    else:
        status = EXIT_OK
    return report, status


def format_text(report):
    lines = []
    if not report["runs"] and not report["unreadable"]:
        return f"no tb_gradflow runs under {report['logdir']}"
    for run in report["runs"]:
        header = f"{run['run']}: {run['layers']} layers, {run['logged_steps']} logged steps"
        if run["logged_steps"]:
            header += f" ({run['first_step']}..{run['last_step']})"
        lines.append(header)
        if not run["alerts"]:
            lines.append("  no alerts")
            continue
        width = max(len(a["layer"]) for a in run["alerts"])
        lines.append(f"  {'layer':<{width}}  {'kind':<10}  {'first step':>10}  {'worst value':>11}  {'steps':>5}")
        for a in run["alerts"]:
            worst = "n/a" if a["worst_value"] is None else f"{a['worst_value']:.3g}"
            lines.append(
                f"  {a['layer']:<{width}}  {a['kind']:<10}  {a['first_step']:>10}  {worst:>11}  {a['steps_fired']:>5}"
            )
            if a.get("explanation"):
                lines.append(f"  {'':<{width}}  why: {a['explanation']}")
    for problem in report["unreadable"]:
        lines.append(f"{problem['run']}: cannot be read: {problem['reason']}")
    summary = f"{report['alert_count']} alert(s) of kinds {', '.join(report['fail_on'])}"
    if report["unreadable"]:
        summary += f", {len(report['unreadable'])} run(s) unreadable"
    failing = report["alert_count"] or report["unreadable"]
    lines.append(summary + (" -> failing" if failing else ""))
    return "\n".join(lines)


def _kinds(value):
    kinds = tuple(k.strip() for k in value.split(",") if k.strip())
    unknown = [k for k in kinds if k not in rules.KINDS]
    if unknown or not kinds:
        raise argparse.ArgumentTypeError(
            f"unknown alert kind(s) {', '.join(unknown) or '(none given)'}; choose from {', '.join(rules.KINDS)}"
        )
    return kinds


def build_parser():
    parser = argparse.ArgumentParser(prog="tb-gradflow", description="Gradient flow diagnosis of TensorBoard logs.")
    sub = parser.add_subparsers(dest="command", required=True)
    check = sub.add_parser("check", help="print alerts per run; exit 1 if any fired")
    check.add_argument("logdir", help="a directory of runs, or one run's directory")
    check.add_argument("--json", action="store_true", help=f"print a {JSON_FORMAT} JSON document")
    check.add_argument(
        "--fail-on",
        type=_kinds,
        default=rules.KINDS,
        metavar="KINDS",
        help=f"comma-separated alert kinds that fail the check (default: {','.join(rules.KINDS)})",
    )
    return parser


def _use_tensorboard_without_tensorflow():
    """Makes TensorBoard's file I/O use its TF-free stub in this process.

    TensorBoard imports TensorFlow for file access when it is installed
    (seconds of start-up, GPU probing); registering
    `tensorboard.compat.notf` is TensorBoard's own switch to its stub, which
    reads local files. Set TB_GRADFLOW_USE_TENSORFLOW=1 for remote
    filesystems (gs://, hdfs://) that need TensorFlow's.
    """
    import os
    import types

    if os.environ.get("TB_GRADFLOW_USE_TENSORFLOW") != "1":
        sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))


def main(argv=None):
    """Runs the CLI; returns the exit status (see the module docstring)."""
    args = build_parser().parse_args(argv)
    try:
        report, status = check_impl(args.logdir, fail_on=args.fail_on)
    except FileNotFoundError as e:
        print(f"tb-gradflow: {e}", file=sys.stderr)
        return EXIT_ERROR
    except Exception as e:  # never a traceback: say what failed, exit 2
        print(f"tb-gradflow: cannot read {args.logdir!r}: {type(e).__name__}: {e}", file=sys.stderr)
        return EXIT_ERROR
    if not report["runs"] and not report["unreadable"]:
        status = EXIT_ERROR
        if not args.json:
            print(f"tb-gradflow: no tb_gradflow data under {args.logdir!r}", file=sys.stderr)
    if args.json:
        print(json.dumps(report, indent=2, sort_keys=True))
    elif report["runs"] or report["unreadable"]:
        print(format_text(report))
    return status


def console_main():
    """The `tb-gradflow` console script."""
    _use_tensorboard_without_tensorflow()
    sys.exit(main())


if __name__ == "__main__":
    console_main()
