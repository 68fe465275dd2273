"""The workload scenarios (code-edit, summarize, chat): their built-in prompts, and the speculative hook."""

from __future__ import annotations

import re
from collections import Counter

import pytest
from rich.console import Console

from lokal.bench import speculative
from lokal.bench.loadgen import RequestRecord, _parse_line
from lokal.bench.report import workload_table
from lokal.bench.scenarios import (
    RENAMES,
    WORKLOADS,
    builtin_text,
    code_edit_answer,
    code_edit_prompt,
    make_scenario,
    workload_prompts,
)


def words(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]", text)


@pytest.mark.parametrize("name", WORKLOADS)
def test_workload_scenarios_are_one_user_reading_to_eos(name: str) -> None:
    sc = make_scenario(name)
    assert sc.workload == name and sc.concurrency == [1] and sc.rounds_at(1) == 3
    assert sc.ignore_eos is False and sc.max_tokens is not None and sc.max_tokens > 0
    assert make_scenario(name, [1, 2], 4).concurrency == [1, 2]


def test_code_edit_budget_fits_the_whole_rewritten_function() -> None:
    answer_words = len(words(code_edit_answer("entry", "record")))
    assert make_scenario("code-edit").max_tokens >= answer_words  # a word-ish piece is at least one token
    assert make_scenario("summarize").max_tokens < 200 and make_scenario("chat").max_tokens < 200


@pytest.mark.parametrize(("old", "new"), RENAMES)
def test_code_edit_answer_mostly_repeats_the_prompt(old: str, new: str) -> None:
    code = builtin_text("code_edit.py.txt")
    assert re.search(rf"\b{old}\b", code) and not re.search(rf"\b{new}\b", code)
    prompt = code_edit_prompt(old, new).messages[0]["content"]
    answer = code_edit_answer(old, new)
    assert answer != code and not re.search(rf"\b{old}\b", answer) and code in prompt
    have, want = Counter(words(prompt)), Counter(words(answer))
    shared = sum(min(n, have[w]) for w, n in want.items())
    assert shared / sum(want.values()) >= 0.9  # an n-gram drafter can find almost every answer token in the prompt
    assert 150 <= len(code.split()) and len(words(code)) >= 400


def test_workload_prompts_are_fixed_per_seed_and_new_each_round() -> None:
    for name in WORKLOADS:
        a, b = workload_prompts(name, 3, seed=0), workload_prompts(name, 3, seed=0)
        assert a == b
        again = workload_prompts(name, 3, seed=0, round_no=1)
        # every request starts differently: no target serves a repeat from a prefix cache
        firsts = {p.messages[0]["content"][:14] for p in a + again}
        assert len(firsts) == 6
    renames = [p.messages[0]["content"] for p in workload_prompts("code-edit", 3, seed=0)]
    assert len({re.search(r"`(\w+)`", t).group(1) for t in renames}) == 3  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="unknown workload"):
        workload_prompts("nope", 1, 0)


def test_summarize_is_long_and_chat_is_short_without_repetition() -> None:
    long = workload_prompts("summarize", 1, 0)[0].messages[0]["content"]
    assert 1100 <= len(long.split()) <= 1400  # ≈ 1,500 tokens
    chats = [p.messages[0]["content"] for p in workload_prompts("chat", 12, 0)]
    assert all(len(c.split()) < 25 for c in chats)
    assert len({c.split(":", 1)[1] for c in chats}) == 12


def test_acceptance_from_lokal_metrics_counters() -> None:
    page = ("# HELP lokal_speculative_drafted_tokens_total drafted\n"
            "# TYPE lokal_speculative_drafted_tokens_total counter\n"
            'lokal_speculative_drafted_tokens_total{model="a"} 10.0\n'
            'lokal_speculative_drafted_tokens_total{model="b"} 30.0\n'
            'lokal_speculative_accepted_tokens_total{model="a"} 24.0\n'
            "lokal_requests_total 3\n")
    assert speculative.parse_counters(page) == (40.0, 24.0)
    assert speculative.parse_counters("lokal_requests_total 3\n") is None
    s = speculative.summary((40.0, 24.0), (140.0, 84.0), [])
    assert s == {"source": "metrics", "drafted": 100, "accepted": 60, "acceptance": 0.6}
    assert speculative.summary((5.0, 1.0), (5.0, 1.0), [])["acceptance"] is None  # type: ignore[index]
    merged = speculative.merge([s, None, {"source": "metrics", "drafted": 100, "accepted": 20, "acceptance": 0.2}])
    assert merged is not None and merged["acceptance"] == pytest.approx(0.4)
    assert speculative.merge([None, None]) is None


def test_acceptance_from_llama_server_timings_else_none() -> None:
    rec = RequestRecord()
    line = 'data: {"choices": [], "timings": {"draft_n": 12, "draft_n_accepted": 9, "predicted_n": 20}}'
    assert _parse_line(line, "openai", rec) == ("", False)
    assert (rec.draft_tokens, rec.draft_accepted) == (12, 9)
    other = RequestRecord(ttft=0.1)
    s = speculative.summary(None, None, [rec, other])
    assert s == {"source": "timings", "drafted": 12, "accepted": 9, "acceptance": 0.75}
    assert speculative.summary(None, None, [other]) is None


def test_workload_table_shows_e2e_ratio_and_acceptance() -> None:
    def row(name: str, e2e: float, spec: dict[str, object] | None) -> dict[str, object]:
        level = {"concurrency": 1, "tokens_per_req": 400.0, "speculative": spec}
        return {"name": name, "levels": [level], "ttft_p50_ms": 100.0, "single_stream_tok_s": 40.0,
                "e2e_p50_s": e2e}

    doc = {"config": {"workload": "code-edit", "reps": 3}, "baseline": "peer",
           "targets": [row("peer", 10.0, None),
                       row("lokal", 5.0, {"source": "metrics", "drafted": 400, "accepted": 300, "acceptance": 0.75})]}
    console = Console(width=200, record=True)
    console.print(workload_table(doc))
    text = console.export_text()
    lokal = next(ln for ln in text.splitlines() if "lokal" in ln and "code-edit" not in ln)
    assert "2.00×" in lokal and "300/400 (75%)" in lokal and "5.00" in lokal
    assert workload_table({"config": {"workload": None}}) is None
