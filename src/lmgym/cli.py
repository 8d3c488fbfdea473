"""The `lmgym` command line."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.table import Table

from lmgym.errors import InputError, LmgymError, MissingPackageError, UserCodeError

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Fine-tune language models with RL against any reward."
)
console = Console()


_debug = {"on": bool(os.environ.get("LMGYM_DEBUG"))}


@app.callback()
def _options(
    debug: Annotated[
        bool, typer.Option("--debug", help="on an error, print the full traceback (also: LMGYM_DEBUG=1)")
    ] = False,
) -> None:
    """Fine-tune language models with RL against any reward."""
    _debug["on"] = debug or bool(os.environ.get("LMGYM_DEBUG"))


def _fail(err: Exception) -> None:
    """One line for an error lmgym raised on purpose (exit 2); with --debug, the full traceback."""
    if _debug["on"]:
        console.print_exception()
    # str(KeyError) is the repr of its message; show the message itself.
    message = err.args[0] if isinstance(err, KeyError) and not isinstance(err, LmgymError) and err.args else err
    console.print("[bold red]error:[/] ", end="")
    console.print(str(message), highlight=False, markup=False)  # a message may contain [brackets]
    if isinstance(err, UserCodeError) and not _debug["on"]:
        console.print("(lmgym --debug ... shows the whole traceback)", style="dim", highlight=False)
    raise typer.Exit(2)


def _user_errors() -> tuple[type[Exception], ...]:
    """What the commands turn into one line: every error lmgym raises on purpose derives from LmgymError
    (a user's own code that raised inside a reward or task arrives wrapped, as UserCodeError)."""
    return (LmgymError,)


def _quiet_loading() -> None:
    """Per-load progress bars of transformers would drown the training log."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


@app.command()
def train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config (optional: defaults otherwise)")] = None,  # noqa: UP045
    set_: Annotated[list[str], typer.Option("--set", help="override a key: --set ppo.lr=1e-5 (repeatable)")] = [],  # noqa: B006
    resume: Annotated[bool, typer.Option(help="continue run_dir/name from its newest checkpoint")] = False,
    overwrite: Annotated[bool, typer.Option(help="replace an existing run folder of the same name")] = False,
) -> None:
    """Train a policy (PPO by default) on a task."""
    logging.basicConfig(level=logging.WARNING)
    _quiet_loading()
    from lmgym.api import train as run_train

    try:
        run_train(config, set_, resume=resume, overwrite=overwrite, console=console)
    except _user_errors() as err:
        _fail(err)


@app.command("eval")
def eval_(
    run: Annotated[Path, typer.Argument(help="a run folder, e.g. runs/sentiment-ppo-...")],
    split: Annotated[Optional[str], typer.Option(help="train, val or test (default: the run's)")] = None,  # noqa: UP045
    num_prompts: Annotated[Optional[int], typer.Option(help="how many prompts")] = None,  # noqa: UP045
) -> None:
    """Re-evaluate a finished run's final policy."""
    from lmgym.api import evaluate_run

    _quiet_loading()
    try:
        metrics = evaluate_run(run, split, num_prompts, console=console)
    except _user_errors() as err:
        _fail(err)
    table = Table(title=f"evaluation of {run}")
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    console.print(table)


@app.command()
def push(
    run: Annotated[Path, typer.Argument(help="a finished run folder, e.g. runs/sentiment-ppo-...")],
    repo_id: Annotated[str, typer.Argument(help="the hub model repository, e.g. your-name/sentiment-ppo")],
    private: Annotated[bool, typer.Option(help="create the repository private")] = False,
) -> None:
    """Upload a finished run's final/ (model, tokenizer, model card) to the Hugging Face hub."""
    from lmgym.publish import push_run

    try:
        url = push_run(run, repo_id, private)
    except _user_errors() as err:
        _fail(err)
    console.print(f"pushed {run / 'final'} to {url}", highlight=False)


@app.command()
def tasks() -> None:
    """List the registered tasks."""
    from lmgym.data.registry import available_tasks

    table = Table(title="tasks")
    table.add_column("name")
    table.add_column("description")
    for name, description in available_tasks().items():
        table.add_row(name, description)
    console.print(table)


@app.command()
def metrics() -> None:
    """List every metric (each is also a reward), what it needs and whether it can run here."""
    from rich.markup import escape

    from lmgym.rewards.catalog import availability, metric_infos, requirement

    table = Table(title="metrics (any per-sample one is also a reward: reward.name in the config)")
    table.add_column("name")
    table.add_column("measures")
    table.add_column("needs")
    table.add_column("here")
    for name, info in metric_infos().items():
        ok, why = availability(info)
        kind = "" if info.per_sample else " [dim](corpus only)[/]"
        table.add_row(
            escape(name),
            escape(info.description) + kind,
            escape(requirement(info)) or "-",
            "[green]yes[/]" if ok else f"[red]no[/]: {escape(why)}",  # a pip command's [extra] is no markup
        )
    console.print(table)


@app.command()
def bench(
    which: Annotated[
        str, typer.Argument(help="'speed': seconds per phase on the default model; 'grue': the GRUE matrix")
    ] = "speed",
    model: Annotated[str, typer.Option(help="speed: model name")] = "smollm2-135m-instruct",
    batch: Annotated[int, typer.Option(help="speed: prompts per batch")] = 16,
    new_tokens: Annotated[int, typer.Option(help="speed: new tokens per prompt")] = 24,
    repeats: Annotated[int, typer.Option(help="speed: timed iterations after one warm-up")] = 2,
    tasks: Annotated[Optional[str], typer.Option(help="grue: comma-separated tasks (default: all seven)")] = None,  # noqa: UP045
    algos: Annotated[Optional[str], typer.Option(help="grue: comma-separated algorithms (default: all six)")] = None,  # noqa: UP045
    budget: Annotated[Optional[float], typer.Option(help="grue: wall-clock seconds per trained cell")] = None,  # noqa: UP045
    quick: Annotated[bool, typer.Option(help="grue: tiny model, offline data, a few iterations")] = False,
    profile: Annotated[str, typer.Option(help="grue: 'offline' (bundled model) or 'hub' (GRUE's models)")] = "offline",
    out: Annotated[Path, typer.Option(help="grue: output folder (rerun to continue it)")] = Path("runs/grue"),
    set_: Annotated[list[str], typer.Option("--set", help="grue: override a key of every cell's config")] = [],  # noqa: B006
    report: Annotated[
        bool, typer.Option(help="grue: only rebuild the leaderboard and plots from the result files (no training)")
    ] = False,
    seeds: Annotated[int, typer.Option(help="grue: seeds per trained cell (0..N-1; zero-shot has one)")] = 1,
    results: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="grue: folder of the per-cell result files (default: <out>/cells); commit it to keep them"),
    ] = None,
    equal_iterations: Annotated[
        bool,
        typer.Option(help="grue: also train NLPO for each PPO cell's iteration count, without the --budget cap"),
    ] = False,
    rescore: Annotated[
        bool,
        typer.Option(
            help="grue: add to finished cells the metrics whose scoring failed, from their stored generations "
            "(<out>/samples), then rebuild the leaderboard (no training; same --budget/--set as the run)"
        ),
    ] = False,
) -> None:
    """Run a benchmark."""
    if which == "grue":
        logging.basicConfig(level=logging.WARNING)
        _quiet_loading()
        from lmgym.bench.grue import run_grue

        try:
            run_grue(
                out,
                tasks,
                algos,
                profile,
                budget,
                quick,
                set_,
                console=console,
                report=report,
                seeds=seeds,
                results=results,
                equal_iterations=equal_iterations,
                rescore=rescore,
            )
        except _user_errors() as err:
            _fail(err)
        return
    if which != "speed":
        _fail(InputError(f"unknown benchmark {which!r}; available: speed, grue"))
    from lmgym.bench.speed import run_speed_benchmark

    run_speed_benchmark(model=model, batch=batch, new_tokens=new_tokens, repeats=repeats, console=console)


