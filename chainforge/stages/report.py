"""`chainforge report RUN_DIR`: a report card for a run — one table row per stage, PNG plots.

    chainforge report runs/demo

Reads every stage folder's manifest (`NN-name/chainforge.json`), `run.json` (wall times, written
by `chainforge run`) and the TensorBoard event files the training stages write under `runs/`, then
writes `RUN_DIR/report.md` and `RUN_DIR/plots/*.png`:

- training loss per sft/distill stage;
- GRPO: total reward and reward per function, KL, completion length, format rate / expansion use
  (when the trainer logged them); its health per step from the manifest (a table and plots: the
  share of groups with no gradient, of completions cut at the token limit, the learning rate applied);
- rejection sampling: kept fraction;
- eval: pass@1, maj@k and format rate of every eval stage, in run order (before/after training);
- every checkpoint evaluated after each stage (`RUN_DIR/evals/NN-name`, written by `run` with
  `eval_every_stage`): one table and one plot (`plots/checkpoints.png`) with pass@1 and its 95 %
  interval, format rate, the paired delta to the stage's input checkpoint with its interval, and a
  verdict — helped / hurt when that interval excludes 0, else no measurable change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from chainforge.outputs import MANIFEST, atomic_write_text, read_manifest
from chainforge.errors import UsageError
from chainforge.log import info
from chainforge.verdicts import checkpoint_section

STAGE_DIR = re.compile(r"^(\d{2})-(.+)$")
SMOOTH_WINDOW = 5

# The figures shown in the table, per stage kind (manifest metric names from the contract).
KEY_METRICS = {
    "collect": ["prompts", "rows", "failed", "expanded_steps", "correct_rate", "cost_usd"],
    "sft": ["train_loss", "tokens", "tokens_per_s", "format_rate"],
    "grpo": ["reward", "kl", "format_rate", "expansion_rate", "completion_tokens", "generation_time_share"],
    "reject": ["prompts", "candidates", "kept", "pass@1", "pass@k", "mean_reward_kept"],
    "distill": ["train_loss", "tokens", "format_rate", "student_parameters", "teacher_parameters"],
    "eval": ["pass@1", "pass@k", "maj@k", "format_rate", "mean_completion_tokens", "k"],
}


def find_stages(run_dir: Path) -> list[tuple[str, dict]]:
    stages = []
    for d in sorted(p for p in run_dir.iterdir() if p.is_dir() and STAGE_DIR.match(p.name)):
        m = read_manifest(d)
        if m:
            stages.append((d.name, m))
    return stages


def scalars(folder: Path) -> dict[str, list[tuple[int, float]]]:
    """Every TensorBoard scalar under folder/runs: tag → [(step, value)], tags without `train/`."""
    tb = folder / "runs"
    if not tb.is_dir():
        return {}
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    series: dict[str, dict[int, float]] = {}
    for events in sorted(tb.rglob("events.out.tfevents.*")):
        acc = EventAccumulator(str(events.parent), size_guidance={"scalars": 0})
        acc.Reload()
        for tag in acc.Tags().get("scalars", []):
            name = tag[len("train/"):] if tag.startswith("train/") else tag
            for ev in acc.Scalars(tag):
                series.setdefault(name, {})[ev.step] = ev.value  # a resumed run re-logs: last wins
    return {k: sorted(v.items()) for k, v in series.items()}


def smooth(points: list[tuple[int, float]], window: int) -> list[tuple[int, float]]:
    """Trailing running mean: each step's value averaged with up to window − 1 steps before it."""
    out = []
    for i, (step, _) in enumerate(points):
        recent = [v for _, v in points[max(0, i - window + 1):i + 1]]
        out.append((step, sum(recent) / len(recent)))
    return out


