"""Which stage helped: the report card's table and plot of every evaluated checkpoint, its extra
held-out sets, and one stage's effect pooled over seeds.

What `chainforge run` leaves in a run folder and this module reads:
- `evals/NN-name`: every checkpoint on `eval_data`, each compared (paired, same questions) with the
  checkpoint its stage started from (`evals/00-base` for the base model; distill's student before
  training is `evals/NN-name-student-start`);
- `evals-<set>/NN-name`: the same checkpoints on each `extra_evals` set (e.g. the same sums in words
  the model never trained on), compared the same way;
- `seeds/evals/<stage>-sS` (and `seeds/evals-<set>/…`), written by `scripts/learn_seeds.sh`: the
  recipe's stage `<stage>` trained again with seed S from the same start and evaluated against the
  same start eval. With the recipe's own run of that stage they make the seeds table: each seed's
  paired delta, and the pooled delta over seeds with an interval that covers the seed-to-seed
  spread as well as the question sampling (`metrics.pooled_delta`).

A verdict reads a paired 95 % interval: helped / hurt when it excludes 0, else no measurable change.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

from chainforge.outputs import read_manifest

EVALS_DIR = "evals"
SEEDS_DIR = "seeds"
STUDENT_START = "-student-start"
STAGE_DIR = re.compile(r"^(\d{2})-(.+)$")
SEED_DIR = re.compile(r"^(?P<group>.+)-s(?P<seed>\d+)$")


def _eval_order(name: str) -> tuple:
    # NN-name-student-start (distill's student before training) comes before NN-name (after)
    m = STAGE_DIR.match(name)
    number = int(m.group(1)) if m else 10 ** 6
    return number, 0 if name.endswith(STUDENT_START) else 1, name


def _results(folder: Path) -> list[dict]:
    text = (Path(folder) / "results.jsonl").read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def _compared(folder: Path, compare: str) -> Path:
    """The eval `compare` names, as run recorded it, else the folder of that name beside `folder`."""
    other = Path(compare)
    return other if (other / "results.jsonl").is_file() else folder.parent / other.name


def eval_record(folder: Path) -> Optional[dict]:
    """name, pass@1 and its interval, format rate, the input it is compared with, the paired delta,
    its interval and standard error, the verdict; None when not a complete eval. A delta missing
    from the manifest is computed from both results files when the compared eval is there."""
    from chainforge.metrics import compare_metrics, verdict

    m = read_manifest(folder)
    if not m or m.get("stage") != "eval" or m.get("status") != "complete":
        return None
    metrics = m.get("metrics") or {}
    compare = (m.get("config") or {}).get("compare")
    delta, delta_ci, se = metrics.get("delta_pass@1"), metrics.get("delta_pass@1_ci"), metrics.get("delta_pass@1_se")
    if compare and (delta is None or se is None):
        try:
            computed = compare_metrics(_results(folder), _results(_compared(folder, compare)))
            delta, delta_ci, se = computed["delta_pass@1"], computed["delta_pass@1_ci"], computed["delta_pass@1_se"]
        except (OSError, ValueError):
            pass
    return {"name": folder.name, "folder": folder, "pass@1": metrics.get("pass@1"),
            "pass@1_ci": metrics.get("pass@1_ci"), "format_rate": metrics.get("format_rate"),
            "input": Path(compare).name if compare else None, "compare": compare, "delta": delta,
            "delta_ci": delta_ci, "delta_se": se, "verdict": verdict(delta_ci) if delta_ci else "–",
            "seed": (m.get("config") or {}).get("seed")}


def checkpoint_evals(root: Path) -> list[dict]:
    """One record per complete eval under `root` (run_dir/evals or an extra set's folder), in run order."""
    if not root.is_dir():
        return []
    folders = sorted((p for p in root.iterdir() if p.is_dir()), key=lambda p: _eval_order(p.name))
    return [r for r in (eval_record(f) for f in folders) if r is not None]


def extra_sets(run_dir: Path) -> dict[str, dict[str, dict]]:
    """set name → {checkpoint name → record} for every run_dir/evals-<set> folder."""
    found = {}
    for folder in sorted(run_dir.glob(f"{EVALS_DIR}-*")):
        if folder.is_dir():
            records = {r["name"]: r for r in checkpoint_evals(folder)}
            if records:
                found[folder.name[len(EVALS_DIR) + 1:]] = records
    return found


def _interval(value, ci, signed: bool = False) -> str:
    if value is None:
        return "–"
    f = "{:+.3f}" if signed else "{:.3f}"
    text = f.format(value)
    if ci:
        text += " [" + f.format(ci[0]) + ", " + f.format(ci[1]) + "]"
    return text


def _fmt(value) -> str:
    if value is None:
        return "–"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def checkpoint_table(records: list[dict], extras: Optional[dict[str, dict[str, dict]]] = None) -> list[str]:
    extras = extras or {}
    lines = ["## Held-out accuracy of every checkpoint", "",
             "pass@1 with its 95 % interval (bootstrap over questions); Δ is the paired difference to the "
             "checkpoint the stage started from, on the same questions; the verdict reads that interval "
             "(helped / hurt when it excludes 0).", ""]
    head = "| checkpoint | pass@1 [95 % CI] | format rate | vs | Δ pass@1 [95 % CI] | verdict |"
    rule = "|---|---|---|---|---|---|"
    for name in extras:
        head += f" {name}: pass@1 [95 % CI] | {name}: Δ [95 % CI] | {name}: verdict |"
        rule += "---|---|---|"
    lines += [head, rule]
    for r in records:
        row = (f"| {r['name']} | {_interval(r['pass@1'], r['pass@1_ci'])} | {_fmt(r['format_rate'])} | "
               f"{r['input'] or '–'} | {_interval(r['delta'], r['delta_ci'], signed=True)} | {r['verdict']} |")
        for records_of_set in extras.values():
            x = records_of_set.get(r["name"])
            row += (f" {_interval(x['pass@1'], x['pass@1_ci'])} | {_interval(x['delta'], x['delta_ci'], signed=True)} "
                    f"| {x['verdict']} |" if x else " – | – | – |")
        lines.append(row)
    if extras:
        lines += ["", "Extra held-out sets (`extra_evals`): " + "; ".join(
            f"`{name}` in {EVALS_DIR}-{name}/" for name in extras) + "."]
    return lines + [""]


def plot_checkpoints(path: Path, records: list[dict], extras: Optional[dict[str, dict[str, dict]]] = None
                     ) -> Optional[Path]:
    """pass@1 with interval bars and format rate per checkpoint, in run order, verdict under each;
    each extra set as a second line of pass@1 with its intervals."""
    points = [r for r in records if r["pass@1"] is not None]
    if not points:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def bars(rows):
        lo = [r["pass@1"] - r["pass@1_ci"][0] if r and r["pass@1_ci"] else 0 for r in rows]
        hi = [r["pass@1_ci"][1] - r["pass@1"] if r and r["pass@1_ci"] else 0 for r in rows]
        return [lo, hi]

    xs = list(range(len(points)))
    ys = [r["pass@1"] for r in points]
    colours = {"helped": "tab:green", "hurt": "tab:red"}
    fig, ax = plt.subplots(figsize=(max(5, 1.3 * len(points) + 2), 3.8), dpi=110)
    ax.errorbar(xs, ys, yerr=bars(points), fmt="o-", capsize=4, label="pass@1 (95 % CI)")
    for name, by_name in (extras or {}).items():
        rows = [by_name.get(r["name"]) for r in points]
        x2 = [x + 0.08 for x, r in zip(xs, rows) if r and r["pass@1"] is not None]
        kept = [r for r in rows if r and r["pass@1"] is not None]
        if kept:
            ax.errorbar(x2, [r["pass@1"] for r in kept], yerr=bars(kept), fmt="^:", capsize=3, alpha=0.8,
                        label=f"{name}: pass@1 (95 % CI)")
    ax.plot(xs, [r["format_rate"] if r["format_rate"] is not None else float("nan") for r in points], "s--",
            alpha=0.6, label="format rate")
    for x, r in zip(xs, points):
        if r["delta"] is not None:
            ax.annotate(f"{r['delta']:+.3f}\n{r['verdict']}", (x, r["pass@1"]), textcoords="offset points",
                        xytext=(0, -30), ha="center", fontsize=7, color=colours.get(r["verdict"], "dimgray"))
    ax.set_xticks(xs, [r["name"] for r in points], rotation=20, ha="right", fontsize=8)
    ax.set_ylim(-0.1, 1.05)
    ax.set_ylabel("held-out")
    ax.set_title("every checkpoint of the run")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


# ---- one stage over several seeds ----------------------------------------------------------------

def seed_groups(run_dir: Path, records: list[dict]) -> dict[str, list[dict]]:
    """stage (or stage-variant) name → the records of its seed runs: the recipe's own run of that
    stage (from `records`, when run_dir/seeds holds runs of the same stage with the same start) and
    every run_dir/seeds/evals/<group>-sS, in seed order."""
    root = run_dir / SEEDS_DIR / EVALS_DIR
    groups: dict[str, list[dict]] = {}
    if not root.is_dir():
        return groups
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        m = SEED_DIR.match(folder.name)
        record = eval_record(folder) if m else None
        if record and record["compare"]:
            record["seed"] = int(m.group("seed"))
            groups.setdefault(m.group("group"), []).append(record)
    for group, runs in groups.items():
        for r in records:  # the recipe's run: evals/NN-<group>, compared with the same start
            stage = STAGE_DIR.match(r["name"])
            if stage and stage.group(2) == group and r["input"] == runs[0]["input"] and \
                    all(x["seed"] != r["seed"] for x in runs):
                runs.append({**r, "recipe": True})
        runs.sort(key=lambda x: (x["seed"] is None, x["seed"] or 0))
    return groups


def pooled(runs: list[dict]) -> Optional[dict]:
    """metrics.pooled_delta over the seed runs' results, each against its start's."""
    from chainforge.metrics import pooled_delta

    pairs = []
    for r in runs:
        try:
            pairs.append((_results(r["folder"]), _results(_compared(r["folder"], r["compare"]))))
        except (OSError, ValueError):
            return None
    return pooled_delta(pairs) if len(pairs) > 1 else None


def seeds_section(run_dir: Path, records: list[dict], extras: dict[str, dict[str, dict]]) -> list[str]:
    """The report's lines on each stage run with several seeds ([] when there are none)."""
    from chainforge.metrics import verdict

    lines = []
    for group, runs in seed_groups(run_dir, records).items():
        if len(runs) < 2:
            continue
        lines += [f"## `{group}` over {len(runs)} seeds", "",
                  f"Each seed trains the stage again from the same start ({runs[0]['input']}) and is evaluated "
                  "on the same questions; Δ is paired with the start's eval, SE is its standard error. The pooled "
                  "row is the mean over seeds, its interval from resampling seeds and then questions.", ""]
        sets = {name: {r["name"]: r for r in checkpoint_evals(run_dir / SEEDS_DIR / f"{EVALS_DIR}-{name}")}
                for name in extras}
        head = "| seed | run | pass@1 [95 % CI] | Δ pass@1 [95 % CI] | SE | verdict |"
        rule = "|---|---|---|---|---|---|"
        for name in extras:
            head += f" {name}: Δ [95 % CI] |"
            rule += "---|"
        lines += [head, rule]
        extra_runs: dict[str, list[dict]] = {name: [] for name in extras}
        for r in runs:
            where = f"{EVALS_DIR}/{r['name']}" if r.get("recipe") else f"{SEEDS_DIR}/{EVALS_DIR}/{r['name']}"
            row = (f"| {r['seed']} | {where} | {_interval(r['pass@1'], r['pass@1_ci'])} | "
                   f"{_interval(r['delta'], r['delta_ci'], signed=True)} | {_fmt(r['delta_se'])} | {r['verdict']} |")
            for name in extras:
                x = (extras[name] if r.get("recipe") else sets[name]).get(r["name"])
                row += f" {_interval(x['delta'], x['delta_ci'], signed=True) if x else '–'} |"
                if x and x["compare"]:
                    extra_runs[name].append(x)
            lines.append(row)
        total = pooled(runs)
        if total:
            row = (f"| pooled | {total['runs']} seeds | – | {_interval(total['delta_pass@1'], total['delta_pass@1_ci'], True)}"
                   f" | sd between seeds {_fmt(total['between_runs_sd'])} | {verdict(total['delta_pass@1_ci'])} |")
            for name in extras:
                x = pooled(extra_runs[name]) if len(extra_runs[name]) == len(runs) else None
                row += f" {_interval(x['delta_pass@1'], x['delta_pass@1_ci'], True) if x else '–'} |"
            lines.append(row)
        lines.append("")
    return lines


def checkpoint_section(run_dir: Path, plots_dir: Path) -> tuple[list[str], Optional[Path]]:
    """The report's lines and plot for run_dir/evals ([] and None when the run evaluated nothing)."""
    records = checkpoint_evals(run_dir / EVALS_DIR)
    if not records:
        return [], None
    extras = extra_sets(run_dir)
    lines = checkpoint_table(records, extras) + seeds_section(run_dir, records, extras)
    return lines, plot_checkpoints(plots_dir / "checkpoints.png", records, extras)
