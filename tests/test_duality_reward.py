"""The duality reward on hand-made cases, the unknown-component filter, reranking picks, and
the `reward=` hook (a fake policy stands in for the model: no torch model is loaded here)."""

from __future__ import annotations

import math
import re
import time

import pytest

from tandemrl.errors import ConfigError
from tandemrl.loop import load_config
from tandemrl.tasks import RewardSpec, run_reward
from tandemrl.tasks.duality_reward import (
    DualityConfig,
    MathDualityReward,
    TranslationDualityReward,
    problem_text,
)
from tandemrl.tasks.duality_score import (
    accuracy_matrix,
    backward_accuracy,
    distance_reward,
    dual_rerank,
    duality_rewards,
    keep_questions,
    majority_vote,
    recovered,
    text_distance,
    unique_recovery,
)
from tandemrl.tasks.reward_sources import bind_policy_rewards, pop_reward_metrics, reward_specs

PROMPT = [{"role": "user", "content": "Calculate 26 - 54.\nEnd your reply with: Answer: <number>"}]


class Solver:
    """A perfect dual solver: reads `LHS = RHS. What is x?` and answers the integer x."""

    def __init__(self):
        self.prompts: list[str] = []

    def __call__(self, prompts, n, *, temperature, max_new_tokens, seed):
        out = []
        for p in prompts:
            text = p[-1]["content"]
            self.prompts.append(text)
            lhs, rhs = re.match(r"(.*) = (-?\d+)\. What is x\?", text).groups()
            x = next(v for v in range(-500, 500) if eval(lhs.replace("x", f"({v})")) == int(rhs))
            out += [f"x = {x}. Answer: {x}"] * n
        return out


def constant(answer: str):
    def gen(prompts, n, **_):
        return [f"Answer: {answer}"] * (len(prompts) * n)

    return gen


def reward(cfg=None, gen=None):
    fn = MathDualityReward(cfg or DualityConfig())
    fn.bind_policy(gen or Solver())
    return fn


# -- pure scoring ------------------------------------------------------------------------


def test_recovery_and_backward_accuracy():
    assert recovered("so x = 26.0\nAnswer: 26", "26")
    assert not recovered("Answer: 25", "26")
    assert not recovered("I do not know", "26")
    assert backward_accuracy(["Answer: 26", "27", "x is 26"], "26") == pytest.approx(2 / 3)


def test_unique_recovery_filter():
    assert unique_recovery([1.0, 0.0, 0.25])
    assert not unique_recovery([1.0, 1.0, 0.0])  # two answers recover: uninformative
    assert not unique_recovery([0.0, 0.0])  # none recovers
    assert unique_recovery([0.5, 0.25])  # threshold 0.5 is inclusive
    assert not unique_recovery([0.5, 0.25], threshold=0.75)
    assert keep_questions([[1, 1], [1, 0]]) == [False, True]
    assert keep_questions([]) == []


def test_rewards_average_kept_questions():
    acc = [[1.0, 0.0], [0.5, 1.0]]
    assert duality_rewards(acc) == [0.5, 0.75]
    assert duality_rewards(acc, [False, True]) == [0.0, 1.0]
    assert duality_rewards(acc, [False, False]) == [None, None]


def test_distance_reward_forms():
    assert distance_reward(0.5, lam=2.0) == pytest.approx(math.exp(-1.0))
    assert distance_reward(0.0) == 1.0
    assert distance_reward(0.3, form="linear") == pytest.approx(0.7)
    with pytest.raises(ValueError, match="form"):
        distance_reward(0.3, form="log")
    assert text_distance("seventy-nine", "Seventy-Nine") == pytest.approx(0.0)
    assert text_distance("qqq", "seventy-nine") == pytest.approx(1.0)  # no shared character


