"""Decontamination: the n-gram matcher (chainforge.decontam) and the stage on real files."""

from __future__ import annotations

import json

import datasets
import pytest

from chainforge.outputs import MANIFEST, read_manifest
from chainforge.decontam import EvalIndex, Match, build_index, find_matches, normalise, prompt_text
from chainforge.errors import RunFailed, UsageError
from chainforge.stages.decontaminate import REMOVED, DecontaminateConfig, run
from helpers.files import write_jsonl

EVAL = [
    "A rectangle has a perimeter of 46 centimetres and its length is 5 centimetres more than its width. "
    "What is the area of the rectangle?",
    "How many positive divisors does the number 3600 have, counting 1 and the number itself?",
    "Solve 17x + 4 = 55.",  # 4 words once normalised: shorter than 8, compared whole
]
UNRELATED = ("Tom buys three apples at 40 cents each and pays with a five dollar note. "
             "How much change does he get back?")


def matches(train: list[str], evals: list[list[str]], n: int = 8) -> list:
    return find_matches(train, build_index(evals, n))


# ---- normalisation ------------------------------------------------------------------------------

def test_normalise_lowercases_and_treats_punctuation_and_spacing_as_word_breaks():
    assert normalise("What is  x^2+1=0,\tfor X?") == ["what", "is", "x", "2", "1", "0", "for", "x"]
    assert normalise("Fill the blank: 3 + ___ = 5") == ["fill", "the", "blank", "3", "5"]
    # NFKC + casefold: full-width letters and the German sharp s fold to plain words
    assert normalise("ＳＯＬＶＥ Straße") == ["solve", "strasse"]


def test_normalise_makes_each_cjk_character_a_word():
    assert normalise("求x的值。") == ["求", "x", "的", "值"]


def test_prompt_text_uses_only_the_user_turns_of_chat_messages():
    prompt = [{"role": "system", "content": "You are a careful tutor."},
              {"role": "user", "content": "First question"},
              {"role": "assistant", "content": "an earlier answer"},
              {"role": "user", "content": [{"type": "text", "text": "second part"}, {"type": "image"}]}]
    assert prompt_text(prompt) == "First question\nsecond part"
    assert prompt_text("plain") == "plain"
    with pytest.raises(ValueError, match="got int"):
        prompt_text(3)
    with pytest.raises(ValueError, match="got NoneType"):
        prompt_text(None)


# ---- matching -----------------------------------------------------------------------------------

def test_exact_copy_is_removed_and_unrelated_prompt_kept():
    found = matches([EVAL[0], UNRELATED], [EVAL])
    assert found[0] == Match(file=0, row=0, ngram="a rectangle has a perimeter of 46 centimetres")
    assert found[1] is None


def test_near_copy_sharing_one_8_gram_is_removed():
    # One word changed and a sentence added: the words after the change still form shared 8-grams.
    near = ("Here is a puzzle. A square has a perimeter of 46 centimetres and its length is 5 centimetres "
            "more than its width. What is the area of the rectangle?")
    [match] = matches([near], [EVAL])
    assert match is not None and (match.file, match.row) == (0, 0)
    assert match.ngram == "has a perimeter of 46 centimetres and its"


def test_overlap_of_only_n_minus_1_words_is_kept():
    # Every 8-word window of the eval prompt is broken by a changed word: at most 7 words in a row shared.
    words = EVAL[1].split()
    paraphrase = " ".join("word" if i % 8 == 7 else w for i, w in enumerate(words))
    assert matches([paraphrase], [[EVAL[1]]]) == [None]
    assert matches([paraphrase], [[EVAL[1]]], n=5)[0] is not None


def test_case_spacing_and_punctuation_variants_are_removed():
    variant = ("a RECTANGLE has a perimeter of 46 centimetres; and its length is 5 centimetres more "
               "than its width...   what is the area of the rectangle")
    [match] = matches([variant], [EVAL])
    assert match is not None and match.row == 0


