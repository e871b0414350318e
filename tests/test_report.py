"""report on a run folder: real manifests and real TensorBoard event files written here."""

import json

import pytest

from chainforge.outputs import MANIFEST


def _stage(run_dir, folder, stage, metrics, scalars=None):
    d = run_dir / folder
    d.mkdir(parents=True)
    (d / MANIFEST).write_text(json.dumps({"stage": stage, "status": "complete", "metrics": metrics,
                                          "config": {}, "inputs": []}))
    if scalars:
        from torch.utils.tensorboard import SummaryWriter

        w = SummaryWriter(str(d / "runs" / "x"))
        for tag, values in scalars.items():
            for step, v in enumerate(values, 1):
                w.add_scalar(f"train/{tag}", v, step)
        w.close()


def test_report_writes_a_row_per_stage_and_plots(tmp_path, cli):
    run_dir = tmp_path / "run"
    _stage(run_dir, "00-collect", "collect", {"prompts": 10, "rows": 8, "failed": 2, "correct_rate": 0.5})
    _stage(run_dir, "01-eval-base", "eval", {"pass@1": 0.2, "pass@k": 0.5, "maj@k": 0.25, "format_rate": 0.0, "k": 4})
    _stage(run_dir, "02-sft", "sft", {"train_loss": 2.5, "tokens": 1000}, {"loss": [3.0, 2.5, 2.0]})
    _stage(run_dir, "03-rl", "grpo", {"reward": 0.4, "reward/accuracy": 0.3, "kl": 0.01},
           {"reward": [0.1, 0.3, 0.4], "rewards/accuracy/mean": [0.1, 0.2, 0.3], "kl": [0.0, 0.01, 0.02],
            "completions/mean_length": [30, 28, 25]})
    _stage(run_dir, "04-reject", "reject", {"prompts": 10, "candidates": 40, "kept": 6, "pass@1": 0.3})
    _stage(run_dir, "05-eval-final", "eval", {"pass@1": 0.4, "pass@k": 0.7, "maj@k": 0.5, "format_rate": 0.6, "k": 4})
    (run_dir / "run.json").write_text(json.dumps({"stages": {"sft": {"folder": "02-sft", "wall_s": 12.5}}}))

    r = cli("report", run_dir)
    assert r.exit_code == 0, r.output
    report = (run_dir / "report.md").read_text()
    for folder in ("00-collect", "01-eval-base", "02-sft", "03-rl", "04-reject", "05-eval-final"):
        assert f"| {folder} |" in report
    assert "| 02-sft | sft | complete | 12.5 |" in report
    assert "kept fraction 0.6" in report
    assert "8 traces from 10 prompts (2 failed); 4 with a correct answer" in report
    pngs = sorted(p.name for p in (run_dir / "plots").glob("*.png"))
    assert "02-sft-loss.png" in pngs and "eval.png" in pngs and "04-reject-kept.png" in pngs
    assert "03-rl-reward-per-function.png" in pngs and "03-rl-kl-to-the-reference.png" in pngs
    for name in pngs:
        assert (run_dir / "plots" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"plots/{name}" in report


@pytest.mark.parametrize("setup,needle", [
    (lambda p: None, "is not a folder"),
    (lambda p: p.mkdir(), "holds no stage outputs"),
])
def test_report_bad_input(tmp_path, cli, setup, needle):
    target = tmp_path / "nope"
    setup(target)
    r = cli("report", target)
    assert r.exit_code == 2 and needle in r.stderr


def _eval(run_dir, name, per_question, fmt, compare=None, with_delta=True):
    """A hand-made eval output under run_dir/evals: results.jsonl from per-question pass@1 values and
    the manifest eval would write (pass@1, its interval, and with `compare` the paired delta)."""
    from chainforge.metrics import bootstrap_ci, compare_metrics

    d = run_dir / "evals" / name
    d.mkdir(parents=True)
    results = [{"id": f"q{i}", "pass_at_1": v} for i, v in enumerate(per_question)]
    (d / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in results))
    metrics = {"pass@1": sum(per_question) / len(per_question), "pass@1_ci": bootstrap_ci(per_question),
               "format_rate": fmt, "k": 4}
    if compare and with_delta:
        theirs = [json.loads(x) for x in (run_dir / "evals" / compare / "results.jsonl").read_text().splitlines()]
        metrics.update(compare_metrics(results, theirs))
    (d / MANIFEST).write_text(json.dumps({"stage": "eval", "status": "complete", "metrics": metrics,
                                          "config": {"compare": str(run_dir / "evals" / compare) if compare else None},
                                          "inputs": []}))


