import json

import pytest

from data.contract import (ContractError, DiscoveryResult, Question, case_from_dict, load_cases,
                           parse_assistant, planner_messages, planner_system_prompt,
                           render_assistant, spec_violations, PROMPT_HASH, sha256_text)


def make(n=7, title="Lisbon Weekend for Two"):
    return DiscoveryResult(title, "Plan a weekend in Lisbon for two people.", tuple(
        Question(f"Which neighborhood in Lisbon appeals to you number {i}?", f"why {i}", i == 3)
        for i in range(n)))


def test_round_trips_both_key_styles_and_the_case_wrapper():
    r = make()
    camel, snake = r.to_dict("camel"), r.to_dict("snake")
    assert set(camel) == {"taskTitle", "taskDescription", "questions"}
    assert camel["questions"][3]["requiresExternalAction"] is True
    assert "requires_external_action" in snake["questions"][0]
    assert DiscoveryResult.from_dict(camel) == r
    assert DiscoveryResult.from_dict(snake) == r
    assert DiscoveryResult.from_json(r.to_json()) == r
    wrapped = {"id": "x-1", "input": "Plan a weekend in Lisbon", "gold": camel}
    case = case_from_dict(wrapped)
    assert (case.id, case.input, case.gold) == ("x-1", "Plan a weekend in Lisbon", r)
    assert case_from_dict(case.to_dict("snake")).gold == r
    bare = dict(camel, input="Plan a weekend in Lisbon")
    assert case_from_dict(bare).gold == r


def test_load_cases_names_file_and_line(tmp_path):
    good = {"id": "a", "input": "x", "gold": make().to_dict()}
    bad = {"id": "b", "input": "y", "gold": dict(make().to_dict(), questions="nope")}
    p = tmp_path / "cases.jsonl"
    p.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(ContractError, match=r"cases\.jsonl:2: gold: key 'questions' must be a list"):
        load_cases(p)
    p.write_text(json.dumps(good) + "\n{not json\n")
    with pytest.raises(ContractError, match=r"cases\.jsonl:2: invalid JSON"):
        load_cases(p)


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.pop("taskTitle"), "missing key 'taskTitle' / 'task_title'"),
    (lambda d: d.update(taskDescription=3), "taskDescription: expected a string, got int"),
    (lambda d: d["questions"].pop(), "'questions' has 6 items, expected exactly 7"),
    (lambda d: d["questions"][2].pop("title"), r"questions\[2\]: missing key 'title'"),
    (lambda d: d["questions"][4].update(requiresExternalAction="yes"),
     r"questions\[4\]\.requiresExternalAction: expected true/false"),
])
def test_rejects_bad_records_with_specific_messages(mutate, message):
    d = make().to_dict()
    mutate(d)
    with pytest.raises(ContractError, match=message):
        DiscoveryResult.from_dict(d, where="rec")


def test_assistant_text_strict_round_trip():
    r = make()
    text = render_assistant(r)
    assert parse_assistant(text, strict=True).result == r
    assert text.count("\n") == 8  # one question per line: the model sees the count
    with pytest.raises(ContractError, match="has 6 items, expected exactly 7"):
        parse_assistant(render_assistant(make(6)), strict=True)
    with pytest.raises(ContractError, match="invalid JSON"):
        parse_assistant("Sure! " + text, strict=True)


def test_lenient_parse_tolerates_fences_and_prose_but_reports_wrong_counts():
    r = make()
    fenced = "Here you go:\n```json\n" + render_assistant(r) + "\n```\nHope this helps!"
    p = parse_assistant(fenced)
    assert p.ok and p.result == r and "answer wrapped in a code fence" in p.notes
    trailing = render_assistant(r) + "\nLet me know {if} you need more."
    assert parse_assistant(trailing).result == r
    for n in (6, 8):
        p = parse_assistant(render_assistant(make(n)))
        assert not p.ok and p.n_questions == n
        assert len(p.result.questions) == n  # reported, never padded or trimmed
        assert p.problems == [f"output has {n} questions, expected 7"]
    cut = render_assistant(r)[:150]
    p = parse_assistant(cut)
    assert p.result is None and "cut off" in p.problems[0]
    assert parse_assistant("I cannot help with that.").problems == ["no JSON object found in the output"]


def test_spec_gate_matches_the_reference():
    assert spec_violations(make()) == []
    assert spec_violations(make(8)) == ["has 8 questions, expected exactly 7"]
    for generic in ("Clarifying Questions", "  discovery ", "QUESTIONS", "Understanding your task"):
        assert any("generic label" in v for v in spec_violations(make(title=generic)))
    assert spec_violations(make(title="  ")) == ["task title is empty"]
    emoji = DiscoveryResult("Trip \U0001F30D", "d", make().questions)
    assert spec_violations(emoji) == ["task title contains an emoji"]
    qs = list(make().questions)
    qs[5] = Question("", "why", False)
    qs[6] = Question("Which dates work? \u2708\ufe0f", "why", False)
    v = spec_violations(DiscoveryResult("Trip", "d", tuple(qs)))
    assert "question 6 has an empty title" in v and "question 7 title contains an emoji" in v
    # Ordinary typography is not an emoji.
    assert spec_violations(DiscoveryResult("Trip \u2014 Lisbon", "Costs \u20ac / \u00a3", make().questions)) == []


def test_prompt_is_shared_and_hashed():
    msgs = planner_messages("  Plan a   trip to Paris ")
    assert msgs[0] == {"role": "system", "content": planner_system_prompt()}
    assert msgs[1]["content"] == "Task: Plan a trip to Paris"
    assert "exactly 7 questions" in planner_system_prompt()
    assert "exactly 8 questions" in planner_system_prompt(8)
    assert len(PROMPT_HASH) == 64 and PROMPT_HASH != sha256_text(planner_system_prompt())
