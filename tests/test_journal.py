"""The one journal rule (chainforge/journal.py) and the journals that follow it: collect's AppendLog
and the sampling engine's generate_journaled (on the tiny model). Real files on disk."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from chainforge.collect.journal import AppendLog, compact_failed, rows_in_order
from chainforge.journal import Journal


def write_lines(path: Path, lines: list[str], torn: str = "") -> Path:
    path.write_bytes(("".join(line + "\n" for line in lines) + torn).encode())
    return path


ROWS = [json.dumps({"id": f"r{i}", "value": i}) for i in range(10)]


@pytest.mark.parametrize("bad", [
    '{"id": "r2", "val',          # not JSON (a disk hiccup, a bad hand edit)
    '[1, 2, 3]',                  # JSON, not an object
    '"r2"',                       # JSON, not an object
    '{"value": 2}',               # an object without the key field
    '\x00\x00\x00\x00',           # zeroed blocks after a crash of the machine
])
def test_a_bad_line_in_the_middle_costs_only_itself(tmp_path, capfd, bad):
    lines = list(ROWS)
    lines[2] = bad
    path = write_lines(tmp_path / "j.jsonl", lines)
    size = path.stat().st_size
    got = Journal(path, key="id").recover()
    assert [rec["id"] for _, rec in got] == [f"r{i}" for i in range(10) if i != 2]
    assert path.stat().st_size == size  # the bad line stays for a person to look at
    err = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert err.count("warning:") == 1 and "skipped 1 unreadable line" in err and "kept 9" in err


def test_a_torn_last_line_is_cut_and_appending_goes_on_cleanly(tmp_path, capfd):
    path = write_lines(tmp_path / "j.jsonl", ROWS[:5], torn=ROWS[5][:12])
    log = Journal(path, key="id")
    assert [rec["id"] for _, rec in log.recover()] == ["r0", "r1", "r2", "r3", "r4"]
    assert path.read_bytes().endswith(b"}\n")  # cut at the last whole line
    assert "warning:" not in capfd.readouterr().err  # a torn tail is expected after a crash, not a fault
    log.append({"id": "r5", "value": 5})
    log.close()
    assert [rec["id"] for _, rec in Journal(path, key="id").recover()] == [f"r{i}" for i in range(6)]


def test_one_warning_counts_every_skipped_line_however_often_the_journal_is_read(tmp_path, capfd):
    lines = list(ROWS)
    lines[1], lines[4], lines[7] = "garbage", "[]", '{"no": "id"}'
    path = write_lines(tmp_path / "j.jsonl", lines, torn='{"id": "r10"')
    log = Journal(path, key="id")
    for _ in range(3):  # collect reads its journal at the start, for progress and at the end
        assert len(log.recover()) == 7
    err = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert err.count("warning:") == 1 and "skipped 3 unreadable lines" in err


def test_a_record_the_reader_cannot_use_is_skipped_not_raised(tmp_path, capfd):
    """collect's reader takes fields out of each row; a row without them used to raise."""
    lines = [json.dumps({"id": "a", "usage": {"cost_usd": 0.5}}), json.dumps({"id": "b", "usage": None}),
             json.dumps({"id": "c"}), json.dumps({"id": "d", "usage": {"cost_usd": 0.25}})]
    path = write_lines(tmp_path / "journal.jsonl", lines)
    got = AppendLog(path).recover(lambda r: (r["id"], r["usage"]["cost_usd"]))
    assert [v for _, v in got] == [("a", 0.5), ("d", 0.25)]
    assert "skipped 2 unreadable lines" in " ".join(capfd.readouterr().err.split())
    # the offsets it returns read the same rows back
    assert [r["id"] for r in rows_in_order(path, [(i, off) for i, (off, _) in enumerate(got)])] == ["a", "d"]


def test_failed_jsonl_compaction_keeps_its_readable_lines(tmp_path):
    path = write_lines(tmp_path / "failed.jsonl", [
        json.dumps({"id": "a", "reason": "x"}), "not json", json.dumps({"id": "b", "reason": "y"}),
        json.dumps({"id": "a", "reason": "z"}), json.dumps({"id": "c", "reason": "w"})])
    assert compact_failed(path, done_ids={"c"}) == 2
    assert [json.loads(x) for x in path.read_text().splitlines()] == [{"id": "a", "reason": "z"},
                                                                       {"id": "b", "reason": "y"}]


# ---- the sampling engine's journal -------------------------------------------------------------------

@pytest.fixture(scope="module")
def loaded(tiny_model):
    from chainforge.models import load_model, load_tokenizer, resolve_model

    ref = resolve_model(str(tiny_model))
    return load_model(ref), load_tokenizer(ref)


PROMPTS = ["What is 1 + 1?", "Hi", "Name a prime", "Count to three"]
KW = dict(n=2, temperature=1.0, max_new_tokens=6, seed=5)


def test_sampling_journal_cuts_a_torn_last_line_so_later_rows_stay_readable(loaded, tmp_path):
    """A torn tail was left in place and the next row glued onto it, losing that row on every rerun."""
    from chainforge.sampling import generate_journaled

    model, tok = loaded
    path = tmp_path / "samples.jsonl"
    full = generate_journaled(path, model, tok, PROMPTS, chunk=1, **KW)
    lines = path.read_text().splitlines()
    path.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:25])  # killed writing the third row
    drawn = []
    assert generate_journaled(path, model, tok, PROMPTS, chunk=1, on_batch=drawn.append, **KW) == full
    assert sum(drawn) == 4  # the last two rows written, two samples each
    assert sorted(json.loads(x)["index"] for x in path.read_text().splitlines()) == [0, 1, 2, 3]
    drawn.clear()
    assert generate_journaled(path, model, tok, PROMPTS, chunk=1, on_batch=drawn.append, **KW) == full
    assert sum(drawn) == 0  # nothing left to draw: every row is readable


def test_sampling_journal_keeps_every_row_after_a_bad_one_and_warns_once(loaded, tmp_path, capfd):
    from chainforge.sampling import generate_journaled

    model, tok = loaded
    path = tmp_path / "samples.jsonl"
    full = generate_journaled(path, model, tok, PROMPTS, chunk=2, **KW)
    lines = path.read_text().splitlines()
    lines[1] = '{"index": 1, "prompt_sha": "x", "completions": [{"bogus": 1}]}'  # unreadable completions
    path.write_text("\n".join(lines) + "\n")
    capfd.readouterr()
    drawn = []
    assert generate_journaled(path, model, tok, PROMPTS, chunk=2, on_batch=drawn.append, **KW) == full
    assert sum(drawn) == 2  # prompt 1 only
    err = " ".join(capfd.readouterr().err.split())  # rich wraps long lines
    assert err.count("warning:") == 1 and "skipped 1 unreadable line" in err