def test_majority_and_dual_rerank_picks():
    assert majority_vote(["5", None, "7", "7", "5"]) == 0  # tie: the answer seen first
    assert majority_vote([None, "3", "4", "4"]) == 2
    assert majority_vote([None, None]) is None
    assert dual_rerank(["5", "7", "7"], [0.2, 0.9, 0.9]) == 1
    assert dual_rerank(["5", "7", "8"], [0.5, 0.5, 0.1]) == 0  # tie, same votes: earlier
    assert dual_rerank(["5", "7", "7"], [0.5, 0.5, 0.5]) == 1  # tie: more votes
    assert dual_rerank([None, "3"], [None, 0.0]) == 1  # no answer is never picked
    assert dual_rerank(["4", "6", "6"], [None, None, None]) == 1  # no scores: majority


# -- the maths reward ---------------------------------------------------------------------


def test_right_wrong_and_unparseable_answers():
    fn = reward()
    completions = ["26 - 54 = -28\nAnswer: -28", "Answer: -30", "no idea", "It is -28."]
    assert fn([PROMPT] * 4, completions) == [1.0, 0.0, 0.0, 1.0]
    # Two distinct answers x two dual questions, one reconstruction each.
    m = fn.pop_metrics()
    assert (m["dual/prompts"], m["dual/samples"], m["dual/samples_per_response"]) == (4, 4, 1)
    assert m["dual/unparsed_frac"] == 0.25
    assert m["dual/backward_acc"] == 0.5 and m["dual/filtered_frac"] == 0.0
    assert m["dual/generate_s"] >= 0
    assert fn.pop_metrics() == {}  # popped


def test_dual_prompts_use_the_answer_not_the_label():
    solver = Solver()
    fn = reward(gen=solver)
    out = fn([PROMPT] * 2, ["Answer: -28", "Answer: -30"], answer=[999, 999])
    assert out == [1.0, 0.0]  # a wrong label changes nothing
    assert solver.prompts[:2] == [
        "x - 54 = -28. What is x?\nEnd your reply with: Answer: <number>",
        "26 - x = -28. What is x?\nEnd your reply with: Answer: <number>",
    ]
    m = fn.pop_metrics()
    assert "dual/reward_if_correct" not in m and m["dual/reward_if_wrong"] == 0.5
    fn([PROMPT] * 2, ["Answer: -28", "Answer: -30"], answer=[-28, -28])
    m = fn.pop_metrics()
    assert (m["dual/reward_if_correct"], m["dual/reward_if_wrong"]) == (1.0, 0.0)


def test_filter_drops_questions_every_or_no_answer_recovers():
    # A policy that always says 54: question 1 (hidden 26) is never recovered, question 2
    # (hidden 54) by every answer, so both are dropped and parsed answers abstain.
    fn = reward(gen=constant("54"))
    assert fn([PROMPT] * 3, ["Answer: -28", "Answer: 5", "none"]) == [None, None, 0.0]
    assert fn.pop_metrics()["dual/filtered_frac"] == 1.0
    unfiltered = reward(DualityConfig(filter=False), gen=constant("54"))
    assert unfiltered([PROMPT] * 3, ["Answer: -28", "Answer: 5", "none"]) == [0.5, 0.5, 0.0]


def test_samples_give_a_backward_accuracy():
    def first_of_three(prompts, n, **_):
        out = []
        for _p in prompts:
            out += ["Answer: 26"] + ["Answer: 0"] * (n - 1)
        return out

    cfg = DualityConfig(samples=3, filter=False, max_questions=1)
    assert reward(cfg, gen=first_of_three)([PROMPT], ["Answer: -28"]) == [pytest.approx(1 / 3)]
    cfg = DualityConfig(samples=3, max_questions=1)  # 1/3 < threshold: nobody recovers
    assert reward(cfg, gen=first_of_three)([PROMPT], ["Answer: -28"]) == [None]


