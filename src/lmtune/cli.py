"""The `lmtune` command: one dispatch table of subcommands; each only wires library calls.

User errors (bad config, missing file, bad data, incompatible model/task) print one
paragraph and exit with code 2. Anything else is a bug: a short message, exit 1, and the
traceback with --debug. `lmtune pipeline` exits 3 when its release gate refuses the model.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from lmtune.cli_args import flags_as_flags, rewrite_argv
from lmtune.cli_common import (
    ConfigArg,
    Overrides,
    console,
    err_console,
    load_noted,
    print_baselines,
    print_run_folder,
    print_summary,
)
from lmtune.cli_config import config_app
from lmtune.cli_ops import monitor_app, pipeline, registry_app, serve
from lmtune.errors import UserError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Fine-tune pre-trained language models: prepare, train, eval, score, feedback, export, pipeline.",
)


@app.callback()
def _root(
    debug: Annotated[
        bool, typer.Option("--debug", help="Show tracebacks for internal errors.")
    ] = False,
) -> None:
    # Declared here so typer accepts it and --help lists it; main() reads it from argv,
    # because it catches errors outside typer's call.
    del debug


@app.command()
def prepare(config: ConfigArg, overrides: Overrides = None) -> None:
    """Load, validate, clean and split the data; write splits and data_report.json/.md."""
    from lmtune.config import dump_config
    from lmtune.data.pipeline import prepare_data
    from lmtune.data.trainset import set_token_stats, token_lengths
    from lmtune.models.load import load_tokenizer
    from lmtune.train.output_dir import require_dir

    cfg = load_noted(config, overrides)
    out = require_dir(cfg.run.output_dir)
    (out / "config.yaml").write_text(dump_config(cfg))
    tok = load_tokenizer(cfg.model)
    prepared = prepare_data(cfg, out, say=print)
    lengths = {s: token_lengths(tok, rows) for s, rows in prepared.splits.items()}
    set_token_stats(out, prepared.report, lengths)  # batched: one tokenizer call per 1k rows
    sizes = ", ".join(f"{k} {len(v)}" for k, v in prepared.splits.items())
    console.print(f"format {prepared.format}; {sizes}")
    console.print(f"report: {out / 'data_report.md'}")


@app.command()
def train(
    config: ConfigArg,
    overrides: Overrides = None,
    resume: Annotated[
        bool, typer.Option("--resume", help="Continue from the latest checkpoint.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force", help="With --resume: accept safe config changes (lr, steps, cadences)."
        ),
    ] = False,
    nproc: Annotated[
        int,
        typer.Option(
            "--nproc", help="Processes to train with on this machine (launches torchrun)."
        ),
    ] = 1,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Replace a previous run in run.output_dir (its checkpoints, model)."
        ),
    ] = False,
    no_plan_check: Annotated[
        bool,
        typer.Option("--no-plan-check", help="Skip the memory plan check (`lmtune plan`)."),
    ] = False,
    nnodes: Annotated[int, typer.Option("--nnodes", help="Machines in the job.")] = 1,
    node_rank: Annotated[
        int, typer.Option("--node-rank", help="This machine's rank (0 at --master-addr).")
    ] = 0,
    master_addr: Annotated[
        str | None, typer.Option("--master-addr", help="Address of the machine of rank 0.")
    ] = None,
    master_port: Annotated[
        int, typer.Option("--master-port", help="Rendezvous port on --master-addr.")
    ] = 29500,
) -> None:
    """Train a model as the config says; the run folder gets everything."""
    from lmtune.runtime.dist import Dist
    from lmtune.runtime.launch import LaunchPlan, launch
    from lmtune.train.output_dir import check_fresh
    from lmtune.train.run import run_training

    cfg = load_noted(config, overrides)  # validate before spawning workers
    plan = LaunchPlan(nproc, nnodes, node_rank, master_addr, master_port)
    if "WORLD_SIZE" not in os.environ:  # once, before any worker starts
        check_fresh(cfg.run.output_dir, resume=resume, overwrite=overwrite)
        if not no_plan_check:  # exit 2 with advice rather than out of memory mid-run
            from lmtune.runtime.plan import check_fits

            check_fits(cfg, nproc=nproc * nnodes)
        if plan.wanted():
            raise typer.Exit(launch(plan, sys.argv[1:]))
    try:
        summary = run_training(cfg, resume=resume, quiet=quiet, force=force)
    finally:
        Dist.get().close()
    if Dist.get().is_main:
        print_summary(summary)
        if summary.get("baselines"):
            print_baselines(summary["baselines"])
        print_run_folder(Path(cfg.run.output_dir))


from lmtune.runtime.plan_cli import plan_command  # noqa: E402 - its own module, registered here

app.command("plan")(plan_command)


@app.command()
def tune(
    config: ConfigArg,
    overrides: Overrides = None,
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue the search in OUTPUT_DIR/study.db (finished trials are kept).",
        ),
    ] = False,
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bars.")] = False,
) -> None:
    """Search hyperparameters (the config's search: block); each trial is a run folder."""
    from lmtune.search.hpo import run_search

    run_search(load_noted(config, overrides), resume=resume, quiet=quiet)


@app.command("eval")
def eval_cmd(
    model: Annotated[Path, typer.Argument(help="Run folder or model folder.")],
    data: Annotated[Path, typer.Option("--data", help="Labelled file to evaluate on.")],
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default RUN/eval).")
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 64,
    baselines: Annotated[
        bool,
        typer.Option(
            "--baselines",
            help="Also score the base model zero-shot and few-shot on the same rows (baselines.json).",
        ),
    ] = False,
    shots: Annotated[
        int | None,
        typer.Option(
            "--shots",
            min=1,
            help="Few-shot examples per class (default: the run's baselines.shots).",
        ),
    ] = None,
) -> None:
    """Evaluate a trained model on a labelled file; writes eval.json (and baselines.json)."""
    from lmtune.evaluate.run import run_eval

    result = run_eval(model, data, out, batch_size, baselines=baselines, shots=shots)
    table = Table("metric", "value")
    for k, v in result.items():
        if isinstance(v, float):
            table.add_row(k, f"{v:.4f}")
    console.print(table)
    console.print(f"written: {Path(result['out_dir']) / 'eval.json'}")
    if (Path(result["out_dir"]) / "report.html").is_file():
        console.print(f"written: {Path(result['out_dir']) / 'report.html'}")
    if result.get("baselines"):
        print_baselines(result["baselines"])
        console.print(f"written: {Path(result['out_dir']) / 'baselines.json'}")


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="Run folder or model folder (classifier or qa).")],
    input: Annotated[
        Path,
        typer.Option(
            "--input",
            help="Texts: .txt one per line, or jsonl/csv with a text column; qa: SQuAD JSON or rows with context and question.",
        ),
    ],
    out: Annotated[
        Path | None, typer.Option("--out", help="Write predictions as jsonl here.")
    ] = None,
) -> None:
    """Label a file of texts with a trained classifier, or answer its questions (task qa)."""
    from lmtune.evaluate.run import run_predict

    preds = run_predict(model, input, out)
    if out is None:
        for p in preds:
            print(json.dumps(p, ensure_ascii=False))
    else:
        console.print(f"{len(preds)} predictions written to {out}")


