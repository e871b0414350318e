"""Rows shaped like the stages' inputs and outputs, and recipe files."""

from __future__ import annotations

import yaml

# prompts with answers for a recipe's stages
RECIPE_ROWS = [{"id": f"q{i}", "prompt": f"What is {i} + {i + 1}?", "answer": str(2 * i + 1)} for i in range(4)]


def write_recipe(path, run_dir, model, prompts, stages, **extra):
    recipe = {"run_dir": str(run_dir), "model": str(model), "prompts": str(prompts), "stages": stages, **extra}
    path.write_text(yaml.safe_dump(recipe, sort_keys=False))
    return path


def arithmetic(n: int = 6, answer_key: str = "answer") -> list[dict]:
    return [{"prompt": f"What is {a} + {a + 1}?", answer_key: str(2 * a + 1), "level": a} for a in range(n)]


def super_cot(i: int, steps: int = 2) -> str:
    from chainforge.formats import write_super_cot

    thoughts = [f"Add the ones of {i} and 7: x < 3 and a > b hold." for _ in range(steps)]
    return write_super_cot(thoughts, [None] * (steps - 1) + [f"No carry is needed because {i} < 10 here."],
                           str(i + 7))


def collect_rows(n: int = 12) -> list[dict]:
    """Rows shaped like a collect output (the columns the contract lists)."""
    rows = []
    for i in range(n):
        text = super_cot(i, steps=1 + i % 3)
        rows.append({
            "id": f"q{i}", "prompt": f"What is {i} + 7?", "reference": str(i + 7), "reasoning": "r",
            "teacher_answer": str(i + 7), "steps": ["s"], "uncertain": [False], "expansions": [None],
            "text": text, "messages": [{"role": "user", "content": f"What is {i} + 7?"},
                                       {"role": "assistant", "content": text}],
            "correct": i != 3, "usage": {"cost_usd": 0.0},
        })
    return rows
