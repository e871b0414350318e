"""The `language` reward (DeepSeek-R1's language consistency): the share of the reasoning's words in
the target language, words told apart by Unicode script; through the registry, grpo and reject."""

import json

import datasets
import pytest

from chainforge import language as lang
from chainforge.errors import UsageError
from chainforge.formats import write_super_cot
from chainforge.rewards import REWARDS, get_reward, reasoning_text
from helpers.cli import assert_exit_2
from helpers.files import write_jsonl

EN_PROMPT = "What is 2 + 3?"
ZH_PROMPT = "2 加 3 等于多少？"
# English reasoning with four Chinese characters in it: 7 English words, 4 Han words
EN_MIXED = write_super_cot(["First add the numbers: 2 + 3 = 5, so $x = 5$.", "这个答案 is correct"], None, "5")
# Chinese reasoning with three English words: 10 Han words, 3 English ones
ZH_MIXED = write_super_cot(["首先把两个数相加：2 + 3 = 5，所以 x = 5。", "check the answer"], None, "5")


# ---- what counts as a word, and in which language -------------------------------------------------

def test_mixed_text_is_scored_by_the_share_of_target_words():
    fn = get_reward("language")
    # each prompt's own language: English for the first, Chinese for the second
    assert fn([EN_MIXED, ZH_MIXED], prompts=[EN_PROMPT, ZH_PROMPT]) == [pytest.approx(7 / 11), pytest.approx(10 / 13)]
    # the reverse target
    assert get_reward("language", language="zh")([EN_MIXED, ZH_MIXED]) == [pytest.approx(4 / 11),
                                                                           pytest.approx(10 / 13)]
    assert get_reward("language", language="en")([ZH_MIXED]) == [pytest.approx(3 / 13)]
    # all in one language
    pure = write_super_cot(["Add the two numbers together."], None, "5")
    assert fn([pure], prompts=[EN_PROMPT]) == [1.0]
    assert get_reward("language", language="zh")([pure]) == [0.0]


def test_numbers_latex_tags_and_variables_are_neutral():
    neutral = write_super_cot([r"$\frac{12}{3} = 4$; \(\alpha + \beta\)", r"\[ \sum_{i=1}^{n} i \] 42 x = y",
                               r"\begin{align} \text{area} &= \pi r^2 \end{align} 3.14 <think>"], None, "4")
    assert lang.words(reasoning_text(neutral)) == []
    assert get_reward("language", language="zh")([neutral]) == [1.0]  # no words: nothing in another language
    # the summary is not reasoning; R1's <think> format is
    assert get_reward("language", language="zh")([write_super_cot(["求和"], None, "the answer is four")]) == [1.0]
    assert get_reward("language", language="en")(["<think>让我想想 then add</think> answer"]) == [pytest.approx(2 / 6)]


def test_prompt_language_comes_from_the_user_turns_and_handles_japanese():
    chat = [{"role": "system", "content": "Think step by step and answer in English, please."},
            {"role": "user", "content": ZH_PROMPT}]
    assert lang.prompt_language(chat) == (lang.HAN,)
    assert lang.prompt_language("りんごを3個買いました。全部でいくつ？") == lang.JAPANESE  # kana: Japanese
    assert lang.prompt_language("Сколько будет 2 + 3?") == ("Cyrillic",)
    assert lang.prompt_language("2 + 3 = ?") is None
    # Japanese reasoning mixes Han and kana: all of it is Japanese
    assert get_reward("language")(["<think>まず 2 と 3 を足す。合計は 5 です。</think>"],
                                  prompts=["りんごを3個買いました。"]) == [1.0]
    # a prompt without words and no --language: no signal
    assert get_reward("language")([EN_MIXED], prompts=["2 + 3 = ?"]) == [None]
    assert get_reward("language")([EN_MIXED]) == [None]


