"""The `tokreason` command. Thin: parse, hand the overrides to the launcher, print."""
import typer
from typing_extensions import Annotated

app = typer.Typer(
    help="Compare Quiet-STaR, RPT and RLP against continued pretraining on one model, corpus and budget.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False, rich_markup_mode=None)

OVERRIDES_HELP = ("Hydra overrides: key=value, +key=value (add), ~key (remove), group=option "
                  "(e.g. method=cpt model=hf data=text). `tokreason info` lists them.")
HYDRA_ARGS = {"allow_extra_args": True, "ignore_unknown_options": True}


def _fail(message: str, code: int = 2) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code)


def _crash(error: Exception, command: str) -> None:
    """An unexpected failure: one line here, the traceback in a file under the cache dir."""
    import os
    import time
    import traceback
    from pathlib import Path

    from tokreason.experiments.errors import first_line

    folder = Path(os.path.expanduser(os.environ.get("TOKREASON_CACHE", "~/.cache/tokreason"))) / "crashes"
    folder.mkdir(parents=True, exist_ok=True)
    log = folder / f"{time.strftime('%Y-%m-%d_%H-%M-%S')}_{command}_{os.getpid()}.log"
    log.write_text("".join(traceback.format_exception(error)))
    _fail(f"tokreason {command} failed: {type(error).__name__}: {first_line(error)}; the traceback is in {log}")


def _call(command: str, fn, *args):
    """fn(*args), every failure a one-line `error:`: bad input and an interruption (exit 2, or
    the signal's code), anything unexpected with its traceback in a file (_crash)."""
    from tokreason.experiments.errors import UserError
    from tokreason.experiments.training.stopping import Interrupted

    try:
        return fn(*args)
    except UserError as e:
        _fail(str(e))
    except Interrupted as e:
        _fail(str(e), e.exit_code)
    except Exception as e:
        _crash(e, command)


@app.command(context_settings=HYDRA_ARGS)
def train(overrides: Annotated[list[str] | None, typer.Argument(metavar="OVERRIDES", help=OVERRIDES_HELP, show_default=False)] = None,
          multirun: Annotated[bool, typer.Option("-m", "--multirun", help="Sweep: one run per combination of comma-separated values (Hydra multirun).")] = False):
    """Train one method (default: the embedded tiny model on the synthetic corpus); with -m, a sweep."""
    from tokreason.experiments.launch.train import run_train

    summaries = _call("train", run_train, list(overrides or []), multirun)
    for s in summaries:  # the evaluation table went to the log (console and train.log)
        val = f"{s['val_loss']:.4f}" if s["val_loss"] is not None else "n/a"
        tps = f"{s['tokens_per_second']:.0f}" if s.get("tokens_per_second") else "n/a"
        typer.echo(f"{s.get('preset') or s['method']} seed {s['seed']}: {s['steps']} steps, val loss {val}, "
                   f"{tps} tokens/s -> {s['run_dir']}")


@app.command(name="eval", context_settings=HYDRA_ARGS)
def eval_(overrides: Annotated[list[str] | None, typer.Argument(metavar="OVERRIDES", help="run=<run dir> (the trained model against its base), "
                                                                      "or model=... to evaluate a model alone; then eval.* "
                                                                      "overrides, e.g. eval.limit=20 eval.think=[off]", show_default=False)] = None):
    """Benchmarks on the base and the trained model, think off and on, and the deltas."""
    from tokreason.experiments.evaluation.table import format_table
    from tokreason.experiments.launch.evaluate import run_eval

    table, out_dir = _call("eval", run_eval, list(overrides or []))
    typer.echo(format_table(table["rows"]))
    typer.echo(f"evaluated in {table['seconds']:.0f} s -> {out_dir}")


@app.command(context_settings=HYDRA_ARGS)
def smoke(overrides: Annotated[list[str] | None, typer.Argument(metavar="OVERRIDES", help="Overrides for every run, e.g. model=hf model.name_or_path=<folder>; "
                                                                      "smoke.methods=[...] to choose the methods.", show_default=False)] = None):
    """Every method for a couple of steps with a tiny evaluation: finite losses, a changed model, a complete run dir (for CI)."""
    from tokreason.experiments.launch.smoke import failed_message, run_smoke

    results, root = _call("smoke", run_smoke, list(overrides or []))
    for r in results:
        typer.echo(r.line())
    if failed_message(results):
        _fail(f"{failed_message(results)}; their run dirs and train.log are under {root}", code=1)
    typer.echo(f"smoke passed: {len(results)} methods in {sum(r.seconds for r in results):.0f} s -> {root}")


