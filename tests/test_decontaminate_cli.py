"""`chainforge decontaminate` from the command line: `--against` given several times checks the
training prompts against every one of those sets."""

from __future__ import annotations

import json

import datasets

from helpers.cli import assert_exit_2
from helpers.files import manifest, write_jsonl

MATH = "How many positive divisors does the number 3600 have, counting 1 and the number itself?"
GSM = ("Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
       "How many clips did Natalia sell altogether?")
AIME = "Find the number of ordered pairs of positive integers whose product is exactly two thousand and twenty."
KEEP = "Tom buys three apples at 40 cents each and pays with a five dollar note. How much change does he get?"


def test_against_given_several_times_checks_every_set(cli, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"id": f"t{i}", "prompt": p} for i, p in
                                                   enumerate([KEEP, GSM.upper(), MATH, AIME + " Explain."])])
    sets = [write_jsonl(tmp_path / f"{name}.jsonl", [{"prompt": p}]) for name, p in
            (("math", MATH), ("gsm", GSM), ("aime", AIME))]
    out = tmp_path / "clean"
    r = cli("decontaminate", "--data", train, "--against", sets[0], "--against", sets[1], "--against", sets[2],
            "--output", out)
    assert r.exit_code == 0, r.stderr
    assert datasets.load_from_disk(str(out))["id"] == ["t0"]
    removed = [json.loads(line) for line in (out / "removed.jsonl").read_text().splitlines()]
    assert [(x["id"], x["eval_file"]) for x in removed] == [("t1", str(sets[1])), ("t2", str(sets[0])),
                                                            ("t3", str(sets[2]))]
    m = manifest(out)
    assert m["config"]["against"] == [str(s) for s in sets]
    assert m["metrics"]["removed_by_eval"] == {str(s): 1 for s in sets}
    assert [i["path"] for i in m["inputs"]] == [str(train)] + [str(s) for s in sets]


def test_the_same_against_set_twice_is_refused(cli, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [{"prompt": KEEP}])
    math = write_jsonl(tmp_path / "math.jsonl", [{"prompt": MATH}])
    out = tmp_path / "clean"
    r = cli("decontaminate", "--data", train, "--against", math, "--against", math, "--output", out)
    assert_exit_2(r, f"--against {math} is given more than once", output=out)