def test_report_table_and_plot_of_every_checkpoint(tmp_path, cli):
    run_dir = tmp_path / "run"
    _stage(run_dir, "00-sft-cold", "sft", {"train_loss": 1.0})
    n = 100
    _eval(run_dir, "00-base", [0.0] * n, 0.0)
    _eval(run_dir, "01-sft-cold", [0.5] * 40 + [0.0] * 60, 0.9, compare="00-base")      # +0.20: helped
    _eval(run_dir, "02-rl", [0.5] * 41 + [0.0] * 59, 1.0, compare="01-sft-cold")        # +0.005: nothing
    _eval(run_dir, "03-sft-more", [0.25] * 41 + [0.0] * 59, 1.0, compare="02-rl",       # −0.10: hurt,
          with_delta=False)                                                          # computed by report
    _eval(run_dir, "04-distill-student-start", [0.0] * n, 0.0)
    _eval(run_dir, "04-distill", [0.25] * 20 + [0.0] * 80, 0.5, compare="04-distill-student-start")
    (run_dir / "evals" / "05-unfinished").mkdir()
    (run_dir / "evals" / "05-unfinished" / MANIFEST).write_text(json.dumps({"stage": "eval", "status": "running"}))

    r = cli("report", run_dir)
    assert r.exit_code == 0, r.output
    report = (run_dir / "report.md").read_text()
    rows = [line for line in report.splitlines() if line.startswith("| 0") and " vs " not in line
            and line.count("|") == 7]
    assert [row.split("|")[1].strip() for row in rows] == [
        "00-base", "01-sft-cold", "02-rl", "03-sft-more", "04-distill-student-start", "04-distill"]
    by_name = {row.split("|")[1].strip(): [c.strip() for c in row.split("|")[2:-1]] for row in rows}
    assert by_name["00-base"] == ["0.000 [0.000, 0.000]", "0", "–", "–", "–"]
    assert by_name["01-sft-cold"][0].startswith("0.200 [") and by_name["01-sft-cold"][1] == "0.9"
    assert by_name["01-sft-cold"][2] == "00-base" and by_name["01-sft-cold"][3].startswith("+0.200 [+0.1")
    assert by_name["01-sft-cold"][4] == "helped"
    assert by_name["02-rl"][4] == "no measurable change"
    assert by_name["03-sft-more"][3].startswith("-0.102 [") and by_name["03-sft-more"][4] == "hurt"
    assert by_name["04-distill"][2] == "04-distill-student-start" and by_name["04-distill"][4] == "helped"
    assert report.index("Held-out accuracy of every checkpoint") < report.index("| stage | command |")
    png = run_dir / "plots" / "checkpoints.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and "plots/checkpoints.png" in report


def test_report_without_evals_has_no_checkpoint_section(tmp_path, cli):
    run_dir = tmp_path / "run"
    _stage(run_dir, "00-sft", "sft", {"train_loss": 1.0})
    assert cli("report", run_dir).exit_code == 0
    assert "every checkpoint" not in (run_dir / "report.md").read_text()
    assert not (run_dir / "plots" / "checkpoints.png").exists()


def test_smoothed_reward_is_a_trailing_running_mean():
    from chainforge.stages.report import smooth

    assert smooth([(1, 1.0), (2, 0.0), (3, 0.5), (4, 0.5)], 2) == [(1, 1.0), (2, 0.5), (3, 0.25), (4, 0.5)]
    assert smooth([], 3) == []
