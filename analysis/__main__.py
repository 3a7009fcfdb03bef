"""``python -m analysis <command>``: the paper's figures and tables from MLflow runs.

Examples:
  python -m analysis paper --parent-run-id ID --out results/
  python -m analysis curves --parent-run-id ID --out results/ --band std
  python -m analysis ablation --axis lambda --experiment offline_rl --filter "tags.algo = 'edac'"
  python -m analysis efficiency --parent-run-id ID --fraction 0.9 --baseline pretrain=none
  python -m analysis window --parent-run-id ID --window 200000:300000
  python -m analysis finetune --parent-run-id ID --env-steps 200000
  python -m analysis export --parent-run-id ID --metrics eval/normalized_score_mean,offline_rl/critic_loss
  python -m analysis results --parent-run-id ID --out docs
  python -m analysis aggregate --parent-run-id ID --final window --window 200k:300k
  python -m analysis profiles --parent-run-id ID
  python -m analysis improvement --parent-run-id ID --x pretrain=ac --y pretrain=none
  python -m analysis progress --sweep efficiency --jobs
  python -m analysis runs --filter "tags.pretrain = 'ac'" --status FINISHED
  python -m analysis curves --from-csv docs/results/efficiency.csv.gz --out results/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from analysis.aggregate import AXES, CI_METHODS
from analysis.load import DEFAULT_CACHE, DEFAULT_EXPERIMENT, SCORE, AnalysisError

EPILOG = """selection: --parent-run-id (a sweep's children) or --experiment, narrowed by --sweep and
--filter (MLflow search syntax, e.g. "tags.pretrain = 'ac' and params.seed = '0'"). Store:
--tracking-uri, else $MLFLOW_TRACKING_URI, else sqlite:///<checkout>/mlflow/mlflow.db.
Outputs go to --out and are logged as artifacts (under 'analysis/<command>-<UTC time>/') on the sweep's parent run
(or --log-to RUN_ID); --no-artifacts to skip."""


def _csv(text: str | None) -> list[str] | None:
    return None if text is None else [t.strip() for t in text.split(",") if t.strip()]


def _window(text: str) -> tuple[int, int]:
    try:
        low, high = text.replace("k", "000").split(":")
        return int(float(low)), int(float(high))
    except ValueError:
        raise argparse.ArgumentTypeError(f"window must look like 200000:300000 or 200k:300k, "
                                         f"not {text!r}") from None


def _common(p: argparse.ArgumentParser, figure: bool = False, outputs: bool = True) -> None:
    s = p.add_argument_group("run selection")
    s.add_argument("--tracking-uri", help="MLflow store (sqlite:///path/mlflow.db or http://host:port)")
    s.add_argument("--parent-run-id", help="the sweep's parent run: analyse its child runs")
    s.add_argument("--experiment", default=None,
                   help=f"experiment name (default {DEFAULT_EXPERIMENT}; ignored with --parent-run-id)")
    s.add_argument("--sweep", help="only runs with this 'sweep' tag")
    s.add_argument("--filter", default="", help="MLflow search filter string")
    s.add_argument("--all-statuses", action="store_true",
                   help="include RUNNING / FAILED / KILLED runs (default: FINISHED only)")
    s.add_argument("--cache-dir", default=str(DEFAULT_CACHE),
                   help="metric-history cache (per run, keyed by its last update)")
    s.add_argument("--no-cache", action="store_true", help="always fetch from the store")
    g = p.add_argument_group("grouping")
    g.add_argument("--metric", default=SCORE, help=f"metric to analyse (default {SCORE})")
    g.add_argument("--variant", type=_csv, help="comma-separated run columns that make a line / "
                   "table column (default: the config choices that differ, e.g. pretrain)")
    g.add_argument("--panel", type=_csv, help="comma-separated run columns that make a panel / "
                   "table row (default: dataset_name, with algo in front when several)")
    g.add_argument("--min-seeds", type=int, default=None,
                   help="plot a step only where at least this many seeds have a value "
                        "(default: all runs of the line)")
    if figure:
        f = p.add_argument_group("figure")
        f.add_argument("--ci", choices=sorted(CI_METHODS), default="t",
                       help="interval: Student-t over seeds (default) or percentile bootstrap")
        f.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
        f.add_argument("--band", choices=("ci", "std"), default="ci",
                       help="shade the interval (Fig. 2) or mean ± std (appendix figures)")
        f.add_argument("--title", default=None)
    if outputs:
        o = p.add_argument_group("outputs")
        o.add_argument("--out", default="results", help="output folder (default ./results)")
        o.add_argument("--log-to", help="log outputs as artifacts of this run "
                       "(default: the sweep's parent run)")
        o.add_argument("--no-artifacts", action="store_true", help="do not log artifacts")
        o.add_argument("--artifact-path", default=None,
                       help="artifact folder on the run (default analysis/<command>-<UTC time>, "
                            "so that analyses run one after another keep each other's files)")


def _statistics(p: argparse.ArgumentParser, improvement: bool = False) -> None:
    """Options of the Agarwal et al. (2021) statistics (aggregate, profiles, improvement, paper)."""
    from analysis.score_statistics import OPTIMALITY_TARGET

    g = p.add_argument_group("aggregate statistics (Agarwal et al. 2021)")
    g.add_argument("--final", choices=("last", "window"), default="last",
                   help="each run's final score: its last evaluation (default) or its mean over "
                        "--window (appendix G)")
    if not any(a.dest == "window" for a in p._actions):
        g.add_argument("--window", type=_window, default=None,
                       help="LOW:HIGH updates for --final window (default: the last third)")
    g.add_argument("--task", type=_csv, default=None,
                   help="comma-separated run columns that make a task (default: dataset_name)")
    g.add_argument("--resamples", type=int, default=None,
                   help="bootstrap resamples (default as rliable: 50,000 for aggregate, 2,000 for "
                        "profiles and improvement)")
    g.add_argument("--seed", type=int, default=0, help="bootstrap random seed (default 0)")
    if not any(a.dest == "level" for a in p._actions):
        g.add_argument("--level", type=float, default=0.95, help="interval level (default 0.95)")
    g.add_argument("--optimality-target", type=float, default=OPTIMALITY_TARGET,
                   help=f"optimality gap measured to this normalised score (default "
                        f"{OPTIMALITY_TARGET:g}, the expert)")
    if improvement:
        g.add_argument("--x", help="improvement: variant X (label, value or column=value)")
        g.add_argument("--y", help="improvement: variant Y")
        if not any(a.dest == "baseline" for a in p._actions):
            g.add_argument("--baseline", default=None,
                           help="without --x/--y: every variant against this one (default "
                                "pretrain=none when present)")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m analysis", description="The paper's figures and tables from MLflow runs.",
        epilog=__doc__.split("Examples:", 1)[1] and "examples:" + __doc__.split("Examples:", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", metavar="command", required=True)
    fmt = argparse.RawDescriptionHelpFormatter

    p = sub.add_parser("paper", help="curves + efficiency + window (+ finetune) in one go",
                       description="Fig. 2 curves, the efficiency table, the appendix-G window "
                       "table and (when runs fine-tune) the fine-tuning table, plus summary.md; "
                       "logged on the sweep's parent run.", epilog=EPILOG, formatter_class=fmt)
    _common(p, figure=True)
    p.add_argument("--fraction", type=float, default=0.9,
                   help="efficiency target: this fraction of the baseline's final score (0.9)")
    p.add_argument("--baseline", default=None,
                   help="efficiency baseline, e.g. pretrain=none (the default when present)")
    p.add_argument("--final-last", type=int, default=1,
                   help="baseline final score = mean of each run's last N evaluations (default 1)")
    p.add_argument("--window", type=_window, default=None,
                   help="window table: LOW:HIGH updates, e.g. 200k:300k (default: last third)")
    p.add_argument("--env-steps", type=int, default=None,
                   help="fine-tuning table: online score at this many env steps (default: final)")
    _statistics(p, improvement=True)

    p = sub.add_parser("curves", help="learning curves like Fig. 2 (PNG)",
                       description="Normalised score vs gradient updates (pre-training included), "
                       "a panel per dataset, a line per variant, shaded interval, pre-training end "
                       "marked.", epilog=EPILOG, formatter_class=fmt)
    _common(p, figure=True)
    p.add_argument("--name", default="curves", help="PNG file stem (default curves)")
    p.add_argument("--from-csv", default=None, metavar="FILE",
                   help="plot the evaluations in FILE (written by `results --export`), without "
                        "the store")

    p = sub.add_parser("ablation", help="learning curves along one ablation axis (PNG)",
                       description="Learning curves with --axis as the line variable. Axes: "
                       + ", ".join(f"{k} ({v})" for k, v in AXES.items())
                       + "; or any run column.", epilog=EPILOG, formatter_class=fmt)
    _common(p, figure=True)
    p.add_argument("--axis", required=True, help="lambda, layernorm, pretrain, qt_max, ...")
    p.add_argument("--name", default=None, help="PNG file stem (default ablation_<axis>)")

    p = sub.add_parser("efficiency", help="updates to reach X%% of the baseline's final score",
                       description="Per variant: updates (pre-training included) until the seed-"
                       "mean curve reaches --fraction of the baseline's final score, and the ratio "
                       "to the baseline's.", epilog=EPILOG, formatter_class=fmt)
    _common(p)
    p.add_argument("--fraction", type=float, default=0.9, help="default 0.9")
    p.add_argument("--baseline", default=None, help="e.g. pretrain=none (the default when present)")
    p.add_argument("--final-last", type=int, default=1,
                   help="baseline final score = mean of each run's last N evaluations (default 1)")

    p = sub.add_parser("window", help="appendix-G table: mean ± std over an update window",
                       description="Each run's mean over evaluations in the window, then mean ± std "
                       "over seeds; rows = panels, columns = variants (Tables 2 and 5).",
                       epilog=EPILOG, formatter_class=fmt)
    _common(p)
    p.add_argument("--window", type=_window, default=None,
                   help="LOW:HIGH updates, e.g. 200k:300k (default: the last third of training)")

    p = sub.add_parser("finetune", help="offline score, online score after N env steps, δ",
                       description="Table 1 of 'finetuning from offline RL'.", epilog=EPILOG,
                       formatter_class=fmt)
    _common(p)
    p.add_argument("--env-steps", type=int, default=None,
                   help="online score at this many env steps of fine-tuning (default: final eval)")

    p = sub.add_parser("results", help="the reproduction page: docs/results.md + its figure",
                       description="Per dataset: the curves with 95%% intervals, the baseline's "
                       "asymptote and whether each curve converged, updates and compute time to "
                       "90%% of the baseline's asymptote with bootstrap intervals of their ratios, "
                       "the paper's '< 1/2' verdict, the stability of the final scores, IQM and "
                       "P(pre-training > none); as one Markdown page (--out/--name.md). From a "
                       "store (--parent-run-id ...; --export FILE first writes the runs' "
                       "evaluations to FILE and builds the page from it) or from such a file "
                       "(--from-csv FILE, no store needed).", epilog=EPILOG, formatter_class=fmt)
    _common(p, outputs=False)
    p.add_argument("--out", default="docs", help="folder of the page and its figure (default docs)")
    p.add_argument("--name", default="results", help="file stem (default results)")
    p.add_argument("--baseline", default=None, help="e.g. pretrain=none (the default when present)")
    p.add_argument("--export", default=None, metavar="FILE",
                   help="write the runs' evaluations to FILE (.csv.gz) and build the page from it")
    p.add_argument("--from-csv", default=None, metavar="FILE", nargs="+",
                   help="build the page from FILE (written by --export), or from several such files "
                        "together (a sweep continued under a new parent run), without the store")
    p.add_argument("--command", dest="reproduce", default=None,  # not `command`: the subcommand's
                   help="the command that reproduces the runs, quoted on the page")
    p = sub.add_parser("aggregate", help="IQM / median / mean / optimality gap with bootstrap CIs",
                       description="Per variant, over its runs x tasks: interquartile mean, "
                       "median, mean and optimality gap of the final normalised score, with "
                       "stratified bootstrap confidence intervals (Agarwal et al. 2021); table "
                       "and figure.", epilog=EPILOG, formatter_class=fmt)
    _common(p)
    _statistics(p)
    p.add_argument("--title", default=None)

    p = sub.add_parser("profiles", help="performance profiles with bootstrap bands",
                       description="Per variant: the fraction of runs whose final normalised "
                       "score is above τ, for τ over the score range, with stratified bootstrap "
                       "bands (Agarwal et al. 2021); figure and CSV.", epilog=EPILOG,
                       formatter_class=fmt)
    _common(p)
    _statistics(p)
    p.add_argument("--title", default=None)
    p.add_argument("--taus", type=int, default=101, help="number of τ values (default 101)")

    p = sub.add_parser("improvement", help="probability that variant X beats Y, with CI",
                       description="P(X > Y): the probability that a run of X has a higher final "
                       "score than a run of Y on the same task, averaged over tasks (Mann-Whitney "
                       "U), with a stratified bootstrap interval (Agarwal et al. 2021).",
                       epilog=EPILOG, formatter_class=fmt)
    _common(p)
    _statistics(p, improvement=True)
    p.add_argument("--title", default=None)

    p = sub.add_parser("export", help="tidy CSV of runs and metric histories",
                       description="runs.csv (one row per run, every config choice) and "
                       "metrics.csv (one row per run, metric, step).", epilog=EPILOG,
                       formatter_class=fmt)
    _common(p)
    p.add_argument("--metrics", type=_csv, default=None,
                   help=f"comma-separated metric keys (default {SCORE})")
    p = sub.add_parser("progress", help="where a sweep stands: finished / running / waiting, ETA",
                       description="A sweep's jobs (the latest attempt of each): status, update "
                       "steps done of the planned total, current rate; for the sweep the counts, "
                       "updates done of the total, the best score so far and an ETA from the "
                       "running jobs' measured rates.", formatter_class=fmt)
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else the checkout's)")
    p.add_argument("--parent-run-id", help="the sweep's parent run")
    p.add_argument("--sweep", help="the sweep's name (its newest parent run)")
    p.add_argument("--experiment", default=DEFAULT_EXPERIMENT)
    p.add_argument("--jobs", action="store_true", help="also one row per job")

    p = sub.add_parser("runs", help="list runs: id, name, status, method, dataset, seed, score",
                       description="The selected runs, newest first (sweep parents left out): "
                       "id, name, status, algorithm, pre-training, dataset, seed, final "
                       "normalised score, planned updates, start time.", epilog=EPILOG,
                       formatter_class=fmt)
    p.add_argument("--tracking-uri", help="MLflow store (default: $MLFLOW_TRACKING_URI, else the checkout's)")
    p.add_argument("--parent-run-id", help="only this sweep's children")
    p.add_argument("--experiment", default=None, help=f"experiment name (default {DEFAULT_EXPERIMENT})")
    p.add_argument("--sweep", help="only runs with this 'sweep' tag")
    p.add_argument("--filter", default="", help="MLflow search filter string")
    p.add_argument("--status", type=_csv, default=None,
                   help="comma-separated statuses to keep, e.g. FINISHED,RUNNING (default: all)")
    p.add_argument("--limit", type=int, default=None, help="at most this many (the newest)")
    p.add_argument("--csv", default=None, help="also write the table to this CSV file")

    p = sub.add_parser("compare", help="algorithms side by side from results files (no store)",
                       description="A page comparing algorithms from files written by `results "
                       "--export`: curves, final scores per seed with 95%% intervals, IQM and "
                       "P(algo > the first one). --csv FILE[:COLUMN=VALUE,...] keeps the file's "
                       "runs with those values; the first file's algorithm is the reference.",
                       formatter_class=fmt)
    p.add_argument("--csv", action="append", required=True, metavar="FILE[:COLUMN=VALUE,...]",
                   help="a results file, optionally narrowed (repeat for each)")
    p.add_argument("--out", default="docs", help="folder of the page and its figure (default docs)")
    p.add_argument("--name", default="compare", help="file stem (default compare)")
    p.add_argument("--command", dest="reproduce", default=None,
                   help="the command the page quotes to write it again")
    return parser


def _runs(args) -> int:
    from analysis.listing import list_runs, markdown

    frame = list_runs(args.tracking_uri, parent_run_id=args.parent_run_id,
                      experiment=args.experiment, filter_string=args.filter, sweep=args.sweep,
                      statuses=[s.upper() for s in args.status] if args.status else None,
                      limit=args.limit)
    print(markdown(frame))
    print(f"{len(frame)} run(s)", file=sys.stderr)
    if args.csv:
        frame.to_csv(args.csv, index=False)
        print(f"wrote {args.csv}")
    return 0


def _progress(args) -> int:
    from analysis.load import make_client
    from offline_rl.progress import find_parent, sweep_progress

    client = make_client(args.tracking_uri)
    experiment = client.get_experiment_by_name(args.experiment)
    if experiment is None:
        raise AnalysisError(f"no experiment {args.experiment!r} in {client.tracking_uri}")
    parent = args.parent_run_id or (find_parent(client, experiment.experiment_id, args.sweep)
                                    if args.sweep else None)
    if parent is None:
        raise AnalysisError("give --parent-run-id, or --sweep with the name of a sweep in this store"
                            if not args.sweep else f"no sweep named {args.sweep!r} in {client.tracking_uri}")
    progress = sweep_progress(client, experiment.experiment_id, parent)
    print(progress.line())
    if args.jobs:
        print("\n".join(progress.table()))
    return 0


def _load(args, extra: list[str] = ()):
    from analysis.load import load_runs

    metrics = list(dict.fromkeys([*(getattr(args, "metrics", None) or [args.metric]), *extra]))
    start = time.perf_counter()
    rs = load_runs(args.tracking_uri, parent_run_id=args.parent_run_id, experiment=args.experiment,
                   filter_string=args.filter, sweep=args.sweep, metrics=metrics,
                   statuses=None if args.all_statuses else ("FINISHED",),
                   cache=False if args.no_cache else Path(args.cache_dir))
    print(f"loaded {len(rs.runs)} runs, {len(rs.metrics)} metric rows in "
          f"{time.perf_counter() - start:.1f}s", file=sys.stderr)
    return rs


def _finish(args, rs, files: list[Path], warnings: list[str]) -> None:
    for w in dict.fromkeys(warnings):
        print(f"warning: {w}", file=sys.stderr)
    for f in files:
        print(f"wrote {f}")
    target = args.log_to or rs.parent_run_id
    if args.no_artifacts:
        return
    if target:
        from analysis.report import log_artifacts

        log_artifacts(rs, target, files, args.artifact_path)
        print(f"logged {len(files)} artifact(s) to run {target} under {args.artifact_path}/")
    else:
        print("not logged as artifacts: no sweep parent run (pass --log-to RUN_ID)", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "artifact_path", "") is None:
        args.artifact_path = f"analysis/{args.command}-{time.strftime('%Y%m%d-%H%M%S', time.gmtime())}"
    try:
        return _run(args)
    except AnalysisError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:
        from offline_rl.spool import is_unreachable, reason

        if is_unreachable(exc, store_writes=False):
            from analysis.load import default_tracking_uri

            uri = getattr(args, "tracking_uri", None) or default_tracking_uri()
            print(f"error: the MLflow store {uri} does not answer ({reason(exc)}); start its server, "
                  f"or pass --tracking-uri (or set MLFLOW_TRACKING_URI) to a store that answers",
                  file=sys.stderr)
            return 2
        if isinstance(exc, OSError) and exc.filename is not None:
            # a path of the user's: --out on a full disk or under a file, an unreadable file
            print(f"error: {exc.filename}: {exc.strerror or exc}", file=sys.stderr)
            return 2
        raise


def _run(args) -> int:
    if args.command == "progress":
        return _progress(args)
    if args.command == "runs":
        return _runs(args)
    out = Path(args.out)
    if args.command == "paper":
        from analysis.report import paper

        rs = _load(args)
        res = paper(rs, out, metric=args.metric, variant=args.variant, panel=args.panel,
                    ci=args.ci, level=args.level, band=args.band, title=args.title,
                    min_seeds=args.min_seeds, fraction=args.fraction,
                    baseline=args.baseline, final_last=args.final_last, window=args.window,
                    env_steps=args.env_steps, statistics_options=_statistics_kwargs(args),
                    log_to=args.log_to, log=not args.no_artifacts, artifact_path=args.artifact_path)
        for table in res.tables.values():
            print(table.markdown())
        for w in res.warnings:
            print(f"warning: {w}", file=sys.stderr)
        for f in res.files:
            print(f"wrote {f}")
        if res.logged_to:
            print(f"logged {len(res.files)} artifact(s) to run {res.logged_to} under "
                  f"{args.artifact_path}/")
        elif not args.no_artifacts:
            print("not logged as artifacts: no sweep parent run (pass --log-to RUN_ID)",
                  file=sys.stderr)
        return 0
    if args.command in ("curves", "ablation"):
        from analysis.figures import plot_ablation, plot_learning_curves

        if getattr(args, "from_csv", None):
            from analysis.load import from_csv

            rs = from_csv(args.from_csv)
            args.no_artifacts = True  # no store to log them to
        else:
            rs = _load(args)
        kwargs = dict(ci=args.ci, level=args.level, band=args.band, min_seeds=args.min_seeds,
                      title=args.title)
        if args.command == "curves":
            res = plot_learning_curves(rs, args.metric, args.variant, args.panel,
                                       out=out / f"{args.name}.png", **kwargs)
        else:
            name = args.name or f"ablation_{args.axis.replace('.', '_')}"
            res = plot_ablation(rs, args.axis, args.metric, args.panel,
                                out=out / f"{name}.png", **kwargs)
        _finish(args, rs, [res.path], rs.warnings + res.warnings)
        return 0
    if args.command in ("efficiency", "window", "finetune"):
        from analysis import tables

        extra = [tables.FINETUNE_ENV_STEPS] if getattr(args, "env_steps", None) is not None else []
        rs = _load(args, extra)
        if args.command == "efficiency":
            table = tables.efficiency_table(rs, args.metric, args.variant, args.panel,
                                            baseline=args.baseline, fraction=args.fraction,
                                            final_last=args.final_last, min_seeds=args.min_seeds)
        elif args.command == "window":
            low, high = args.window or (None, None)
            table = tables.window_table(rs, low, high, args.metric, args.variant, args.panel)
        else:
            table = tables.finetune_table(rs, args.env_steps, args.metric, args.variant, args.panel)
        print(table.markdown())
        _finish(args, rs, table.write(out, args.command), rs.warnings + table.warnings)
        return 0
    if args.command == "results":
        from analysis.results import results_page

        from analysis.load import export_csv, from_csv
        from analysis.results import machine

        data = args.from_csv
        if data is None:
            rs = _load(args)
            if args.export:
                data = [str(export_csv(rs, args.export, [args.metric], extra={"machine": machine()}))]
                print(f"wrote {data[0]}")
        rs = from_csv(data) if data else rs
        page = results_page(rs, args.out, name=args.name, metric=args.metric,
                            baseline=args.baseline, command=args.reproduce, data=data,
                            variant=args.variant, panel=args.panel, min_seeds=args.min_seeds)
        for sentence in page.verdicts.values():
            print(sentence)
        for w in page.warnings:
            print(f"warning: {w}", file=sys.stderr)
        print(f"wrote {page.path} and {page.figure}")
        return 0
    if args.command == "compare":
        from analysis.compare import compare

        path = compare(args.csv, args.out, args.name, command=args.reproduce)
        print(f"wrote {path} and {path.with_suffix('.png')}")
        return 0
    if args.command == "export":
        rs = _load(args)
        out.mkdir(parents=True, exist_ok=True)
        runs = rs.runs.drop(columns=[c for c in rs.runs if c.startswith("_")])
        runs.to_csv(out / "runs.csv", index=False)
        rs.metrics[["run_id", "run_name", "metric", "step", "value", "timestamp"]].to_csv(
            out / "metrics.csv", index=False)
        _finish(args, rs, [out / "runs.csv", out / "metrics.csv"], rs.warnings)
        return 0
    if args.command in ("aggregate", "profiles", "improvement"):
        from analysis.report import statistics

        rs = _load(args)
        res = statistics(rs, out, [args.command], **_statistics_kwargs(args),
                         taus=getattr(args, "taus", 101), title=args.title)
        for table in res.tables.values():
            print(table.markdown())
        _finish(args, rs, res.files, rs.warnings + res.warnings)
        return 0
    raise AssertionError(args.command)


def _statistics_kwargs(args) -> dict:
    return dict(metric=args.metric, variant=args.variant, task=args.task, final=args.final,
                window=args.window, level=args.level, n_resamples=args.resamples, seed=args.seed,
                target=args.optimality_target, x=getattr(args, "x", None),
                y=getattr(args, "y", None), baseline=getattr(args, "baseline", None))


if __name__ == "__main__":
    sys.exit(main())