def test_problem_without_usable_number_abstains_without_generating():
    solver = Solver()
    fn = reward(gen=solver)
    square = [{"role": "user", "content": "Calculate 3 * 3.\nEnd your reply with: Answer: <n>"}]
    out = fn([square, square, PROMPT], ["Answer: 9", "Answer: 6", "Answer: -28"])
    assert out == [None, None, 1.0]
    assert len(solver.prompts) == 2  # only the usable problem's two questions
    assert fn.pop_metrics()["dual/skipped_frac"] == pytest.approx(2 / 3)


def test_problem_text_prefers_the_dataset_question():
    assert problem_text(PROMPT) == "Calculate 26 - 54."
    assert problem_text(PROMPT, {"question": "Calculate 1 + 2.", "answer": "3"}) == (
        "Calculate 1 + 2."
    )


def test_unbound_reward_raises():
    with pytest.raises(RuntimeError, match="bind_policy"):
        MathDualityReward(DualityConfig())([PROMPT], ["Answer: -28"])


# -- translation --------------------------------------------------------------------------


def test_translation_reward_back_translates_against_the_source():
    seen = []

    def back(prompts, n, **_):
        seen.extend(p[-1]["content"] for p in prompts)
        table = {"soixante-dix-neuf": "seventy-nine", "quatre": "qqq"}
        return [table[p[-1]["content"].split("\n\n")[-1]] for p in prompts for _ in range(n)]

    fn = TranslationDualityReward(DualityConfig(lam=2.0))
    fn.bind_policy(back)
    prompt = [{"role": "user", "content": "Translate into French.\n\nseventy-nine"}]
    out = fn([prompt] * 3, ["soixante-dix-neuf", "quatre", ""], source=["seventy-nine"] * 3)
    assert out == [pytest.approx(1.0), pytest.approx(math.exp(-2.0)), 0.0]
    assert seen == [
        "Translate into English. Reply with the English text only.\n\nsoixante-dix-neuf",
        "Translate into English. Reply with the English text only.\n\nquatre",
    ]  # the empty translation is not back-translated
    linear = TranslationDualityReward(DualityConfig(form="linear"))
    linear.bind_policy(back)
    assert linear([prompt], ["quatre"]) == [pytest.approx(0.0)]  # source read from the prompt


# -- the reward= hook ---------------------------------------------------------------------


class FakeTask:
    name = "arith2"
    rewards = [RewardSpec("correct", lambda p, c, **_: [1.0] * len(c))]


def test_reward_sources_and_gold_mixing():
    cfg = load_config(None, ["model=tiny"])
    assert [s.name for s in reward_specs(cfg, FakeTask())] == ["correct"]
    cfg = load_config(None, ["model=tiny", "reward=duality"])
    specs = reward_specs(cfg, FakeTask())
    assert [s.name for s in specs] == ["duality"]
    assert isinstance(specs[0].fn, MathDualityReward)
    cfg = load_config(None, ["model=tiny", "reward=duality", "duality.gold_weight=0.5"])
    specs = reward_specs(cfg, FakeTask())
    assert [(s.name, s.weight) for s in specs] == [("duality", 1.0), ("correct", 0.5)]


def test_bad_reward_config_is_one_line():
    with pytest.raises(ConfigError, match="unknown reward source 'dualty'"):
        load_config(None, ["model=tiny", "reward=dualty"])
    with pytest.raises(ConfigError, match="duality.samples must be >= 1"):
        load_config(None, ["model=tiny", "duality.samples=0"])


def test_bind_and_pop_reach_only_rewards_that_have_them():
    fn = MathDualityReward(DualityConfig())
    specs = [RewardSpec("plain", lambda p, c, **_: [0.0] * len(c)), RewardSpec("duality", fn)]
    solver = Solver()
    bind_policy_rewards(specs, solver)
    assert fn.generate is solver
    fn([PROMPT], ["Answer: -28"])
    assert pop_reward_metrics(specs)["dual/samples"] == 2