rm_app = typer.Typer(no_args_is_help=True, help="Reward models learned from comparisons.")
app.add_typer(rm_app, name="rm")


@rm_app.command("train")
def rm_train(
    config: Annotated[Optional[Path], typer.Argument(help="YAML config; the rm section (and task, seed, name)")] = None,  # noqa: UP045
    set_: Annotated[list[str], typer.Option("--set", help="override a key: --set rm.epochs=3 (repeatable)")] = [],  # noqa: B006
    overwrite: Annotated[bool, typer.Option(help="replace an existing folder of the same name")] = False,
) -> None:
    """Train a reward model (Bradley–Terry) on comparisons; its folder is a reward (rm.path=...)."""
    logging.basicConfig(level=logging.WARNING)
    _quiet_loading()
    from lmgym.algos.rm_train import train_reward_model
    from lmgym.config import load_config

    try:
        train_reward_model(load_config(config, set_), console=console, overwrite=overwrite)
    except _user_errors() as err:
        _fail(err)


@app.command()
def label(
    sources: Annotated[
        Optional[list[Path]],  # noqa: UP045
        typer.Argument(help="a run folder, a JSONL of {prompt, responses} rows, or two run folders with --eval"),
    ] = None,
    out: Annotated[Optional[Path], typer.Option(help="labels file (JSONL), appended to and continued from")] = None,  # noqa: UP045
    host: Annotated[str, typer.Option(help="address to listen on; any but loopback requires the token")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="port (0: any free one)")] = 8765,
    token: Annotated[
        Optional[str],  # noqa: UP045
        typer.Option(help="access token every request must carry (made and printed when --host is not loopback)"),
    ] = None,
    per_item: Annotated[int, typer.Option(help="judgments per item, each from a different annotator")] = 1,
    sample: Annotated[
        Optional[int],  # noqa: UP045
        typer.Option(help="run source: K fresh samples per held-out prompt from its final policy, all pairs"),
    ] = None,
    eval_: Annotated[bool, typer.Option("--eval", help="blind A/B evaluation of two runs' final generations")] = False,
    seed: Annotated[int, typer.Option(help="seed of the item order, the shown order and --sample")] = 0,
    stats: Annotated[
        Optional[Path],  # noqa: UP045
        typer.Option(help="instead of serving: report on a labels file, write human_eval.json and .png beside it"),
    ] = None,
) -> None:
    """Collect human comparisons in the browser (or report on collected ones with --stats)."""
    from lmgym.label import missing_packages

    missing = missing_packages(stats=stats is not None)
    if missing:
        _fail(MissingPackageError(missing))
    if stats is not None:
        _label_report(stats)
        return
    if not sources or out is None:
        _fail(InputError("usage: lmgym label SOURCE [SOURCE] --out labels.jsonl  (or lmgym label --stats FILE)"))
    from lmgym.label.server import serve

    if sample is not None:
        logging.basicConfig(level=logging.WARNING)
        _quiet_loading()
    try:
        serve(sources, out, host, port, token, per_item, sample, eval_, seed, console)
    except (*_user_errors(), ValueError, OSError) as err:  # bad sources or options; a busy port or labels file
        _fail(err)
    except KeyboardInterrupt:
        pass


