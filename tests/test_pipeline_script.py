"""scripts/pipeline.sh: shellcheck-clean, and it runs every stage against the tiny fixture."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from chainforge.outputs import read_manifest
from helpers.files import write_jsonl

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = sorted((ROOT / "scripts").glob("*.sh")) + [ROOT / ".ci" / "run"]


def test_shell_scripts_are_shellcheck_clean():
    shellcheck = shutil.which("shellcheck") or str(Path(sys.executable).parent / "shellcheck")
    r = subprocess.run([shellcheck, "-x", *map(str, SCRIPTS)], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stdout + r.stderr


def test_pipeline_runs_every_stage_on_the_tiny_model(tmp_path, tiny_model):
    from transformers import AutoTokenizer

    from helpers.tiny import build_tiny_model

    student = build_tiny_model(tmp_path / "student", layers=1, hidden=32,
                               tokenizer=AutoTokenizer.from_pretrained(str(tiny_model)))
    rows = [{"id": f"q{i}", "prompt": f"What is {i} + 1?", "answer": str(i + 1)} for i in range(4)]
    prompts = write_jsonl(tmp_path / "train.jsonl", rows)
    answerless = write_jsonl(tmp_path / "distill.jsonl", [{"prompt": r["prompt"]} for r in rows] * 3)
    out = tmp_path / "out"
    env = dict(os.environ, MODEL=str(tiny_model), STUDENT=str(student), TEACHER="local",
               TEACHER_MODEL=str(tiny_model), PROMPTS=str(prompts), EVAL_DATA=str(prompts),
               DISTILL_DATA=str(answerless), OUT=str(out), LIMIT="4", STEPS="1", TOKENS="8",
               CHAINFORGE=f"{sys.executable} -m chainforge")
    r = subprocess.run(["bash", str(ROOT / "scripts" / "pipeline.sh")], capture_output=True, text=True,
                       env=env, cwd=tmp_path, timeout=900)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    # the tiny random model passes no reward: reject stops with exit 1 and 3b falls back to collect
    assert "stage 3b falls back to the collected data" in r.stdout
    for stage in ("00-collect", "01-sft-cold", "02-rl", "04-sft-more", "05-rl-final", "06-distill",
                  "07-eval-final", "08-eval-student"):
        assert read_manifest(out / stage)["status"] == "complete", stage
    assert (out / "report.md").is_file()