def test_run_reward_uses_the_functions_own_time_limit():
    def slow(prompts, completions, **_):
        time.sleep(0.3)
        return [1.0] * len(completions)

    slow.timeout_s = 0.05
    outcome = run_reward(RewardSpec("slow", slow), [PROMPT], ["a"], {}, timeout_s=None)
    assert outcome.values == [None] and outcome.errors == 1
    slow.timeout_s = 5.0
    assert run_reward(RewardSpec("slow", slow), [PROMPT], ["a"], {}).values == [1.0]


def test_an_answer_equal_to_the_hidden_number_is_not_scored():
    # A policy that copies the number after "=": for the answer 26 (a copy of an operand) the
    # question "x - 54 = 26" states its own hidden number, so copying would "recover" it.
    def copier(prompts, n, **_):
        rhs = [re.search(r"= (-?\d+)", p[-1]["content"]).group(1) for p in prompts]
        return [f"Answer: {v}" for v in rhs for _ in range(n)]

    assert accuracy_matrix(["26", "-28"], ["26", "54"], ["26", "26", "-28", "-28"], 1) == [
        [None, 0.0],
        [0.0, 0.0],
    ]
    fn = reward(gen=copier)
    assert fn([PROMPT] * 2, ["Answer: 26", "Answer: -28"]) == [None, None]  # all filtered
    assert fn.pop_metrics()["dual/leak_frac"] == 0.25  # 1 of 4 (answer, question) pairs
    unfiltered = reward(DualityConfig(filter=False), gen=copier)
    assert unfiltered([PROMPT] * 2, ["Answer: 26", "Answer: -28"]) == [0.0, 0.0]
    assert duality_rewards([[None, 1.0], [None, None]]) == [1.0, None]
    assert unique_recovery([None, 1.0]) and not unique_recovery([None, None])


def test_rerank_picks_judge_the_filter_among_the_candidates_shown():
    from types import SimpleNamespace

    from tandemrl.cli.rerank import _picks

    duals = SimpleNamespace(usable=True)
    distinct = ["5", "7"]  # every drawn answer; both recover the one hidden number
    acc = [[1.0], [1.0]]
    both = _picks(["7", "5", "5"], [0.0, 1.0, 1.0], distinct, acc, duals, 0.5)
    # Two answers recover it: the filter drops the question, the pick falls back to majority.
    assert both["filter_fallback"] == 1.0 and both["dual_filtered"] == 1.0
    assert both["dual_scores"] == [1.0, 1.0, 1.0]
    assert both["dual"] == 1.0  # tie on score: more votes ("5")
    # The first candidate alone: one answer recovers it, so the question is kept.
    first = _picks(["7"], [0.0], distinct, acc, duals, 0.5)
    assert first["filter_fallback"] == 0.0 and first["dual_filtered"] == 0.0
    assert (first["oracle"], first["candidate_mean"], first["no_answer"]) == (0.0, 0.0, 0.0)
    none = _picks([None, None], [0.0, 0.0], distinct, acc, duals, 0.5)
    assert none["no_answer"] == 1.0 and none["majority"] == 0.0


def test_solved_form_asks_forward_questions_and_scores_the_same():
    """dual_form=solved: the dual question is the solved expression; a calculator that only
    evaluates forward recovers the hidden numbers of the right answer and not of a wrong one."""
    asked: list[str] = []

    def calculator(prompts, n, **_):
        out = []
        for p in prompts:
            text = p[-1]["content"]
            asked.append(text)
            expression = re.match(r"Calculate (.*)\.\n", text).group(1)
            out += [f"Answer: {eval(expression):g}"] * n
        return out

    fn = reward(DualityConfig(dual_form="solved"), gen=calculator)
    assert fn([PROMPT] * 3, ["Answer: -28", "Answer: -30", "none"]) == [1.0, 0.0, 0.0]
    assert asked[:2] == [
        "Calculate -28 + 54.\nEnd your reply with: Answer: <number>",
        "Calculate 26 + 28.\nEnd your reply with: Answer: <number>",
    ]
    with pytest.raises(ConfigError, match="dual_form"):
        DualityConfig(dual_form="inverse").check()