def _label_report(path: Path) -> None:
    from lmgym.label.stats import write_stats

    try:
        result, json_path, png_path = write_stats(path)
    except (*_user_errors(), ValueError, OSError) as err:
        _fail(err)
    table = Table(title=f"judgments in {path}")
    for column in ("annotator", "pick", "tie", "skip", "undone"):
        table.add_column(column, justify="left" if column == "annotator" else "right")
    for name, counts in result["annotators"].items():
        table.add_row(name, *(str(counts[k]) for k in ("pick", "tie", "skip", "undone")))
    console.print(table)
    agree = result["agreement"]
    if agree["method"]:
        kappa = "undefined" if agree["kappa"] is None else f"{agree['kappa']:.3f}"
        console.print(
            f"agreement: {agree['method'].capitalize()}'s κ = {kappa} on {agree['items']} items "
            f"(all agree on {agree['observed_agreement']:.0%})"
        )
    else:
        console.print(f"agreement: {agree['note']}")
    bias = result["position_bias"]
    if bias:
        lo, hi = bias["ci95"]
        console.print(
            f"position bias: the response shown first won {bias['left_wins']}/{bias['picks']} picks "
            f"({bias['left_win_rate']:.1%}, 95% CI {lo:.1%}–{hi:.1%}; binomial test p = {bias['p_value']:.3g})"
        )
    for e in result["eval"]:
        lo, hi = e["ci95"]
        console.print(
            f"A = {e['A']} vs B = {e['B']}: A won {e['a_wins']}, B won {e['b_wins']}, {e['ties']} ties; "
            f"A's win rate {e['win_rate_a']:.1%} (ties as half a win; 95% CI {lo:.1%}–{hi:.1%})",
            highlight=False,
        )
    console.print(f"written: {json_path}, {png_path}", highlight=False)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