def test_short_eval_prompt_is_compared_whole():
    found = matches(["solve 17x+4 = 55", "Please solve 17x + 4 = 55 and show your work.",
                     "Solve 17x + 4 = 56.", "Resolve 17x + 4 = 55."], [EVAL])
    assert [m and (m.row, m.ngram) for m in found] == [
        (2, "solve 17x 4 55"),          # equal after normalisation
        (2, "solve 17x 4 55"),          # contained as a whole run of words
        None,                           # a different number: not the same question
        None,                           # "resolve" is another word, not "solve" plus letters
    ]


def test_short_training_prompt_is_not_removed_for_a_fragment_of_a_long_eval_prompt():
    assert matches(["What is the area of the rectangle?"], [EVAL]) == [None]


def test_eval_prompt_without_words_matches_nothing():
    index = build_index([["?!", ""]], 8)
    assert index.prompts == 2 and find_matches(["? anything !"], index) == [None]


def test_reported_match_prefers_the_earlier_eval_file_then_the_earlier_overlap():
    first = "one two three four five six seven eight"
    second = "nine ten eleven twelve thirteen fourteen fifteen sixteen"
    train = f"{second} then {first}"
    # The overlap with the second file comes first in the text, but the first file wins.
    assert matches([train], [[first], [second]]) == [Match(0, 0, first)]
    assert matches([train], [[second], [first]]) == [Match(0, 0, second)]
    # A short eval prompt in an earlier file beats a long one in a later file.
    assert matches([train], [["seven eight"], [second]]) == [Match(0, 0, "seven eight")]
    # Within one file, the earliest row holding an n-gram is the one named.
    assert matches([first], [[f"x {first}", first]]) == [Match(0, 0, first)]


def test_ngram_must_be_positive():
    with pytest.raises(ValueError):
        EvalIndex(0)


# ---- the stage ----------------------------------------------------------------------------------

@pytest.fixture
def files(tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", [
        {"id": "t0", "prompt": UNRELATED, "answer": "80 cents"},
        {"id": "t1", "prompt": EVAL[0].upper(), "answer": "126"},                     # copy of test row 0
        {"id": "t2", "prompt": "Find the sum of the first 20 odd numbers.", "answer": "400"},
        {"id": "t3", "prompt": "Please solve 17x + 4 = 55 quickly", "answer": "3"},  # contains test row 2
        {"id": "t4", "prompt": "Natalia sold clips to 48 of her friends in April, and then half as many "
                               "in May. How many clips did she sell?", "answer": "72"},   # near copy of gsm-7
        {"id": "t5", "prompt": "How many positive divisors does the number 3600 have, counting 1?",
         "answer": "45"},                                                             # 11 words of test row 1
    ])
    test = write_jsonl(tmp_path / "test.jsonl", [
        {"prompt": p, "answer": a} for p, a in zip(EVAL, ["126", "45", "3"])])
    # A second eval set in another format, with chat-message prompts and its own ids.
    datasets.Dataset.from_list([
        {"id": "gsm-7", "prompt": [{"role": "system", "content": UNRELATED},  # not the question: ignored
                                   {"role": "user", "content": "Natalia sold clips to 48 of her friends in "
                                                               "April, and then she sold half as many clips "
                                                               "in May."}]},
    ]).to_parquet(str(tmp_path / "gsm.parquet"))
    return {"train": train, "test": test, "gsm": tmp_path / "gsm.parquet"}