@app.command(context_settings=HYDRA_ARGS)
def info(overrides: Annotated[list[str] | None, typer.Argument(metavar="OVERRIDES", help=OVERRIDES_HELP, show_default=False)] = None):
    """Print the config groups and their options, then the resolved config for the overrides."""
    from omegaconf import OmegaConf

    from tokreason.experiments.errors import UserError
    from tokreason.experiments.launch.compose import compose_config, group_options

    try:
        cfg = compose_config(list(overrides or []), with_hydra=True)
        choices = dict(cfg.hydra.runtime.choices)
        resolved = OmegaConf.to_yaml({k: v for k, v in cfg.items() if k != "hydra"}, resolve=True)
        options = group_options(list(overrides or []))
    except UserError as e:
        _fail(str(e))
    typer.echo("Config groups (choose with group=option):")
    for group, names in options.items():
        typer.echo(f"  {group:<10} {', '.join(names):<32} chosen: {choices.get(group)}")
    typer.echo("\nResolved config:")
    typer.echo(resolved)


@app.command(context_settings=HYDRA_ARGS)
def compare(overrides: Annotated[list[str] | None, typer.Argument(metavar="OVERRIDES", help="experiment=<preset> (default: embedded), budget=steps|tokens|flops, "
                                                                        "compare.* (seeds, methods, corrupt, ...), and overrides for every run.",
                                                                   show_default=False)] = None):
    """cpt, Quiet-STaR, RPT and RLP (and ablations) on one base model, corpus and budget; then the report."""
    from tokreason.experiments.launch.compare import run_compare

    root, summaries = _call("compare", run_compare, list(overrides or []))
    typer.echo(f"{len(summaries)} runs -> {root}; report: {root / 'report.md'}")


@app.command()
def report(paths: Annotated[list[str], typer.Argument(metavar="PATHS", help="Run dirs, or sweep dirs holding run dirs.", show_default=False)],
           out: Annotated[str | None, typer.Option(help="Where report.md and its images go (default: the sweep dir given, else ./report).")] = None,
           against: Annotated[str | None, typer.Option(help="A reference report.json or its folder (e.g. docs/reference/embedded): print each verdict "
                                                            "beside the reference's 95% interval; exit 1 if one falls outside.")] = None):
    """Rebuild the comparison report (report.md + PNGs) from run dirs alone, without W&B."""
    from pathlib import Path

    from tokreason.experiments.errors import UserError

    try:
        from tokreason.experiments.reporting.reference import against_lines, hold_against, load_report
        from tokreason.experiments.reporting.report import build_report, find_runs

        reference = load_report(Path(against)) if against else None  # a bad reference fails before any work
        runs = find_runs([Path(p) for p in paths])
        target = Path(out) if out else (Path(paths[0]) if len(paths) == 1 and not (Path(paths[0]) / "summary.json").exists()
                                        else Path("report"))
        built = build_report(runs, target)
        held = hold_against(built, reference) if reference else None
    except UserError as e:
        _fail(str(e))
    except Exception as e:
        _crash(e, "report")
    skipped = f" ({len(runs.skipped)} unfinished skipped)" if runs.skipped else ""
    typer.echo(f"report of {len(runs)} runs{skipped} -> {target / 'report.md'}")
    if held:
        typer.echo("\n".join(against_lines(held)))
        if held["inside"] < held["compared"]:
            raise typer.Exit(1)


@app.command(name="lm-eval")
def lm_eval_(run: Annotated[str, typer.Option(help="A finished run dir (its model/ folder is evaluated).")],
             tasks: Annotated[str, typer.Option(help="Comma-separated lm-eval task names.")],
             think: Annotated[str, typer.Option(help="off: the plain LM; on: the method's own inference.")] = "off",
             include_path: Annotated[str | None, typer.Option(help="A folder of your own task YAMLs.")] = None,
             limit: Annotated[int | None, typer.Option(help="At most this many examples per task.")] = None,
             batch_size: Annotated[int, typer.Option(help="Sequences per forward pass.")] = 16,
             output: Annotated[str | None, typer.Option(help="Write the per-task results here as JSON.")] = None):
    """Any lm-evaluation-harness task on a run's trained model, think off or on (needs the lm-eval extra)."""
    import json
    from pathlib import Path

    from tokreason.experiments.errors import UserError

    try:
        from tokreason.experiments.evaluation.lm_eval_bridge import run_lm_eval

        results = run_lm_eval(run, think, [t for t in tasks.split(",") if t], include_path, limit, batch_size,
                              Path(output) if output else None)
    except (UserError, ValueError) as e:
        _fail(str(e))
    except Exception as e:
        _crash(e, "lm-eval")
    typer.echo(json.dumps(results["results"], indent=2, default=str))


def main() -> None:
    app(prog_name="tokreason")


if __name__ == "__main__":
    main()