def test_registered_like_the_other_rewards():
    assert "language" in REWARDS and get_reward("language").__name__ == "language"
    assert get_reward("language", language="zh").__name__ == "language"
    with pytest.raises(ValueError, match="unknown language 'klingon'; known: .*en.*zh"):
        get_reward("language", language="klingon")
    # chat-message completions, as TRL passes them
    assert get_reward("language", language="en")([[{"role": "assistant", "content": EN_MIXED}]]) == \
        [pytest.approx(7 / 11)]


@pytest.mark.parametrize("stage", ["grpo", "reject", "eval"])
def test_language_option_is_checked_with_the_rewards(stage):
    from chainforge.stages import stage_module

    cls = stage_module(stage).CONFIG
    base = dict(model="m", data="d", output="o")
    assert cls(**base, rewards="accuracy,language=0.5", language="ZH").reward_params() == \
        {"language": {"language": "ZH"}}
    assert cls(**base, rewards="language").reward_params() == {}
    with pytest.raises(UsageError, match="--language: unknown language 'xx'; known: "):
        cls(**base, rewards="language", language="xx")
    with pytest.raises(UsageError, match="which --rewards does not include; add it"):
        cls(**base, language="en")


# ---- through the stages -----------------------------------------------------------------------

def test_bad_language_is_one_line_exit_2(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": EN_PROMPT, "answer": "5"}])
    r = cli("reject", "--model", tiny_model, "--data", data, "--output", tmp_path / "out", "--rewards", "language",
            "--language", "xx")
    assert assert_exit_2(r, output=tmp_path / "out").startswith("Error: --language: unknown language 'xx'; known: ")


def test_grpo_trains_with_the_language_reward(cli, tiny_model, tmp_path):
    data = write_jsonl(tmp_path / "p.jsonl", [{"prompt": p, "answer": "5"} for p in (EN_PROMPT, ZH_PROMPT) * 2])
    out = tmp_path / "rl"
    r = cli("grpo", "--model", tiny_model, "--data", data, "--output", out, "--max-steps", "1",
            "--rewards", "format,language", "--language", "zh", "--save-steps", "100", "--num-generations", "2",
            "--prompts-per-step", "2", "--max-new-tokens", "8")
    assert r.exit_code == 0, r.stderr
    rows = [json.loads(line) for line in (out / "rollouts.jsonl").read_text().splitlines()]
    assert len(rows) == 4
    fn = get_reward("language", language="zh")
    for x in rows:  # what TRL used is what the reward gives for that completion
        assert x["rewards"]["language"] == pytest.approx(fn([x["completion"]])[0])
    metrics = json.loads((out / "chainforge.json").read_text())["metrics"]
    assert "reward/language" in metrics
    assert json.loads((out / "chainforge.json").read_text())["config"]["language"] == "zh"


def test_reject_scores_each_prompt_in_its_own_language(cli, tiny_model, tmp_path):
    # the prompt column has another name: the reward still gets each row's prompt
    rows = [{"id": "en", "question": EN_PROMPT, "answer": "5"}, {"id": "zh", "question": ZH_PROMPT, "answer": "5"}]
    data = write_jsonl(tmp_path / "p.jsonl", rows)
    out = tmp_path / "rej"
    r = cli("reject", "--model", tiny_model, "--data", data, "--output", out, "--prompt-column", "question",
            "--rewards", "language", "--min-reward", "0", "--keep", "all-passing", "--num-samples", "4",
            "--max-new-tokens", "12", "--temperature", "1.0")
    assert r.exit_code == 0, r.stderr
    kept = datasets.load_from_disk(str(out))
    fn = get_reward("language")
    scored = [(row["reward"], fn([row["text"]], prompts=[row["prompt"]])[0]) for row in kept]
    assert scored and all(got == pytest.approx(want) for got, want in scored)
    assert any(want is not None for _, want in scored)
    by_id = {row["id"] for row in kept}
    assert by_id == {"en", "zh"}
