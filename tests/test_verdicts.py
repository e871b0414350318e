"""The report's verdicts: extra held-out sets beside the main one, and one stage pooled over seeds —
on eval outputs written here the way `eval` writes them (results.jsonl + manifest)."""

from __future__ import annotations

import json
from pathlib import Path

from chainforge.outputs import MANIFEST


def write_eval(folder: Path, per_question: list[float], compare: Path | None = None, seed: int = 0) -> Path:
    from chainforge.metrics import bootstrap_ci, compare_metrics

    folder.mkdir(parents=True)
    results = [{"id": f"q{i}", "pass_at_1": v} for i, v in enumerate(per_question)]
    (folder / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    metrics = {"pass@1": sum(per_question) / len(per_question), "pass@1_ci": bootstrap_ci(per_question),
               "format_rate": 1.0, "k": 2}
    if compare is not None:
        theirs = [json.loads(x) for x in (compare / "results.jsonl").read_text().splitlines()]
        metrics.update(compare_metrics(results, theirs))
    (folder / MANIFEST).write_text(json.dumps({"stage": "eval", "status": "complete", "metrics": metrics,
                                               "config": {"compare": str(compare) if compare else None,
                                                          "seed": seed}}))
    return folder


def gained(n: int, start_right: int, more: int) -> list[float]:
    """n questions: the first `start_right` right at the start, `more` more right after training."""
    return [1.0] * (start_right + more) + [0.0] * (n - start_right - more)


def make_run(run_dir: Path, gains: dict[int, int], reworded_gains: dict[int, int]) -> None:
    n = 200
    (run_dir / "00-sft-cold").mkdir(parents=True)
    (run_dir / "00-sft-cold" / MANIFEST).write_text(json.dumps({"stage": "sft", "status": "complete",
                                                                "metrics": {}, "config": {}}))
    for root, seeds_root, extra in (("evals", "seeds/evals", gains), ("evals-reworded", "seeds/evals-reworded",
                                                                      reworded_gains)):
        start = write_eval(run_dir / root / "00-sft-cold", gained(n, 80, 0))
        write_eval(run_dir / root / "01-rl", gained(n, 80, extra[0]), compare=start, seed=0)
        for seed in (1, 2):
            write_eval(run_dir / seeds_root / f"rl-s{seed}", gained(n, 80, extra[seed]), compare=start, seed=seed)


def test_seeds_are_pooled_beside_each_seed(tmp_path, cli):
    run_dir = tmp_path / "run"
    make_run(run_dir, gains={0: 20, 1: 10, 2: 30}, reworded_gains={0: 4, 1: 2, 2: 6})
    r = cli("report", run_dir)
    assert r.exit_code == 0, r.output
    report = (run_dir / "report.md").read_text()
    assert "## `rl` over 3 seeds" in report
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]]
            for line in report.splitlines() if line.startswith("| ") and line.count("|") == 8}
    assert rows["0"][0] == "evals/01-rl" and rows["0"][2].startswith("+0.100 [")
    assert rows["1"][0] == "seeds/evals/rl-s1" and rows["1"][2].startswith("+0.050 [")
    assert rows["2"][2].startswith("+0.150 [") and rows["2"][4] == "helped"
    assert rows["1"][3] == f"{(0.05 * 0.95 / 199) ** 0.5:.4g}"  # the paired SE: sd of the deltas / sqrt(n)
    pooled = rows["pooled"]
    assert pooled[0] == "3 seeds" and pooled[2].startswith("+0.100 [")
    low, high = (float(x) for x in pooled[2].split("[")[1].rstrip("]").split(","))
    # the interval covers the seeds' spread (0.05 .. 0.15), not just one seed's question sampling
    assert low < 0.06 and high > 0.14
    assert pooled[3] == "sd between seeds 0.05" and pooled[4] == "helped"
    assert pooled[5].startswith("+0.020 [")  # the reworded set, pooled the same way


def test_extra_sets_sit_beside_the_main_eval(tmp_path, cli):
    run_dir = tmp_path / "run"
    make_run(run_dir, gains={0: 20, 1: 10, 2: 30}, reworded_gains={0: -10, 1: 0, 2: 0})
    r = cli("report", run_dir)
    assert r.exit_code == 0, r.output
    report = (run_dir / "report.md").read_text()
    header = next(line for line in report.splitlines() if line.startswith("| checkpoint |"))
    assert "reworded: pass@1 [95 % CI]" in header and "reworded: Δ [95 % CI]" in header
    row = next(line for line in report.splitlines() if line.startswith("| 01-rl |"))
    cells = [c.strip() for c in row.split("|")[1:-1]]
    assert cells[4].startswith("+0.100") and cells[5] == "helped"
    assert cells[6].startswith("0.350 [") and cells[7].startswith("-0.050 [") and cells[8] == "hurt"


def test_a_single_seed_makes_no_seeds_section(tmp_path, cli):
    run_dir = tmp_path / "run"
    make_run(run_dir, gains={0: 20, 1: 10, 2: 30}, reworded_gains={0: 0, 1: 0, 2: 0})
    import shutil

    shutil.rmtree(run_dir / "seeds")
    assert cli("report", run_dir).exit_code == 0
    assert "over 3 seeds" not in (run_dir / "report.md").read_text()