@app.command()
def generate(
    model: Annotated[Path, typer.Argument(help="Run folder or model folder (causal LM).")],
    prompt: Annotated[
        list[str] | None, typer.Option("--prompt", help="A prompt (repeatable).")
    ] = None,
    prompts: Annotated[
        Path | None, typer.Option("--prompts", help="File of prompts (.txt lines or jsonl 'text').")
    ] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    temperature: Annotated[float, typer.Option("--temperature", help="0 = greedy.")] = 0.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Complete prompts with a fine-tuned causal LM (stops at the end-of-sequence token)."""
    from lmtune.evaluate.run import read_texts, run_generate

    texts = list(prompt or [])
    if prompts is not None:
        texts += [r["text"] for r in read_texts(prompts)]
    if not texts:
        raise UserError("give at least one --prompt TEXT or --prompts FILE")
    for p, completion in zip(
        texts, run_generate(model, texts, max_new_tokens, temperature, top_p, seed), strict=True
    ):
        print(json.dumps({"prompt": p, "completion": completion}, ensure_ascii=False))


@app.command()
def feedback(
    model: Annotated[
        str, typer.Option("--model", help="Run or model folder (causal LM), or a hub id.")
    ],
    prompts: Annotated[
        Path, typer.Option("--prompts", help="Prompts: .txt lines, or jsonl/csv with 'prompt'.")
    ],
    out: Annotated[
        Path, typer.Option("--out", help="Preferences jsonl (appended; resumed when it exists).")
    ],
    samples_per_prompt: Annotated[
        int,
        typer.Option(
            "--samples-per-prompt",
            help="Completions sampled; the first two different ones are shown.",
        ),
    ] = 2,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens")] = 64,
    temperature: Annotated[
        float, typer.Option("--temperature", help="Sampling temperature (> 0).")
    ] = 1.0,
    top_p: Annotated[float, typer.Option("--top-p")] = 1.0,
    seed: Annotated[int, typer.Option("--seed")] = 0,
) -> None:
    """Compare two sampled completions per prompt in the terminal; every answer is saved."""
    from lmtune.feedback import run_feedback

    run_feedback(model, prompts, out, samples_per_prompt, max_new_tokens, temperature, top_p, seed)


@app.command()
def score(
    model: Annotated[Path, typer.Argument(help="Reward-model run folder or model folder.")],
    input: Annotated[
        Path,
        typer.Option(
            "--input", help="jsonl/csv rows: prompt + response, or prompt + chosen + rejected."
        ),
    ],
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write scored rows as jsonl here (default: print them)."),
    ] = None,
    batch_size: Annotated[int, typer.Option("--batch-size")] = 32,
) -> None:
    """Score responses with a trained reward model (pairs also get their margin)."""
    from lmtune.evaluate.score import run_score

    rows, summary = run_score(model, input, out, batch_size)
    if out is None:
        for row in rows:
            print(json.dumps(row, ensure_ascii=False))
    shown = ", ".join(
        f"{k} {v:.4f}" if k not in ("rows", "pairs") else f"{k} {int(v)}"
        for k, v in summary.items()
    )
    (err_console if out is None else console).print(
        shown + (f"; written to {out}" if out else ""), highlight=False
    )


@app.command()
def export(
    run: Annotated[Path, typer.Argument(help="Run folder or model folder.")],
    out: Annotated[Path, typer.Argument(help="Folder for the standalone merged model.")],
    dtype: Annotated[
        str | None,
        typer.Option(
            help="dtype of the written weights: bf16, fp16 or fp32 (default: fp32 for a merge, "
            "as stored for a full model). A QLoRA adapter is merged into its de-quantized base."
        ),
    ] = None,
) -> None:
    """Merge LoRA/DoRA into a standalone model that plain transformers loads."""
    from lmtune.evaluate.run import resolve_model_dir
    from lmtune.models.export import export_merged

    path = export_merged(resolve_model_dir(run), out, dtype=dtype)
    console.print(f"exported to {path}")


@app.command()
def report(
    folder: Annotated[
        Path, typer.Argument(help="Run folder (lmtune train) or eval folder (lmtune eval --out).")
    ],
) -> None:
    """Rebuild report.html (plots embedded) and, for a run, MODEL_CARD.md from the folder's files."""
    from lmtune.report import rebuild

    for path in rebuild(folder):
        console.print(f"written: {path}")


@app.command()
def audit(
    model: Annotated[str, typer.Argument(help="Run folder, model folder, hub id or builtin:NAME.")],
    data: Annotated[
        Path | None,
        typer.Option(
            "--data", help="Texts for counterfactual probes (default: the run's eval split)."
        ),
    ] = None,
    crows: Annotated[
        Path | None,
        typer.Option("--crows", help="CrowS-Pairs CSV (crows_pairs_anonymized.csv) or its folder."),
    ] = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="Output folder (default RUN/audit, else ./audit).")
    ] = None,
    max_pairs: Annotated[
        int | None, typer.Option("--max-pairs", help="Score a seeded sample of this many pairs.")
    ] = None,
    before: Annotated[
        str | None,
        typer.Option(
            "--before", help="Model or run to compare with (default: a causal run's base model)."
        ),
    ] = None,
) -> None:
    """Bias audit: CrowS-Pairs for masked/causal LMs, counterfactual term swaps for classifiers."""
    from lmtune.evaluate.audit import print_audit, run_audit

    result = run_audit(model, data, crows, out, max_pairs, before)
    print_audit(result, console)
    console.print(f"written: {Path(result['out_dir']) / 'audit.json'}")