def test_stage_writes_kept_rows_removed_lines_and_manifest(files, tmp_path):
    out = tmp_path / "clean"
    run(DecontaminateConfig(data=str(files["train"]), against=[str(files["test"]), str(files["gsm"])],
                            output=str(out)))

    kept = datasets.load_from_disk(str(out))
    assert kept["id"] == ["t0", "t2"]
    assert kept.column_names == ["id", "prompt", "answer"]  # every column passes through
    removed = [json.loads(line) for line in (out / REMOVED).read_text().splitlines()]
    assert [(r["index"], r["id"], r["eval_file"], r["eval_index"]) for r in removed] == [
        (1, "t1", str(files["test"]), 0),
        (3, "t3", str(files["test"]), 2),
        (4, "t4", str(files["gsm"]), 0),
        (5, "t5", str(files["test"]), 1),
    ]
    assert removed[0]["prompt"] == EVAL[0].upper()
    assert removed[1]["ngram"] == "solve 17x 4 55"
    assert removed[2]["eval_id"] == "gsm-7"
    assert removed[2]["ngram"] == "natalia sold clips to 48 of her friends"
    assert len(removed[0]["eval_id"]) == 16  # no id column: the prompt hash every stage uses

    manifest = read_manifest(out)
    assert manifest["stage"] == "decontaminate" and manifest["status"] == "complete"
    assert manifest["metrics"] == {"rows": 6, "kept": 2, "removed": 4, "ngram": 8,
                                   "removed_by_eval": {str(files["test"]): 3, str(files["gsm"]): 1}}
    assert manifest["config"]["against"] == [str(files["test"]), str(files["gsm"])]
    assert [i["path"] for i in manifest["inputs"]] == [str(files["train"]), str(files["test"]),
                                                      str(files["gsm"])]


def test_stage_compares_chat_message_training_prompts_and_a_custom_column(tmp_path):
    train = datasets.Dataset.from_list([
        {"question": [{"role": "system", "content": EVAL[1]},  # system text is not the question
                      {"role": "user", "content": "Count the divisors of 3600."}]},
        {"question": [{"role": "user", "content": "Hi."}, {"role": "assistant", "content": "Hello!"},
                      {"role": "user", "content": EVAL[1]}]},
    ])
    train.save_to_disk(str(tmp_path / "train"))
    write_jsonl(tmp_path / "test.jsonl", [{"question": EVAL[1]}])
    out = tmp_path / "out"
    run(DecontaminateConfig(data=str(tmp_path / "train"), against=[str(tmp_path / "test.jsonl")],
                            output=str(out), prompt_column="question"))
    kept = datasets.load_from_disk(str(out))
    assert kept["question"] == [train[0]["question"]]
    [line] = (out / REMOVED).read_text().splitlines()
    assert json.loads(line)["index"] == 1


def test_stage_ngram_and_limit_options(files, tmp_path):
    # With 12-word runs, t5's 11 words shared with test row 1 are no longer an overlap.
    run(DecontaminateConfig(data=str(files["train"]), against=[str(files["test"])], output=str(tmp_path / "a"),
                            ngram=12))
    assert datasets.load_from_disk(str(tmp_path / "a"))["id"] == ["t0", "t2", "t4", "t5"]
    assert read_manifest(tmp_path / "a")["metrics"]["ngram"] == 12
    # --limit reads only the first rows of --data.
    run(DecontaminateConfig(data=str(files["train"]), against=[str(files["test"])], output=str(tmp_path / "b"),
                            limit=2))
    assert datasets.load_from_disk(str(tmp_path / "b"))["id"] == ["t0"]
    assert read_manifest(tmp_path / "b")["metrics"] == {
        "rows": 2, "kept": 1, "removed": 1, "ngram": 8, "removed_by_eval": {str(files["test"]): 1}}


def test_nothing_removed_keeps_every_row_and_writes_an_empty_removed_file(files, tmp_path):
    out = tmp_path / "out"
    write_jsonl(tmp_path / "other.jsonl", [{"prompt": "An entirely different question about prime gaps."}])
    run(DecontaminateConfig(data=str(files["train"]), against=[str(tmp_path / "other.jsonl")], output=str(out)))
    assert len(datasets.load_from_disk(str(out))) == 6
    assert (out / REMOVED).read_text() == ""
    assert read_manifest(out)["metrics"]["removed"] == 0


def test_every_row_removed_is_a_runtime_stop_with_the_removed_lines_kept(files, tmp_path):
    out = tmp_path / "out"
    copy = tmp_path / "copy.jsonl"
    copy.write_text(files["train"].read_text())
    with pytest.raises(RunFailed, match="nothing is left to write"):
        run(DecontaminateConfig(data=str(files["train"]), against=[str(copy)], output=str(out)))
    assert read_manifest(out)["status"] == "incomplete"
    assert [json.loads(line)["eval_index"] for line in (out / REMOVED).read_text().splitlines()] == list(range(6))
    assert not (out / "state.json").exists()