def _fmt(value) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _plot_lines(path: Path, title: str, curves: dict[str, list[tuple[int, float]]], ylabel: str = "") -> Optional[Path]:
    curves = {k: v for k, v in curves.items() if v}
    if not curves:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4), dpi=110)
    for label, pts in curves.items():
        xs, ys = zip(*pts)
        ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=label)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(title)
    ax.set_xlabel("step")
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    if len(curves) > 1:
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _plot_bars(path: Path, title: str, groups: list[str], series: dict[str, list[Optional[float]]]) -> Optional[Path]:
    if not groups or not series:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(4, 1.6 * len(groups) + 2), 3.4), dpi=110)
    width = 0.8 / len(series)
    for i, (label, values) in enumerate(series.items()):
        xs = [g + i * width for g in range(len(groups))]
        ys = [v if v is not None else 0.0 for v in values]
        bars = ax.bar(xs, ys, width, label=label)
        for b, v in zip(bars, values):
            ax.annotate(_fmt(v), (b.get_x() + b.get_width() / 2, b.get_height()), ha="center", va="bottom", fontsize=7)
    ax.set_xticks([g + width * (len(series) - 1) / 2 for g in range(len(groups))], groups, fontsize=8)
    ax.set_ylim(0, 1.05)
    ax.set_title(title)
    ax.legend(fontsize=7)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def run(run_dir: str | Path) -> None:
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"{run_dir} is not a folder; give the run_dir of a `chainforge run` recipe")
    stages = find_stages(run_dir)
    if not stages:
        raise UsageError(f"{run_dir} holds no stage outputs (NN-name folders with {MANIFEST}); "
                         f"run `chainforge run RECIPE.yaml` first")
    run_state = json.loads((run_dir / "run.json").read_text()) if (run_dir / "run.json").is_file() else {}
    state = run_state.get("stages", {})
    wall = {rec.get("folder"): rec.get("wall_s") for rec in state.values()}

    plots_dir = run_dir / "plots"
    plots_dir.mkdir(exist_ok=True)
    images: list[tuple[str, Path]] = []
    lines = [f"# ChainForge report: {run_dir.name}", "",
             "| stage | command | status | wall (s) | key figures |", "|---|---|---|---|---|"]
    eval_groups, eval_series = [], {"pass@1": [], "maj@k": [], "format_rate": []}
    lines_health: list[tuple[str, dict]] = []
    for folder, m in stages:
        kind = m.get("stage", "?")
        metrics = m.get("metrics", {}) or {}
        figures = ", ".join(f"{k} {_fmt(metrics.get(k))}" for k in KEY_METRICS.get(kind, []) if k in metrics)
        if kind == "reject" and metrics.get("prompts"):
            figures += f", kept fraction {_fmt(metrics.get('kept', 0) / metrics['prompts'])}"
        if kind == "grpo":
            per_fn = {k: v for k, v in metrics.items() if k.startswith("reward/")}
            figures += "".join(f", {k} {_fmt(v)}" for k, v in per_fn.items())
        lines.append(f"| {folder} | {kind} | {m.get('status')} | {_fmt(wall.get(folder))} | {figures} |")

        sc = scalars(run_dir / folder)
        if kind in ("sft", "distill"):
            p = _plot_lines(plots_dir / f"{folder}-loss.png", f"{folder}: training loss", {"loss": sc.get("loss", [])}, "loss")
            if p:
                images.append((f"{folder}: training loss", p))
        elif kind == "grpo":
            rewards = {k: v for k, v in sc.items() if k == "reward" or (k.startswith("rewards/") and k.endswith("/mean"))}
            if len(sc.get("reward", [])) >= SMOOTH_WINDOW:
                # one step's reward mostly shows which prompts came up; the trend is in the running mean
                rewards[f"reward (mean of last {SMOOTH_WINDOW} steps)"] = smooth(sc["reward"], SMOOTH_WINDOW)
            health = [h for h in metrics.get("health") or [] if isinstance(h, dict) and "step" in h]
            health_curves = {
                "groups with no gradient (same reward on every completion)":
                    [(h["step"], h["zero_spread_groups"]) for h in health if h.get("zero_spread_groups") is not None],
                "completions cut at --max-new-tokens":
                    [(h["step"], h["truncated"]) for h in health if h.get("truncated") is not None]}
            if any(health_curves.values()):
                lines_health.append((folder, metrics))
            for title, curves in [
                ("health: shares of dead groups and cut completions", health_curves),
                ("learning rate applied", {"learning rate": [(h["step"], h["learning_rate"]) for h in health
                                                             if h.get("learning_rate") is not None]}),
                ("reward per function", rewards),
                ("KL to the reference", {"kl": sc.get("kl", [])}),
                ("completion length (tokens)", {k: v for k, v in sc.items() if k == "completions/mean_length"}),
                ("format rate / expansion use", {k: v for k, v in sc.items() if k in ("format_rate", "expansion_rate")
                                                 or k in ("rewards/format/mean", "rewards/expansion/mean")}),
            ]:
                slug = re.sub(r"[^a-z]+", "-", title.lower()).strip("-")
                p = _plot_lines(plots_dir / f"{folder}-{slug}.png", f"{folder}: {title}", curves)
                if p:
                    images.append((f"{folder}: {title}", p))
        elif kind == "reject" and metrics.get("prompts"):
            p = _plot_bars(plots_dir / f"{folder}-kept.png", f"{folder}: rejection sampling", [folder],
                           {"kept fraction": [metrics.get("kept", 0) / metrics["prompts"]],
                            "pass@1": [metrics.get("pass@1")]})
            if p:
                images.append((f"{folder}: kept fraction", p))
        elif kind == "eval":
            eval_groups.append(folder)
            for key in eval_series:
                eval_series[key].append(metrics.get(key))
    if eval_groups:
        p = _plot_bars(plots_dir / "eval.png", "eval across the run", eval_groups, eval_series)
        if p:
            images.append(("eval across the run (in run order: before → after training)", p))
        lines += ["", "## Eval across the run", "", "| eval | pass@1 | pass@k | maj@k | format rate |",
                  "|---|---|---|---|---|"]
        for folder, m in stages:
            if m.get("stage") == "eval":
                mt = m.get("metrics", {})
                lines.append(f"| {folder} | {_fmt(mt.get('pass@1'))} | {_fmt(mt.get('pass@k'))} | "
                             f"{_fmt(mt.get('maj@k'))} | {_fmt(mt.get('format_rate'))} |")
    for folder, mt in lines_health:
        lines += ["", f"## GRPO health: {folder}", "",
                  f"Run means: {_fmt(mt.get('zero_spread_groups'))} of the groups carried no gradient (every "
                  f"completion scored the same), {_fmt(mt.get('truncated'))} of the completions were cut at the "
                  f"token limit" + (f"; trained on {mt['prompts_kept']} of {mt.get('prompts_scored')} prompts "
                                    f"scored ({mt.get('prompts_always_right')} always right, "
                                    f"{mt.get('prompts_always_wrong')} always wrong dropped)"
                                    if mt.get("prompts_kept") is not None else "") + ".", "",
                  "| step | dead groups | cut off | reward | KL | learning rate |", "|---|---|---|---|---|---|"]
        for h in mt.get("health") or []:
            lines.append(f"| {h.get('step')} | {_fmt(h.get('zero_spread_groups'))} | {_fmt(h.get('truncated'))} | "
                         f"{_fmt(h.get('reward'))} | {_fmt(h.get('kl'))} | {_fmt(h.get('learning_rate'))} |")
    collect = [(f, m) for f, m in stages if m.get("stage") == "collect"]
    for folder, m in collect:
        mt = m.get("metrics", {})
        if mt.get("prompts"):
            correct = mt.get("correct_rate")
            right = f"; {round(correct * mt.get('rows', 0))} with a correct answer (what sft's default " \
                    f"--only-correct trains on)" if correct is not None else ""
            lines += ["", f"{folder}: {mt.get('rows', 0)} traces from {mt['prompts']} prompts "
                          f"({mt.get('failed', 0)} failed){right}."]
    cleaned = run_state.get("decontaminated")
    if cleaned and cleaned.get("removed") is not None:
        lines += ["", f"{cleaned.get('folder')}: removed {cleaned['removed']} of {cleaned.get('rows')} training "
                      f"prompts that overlap eval_data (see {cleaned.get('folder')}/removed.jsonl); the stages "
                      f"after it read the {cleaned.get('kept')} kept."]

    ckpt_lines, ckpt_plot = checkpoint_section(run_dir, plots_dir)
    lines[2:2] = ckpt_lines  # the answer to "did each stage help" comes first
    if ckpt_plot:
        images.insert(0, ("held-out pass@1 of every checkpoint (95 % intervals), in run order", ckpt_plot))
    if images:
        lines += ["", "## Plots", ""]
        for caption, p in images:
            lines += [f"**{caption}**", "", f"![{caption}](plots/{p.name})", ""]
    report = run_dir / "report.md"
    atomic_write_text(report, "\n".join(lines) + "\n")
    info(f"report: {report} ({len(images)} plots in {plots_dir})")