app.command()(serve)


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", help="Run folder.")] = Path("runs/demo"),
    quiet: Annotated[bool, typer.Option("--quiet", help="No progress bar.")] = False,
) -> None:
    """Fine-tune builtin:minilm with LoRA on the bundled reviews and show before/after."""
    from lmtune.demo import run_demo

    run_demo(out, quiet=quiet)


@app.command()
def ui(
    root: Annotated[Path, typer.Argument(help="Folder of runs, registries and monitors.")] = Path(
        "runs"
    ),
    host: Annotated[
        str, typer.Option("--host", help="Address (beyond 127.0.0.1 a token is required).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="Port (0 = any free port).")] = 7860,
    token: Annotated[
        str | None,
        typer.Option(
            "--token", envvar="LMTUNE_UI_TOKEN", show_default=False, help="Token to require."
        ),
    ] = None,
) -> None:
    """A local web UI over runs: watch, compare, launch, release, monitor and chat."""
    from lmtune.ui.app import UiSettings, run_ui

    root.mkdir(parents=True, exist_ok=True)
    run_ui(UiSettings(root=root, host=host, port=port, token=token))


app.command()(pipeline)
app.add_typer(config_app, name="config")
app.add_typer(registry_app, name="registry")
app.add_typer(monitor_app, name="monitor")


def _is_usage_error(exc: Exception) -> bool:
    """A command-line mistake (unknown option, missing argument) rather than a bug.

    typer >= 0.25 raises exceptions from its own vendored copy of click, so both classes count.
    """
    import click

    classes: list[type] = [click.ClickException]
    try:
        from typer._click.exceptions import ClickException as VendoredClickException

        classes.append(VendoredClickException)
    except ImportError:  # older typer uses click itself
        pass
    return isinstance(exc, tuple(classes))


def main() -> None:
    """Console-script entry point with the error policy described in the module docstring."""
    debug = "--debug" in sys.argv
    if not debug:
        # transformers' per-load reports and download bars drown lmtune's own output. Said
        # through the environment transformers (verbosity) and huggingface_hub (its progress
        # bars, which transformers' own follow) read when a command imports them: importing
        # transformers here would cost seconds on every command, `lmtune ui` and --help too.
        os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
        if "transformers" in sys.modules:  # imported already (in-process callers): tell it
            from transformers.utils import logging as hf_logging

            hf_logging.set_verbosity_error()
            hf_logging.disable_progress_bar()
    flags_as_flags()
    try:
        app(args=rewrite_argv(sys.argv[1:]), standalone_mode=False)
    except UserError as exc:
        # escape: messages quote config keys and extras in [brackets] that rich would eat as markup
        err_console.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False)
        sys.exit(2)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    except Exception as exc:  # a bug: say so, keep the traceback behind --debug
        if _is_usage_error(exc):
            exc.show()  # type: ignore[attr-defined]
            sys.exit(2)
        if debug:
            raise
        err_console.print(
            f"[bold red]internal error[/] ({type(exc).__name__}): {escape(str(exc))}\n"
            "This is a bug in lmtune; rerun with --debug for the traceback and report it.",
            highlight=False,
        )
        sys.exit(1)


if __name__ == "__main__":
    main()
