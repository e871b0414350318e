"""report on a run folder: real manifests and real TensorBoard event files written here."""

import json

import pytest

from chainforge.data import MANIFEST


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