def test_rerun_on_a_complete_output_needs_overwrite(files, tmp_path):
    out = tmp_path / "out"
    config = dict(data=str(files["train"]), against=[str(files["test"])], output=str(out))
    run(DecontaminateConfig(**config))
    with pytest.raises(UsageError, match="--overwrite"):
        run(DecontaminateConfig(**config))
    run(DecontaminateConfig(**config, overwrite=True))
    assert read_manifest(out)["status"] == "complete"


# ---- bad input: UsageError (exit 2) before --output exists ---------------------------------------

@pytest.mark.parametrize("change, message", [
    ({"against": []}, "missing --against"),
    ({"data": None}, "missing --data"),
    ({"output": ""}, "missing --output"),
    ({"ngram": 0}, "--ngram must be at least 1"),
    ({"ngram": 2.5}, "--ngram expects int"),
    ({"limit": 0}, "--limit must be at least 1"),
    ({"prompt_column": ""}, "--prompt-column"),
])
def test_config_rejects_bad_options(files, tmp_path, change, message):
    config = dict(data=str(files["train"]), against=[str(files["test"])], output=str(tmp_path / "out"))
    config.update(change)
    with pytest.raises(UsageError, match=message):
        DecontaminateConfig(**config)
    assert not (tmp_path / "out").exists()


def test_config_accepts_one_against_path_as_a_string_and_rejects_repeats(files, tmp_path):
    config = DecontaminateConfig(data=str(files["train"]), against=str(files["test"]), output="o")
    assert config.against == [str(files["test"])]
    assert config.redacted() == {"against": [str(files["test"])], "data": str(files["train"]), "limit": None,
                                 "ngram": 8, "output": "o", "overwrite": False, "prompt_column": "prompt",
                                 "seed": 0, "split": None, "subset": None}
    with pytest.raises(UsageError, match="more than once"):
        DecontaminateConfig(data=str(files["train"]), against=[str(files["test"])] * 2, output="o")


def bad_input_cases(files, tmp_path):
    (tmp_path / "broken.jsonl").write_text('{"prompt": "ok"}\nnot json\n')
    write_jsonl(tmp_path / "question.jsonl", [{"question": "q"}])
    write_jsonl(tmp_path / "numbers.jsonl", [{"prompt": 7}])
    train, test = str(files["train"]), str(files["test"])
    return {
        "missing --against file": (dict(data=train, against=[str(tmp_path / "nope.jsonl")]), "--against not found"),
        "unreadable --against file": (dict(data=train, against=[str(tmp_path / "broken.jsonl")]),
                                      "line 2 is not valid JSON"),
        "missing column in --against": (dict(data=train, against=[str(tmp_path / "question.jsonl")]),
                                        "has no column 'prompt'; columns found: question"),
        "missing column in --data": (dict(data=str(tmp_path / "question.jsonl"), against=[test]),
                                     "--data has no column 'prompt'"),
        "prompt that is not text": (dict(data=train, against=[str(tmp_path / "numbers.jsonl")]),
                                    "row 0 of column 'prompt' is not a prompt"),
        "--against is --data": (dict(data=train, against=[test, train]), "is the --data set itself"),
        "--output holds an input": (dict(data=train, against=[test], output=str(tmp_path)), "contains the --data input"),
    }


@pytest.mark.parametrize("case", ["missing --against file", "unreadable --against file",
                                  "missing column in --against", "missing column in --data",
                                  "prompt that is not text", "--against is --data", "--output holds an input"])
def test_bad_input_is_a_usage_error_before_output_is_created(files, tmp_path, case):
    config, message = bad_input_cases(files, tmp_path)[case]
    out = tmp_path / "out"
    config.setdefault("output", str(out))
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UsageError, match=message):
        run(DecontaminateConfig(**config, overwrite=case == "--output holds an input"))
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert not (tmp_path / MANIFEST).exists()
