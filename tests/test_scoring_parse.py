"""The structured critique parser: JSON from a JSON-mode endpoint, JSON embedded in prose, code fences, trailing
commas, Python literals; anything else is kept as a prose critique with the fallback noted, and nothing raises."""

from __future__ import annotations

import json

import pytest

from redraft.graph.convergence import NO_FURTHER_CHANGES, best_version, critic_scores_for, report
from redraft.nodes.scoring import CRITIQUE_SCHEMA, parse, render, score_entry

ISSUE = {"where": "paragraph 2", "problem": "The date is wrong.", "fix": "Say 1969."}


def test_a_bare_json_critique_is_read_and_rendered_as_text():
    c = parse(json.dumps({"score": 7, "issues": [ISSUE], "done": False}))
    assert c.structured and c.score == 7.0 and not c.done and c.note is None
    assert c.issues == (ISSUE,)
    assert c.text == "Score: 7/10\n1. paragraph 2: The date is wrong. Fix: Say 1969."
    assert not c.satisfied


@pytest.mark.parametrize(
    "raw",
    [
        'Here is my review.\n```json\n{"score": 6, "issues": [{"where": "paragraph 2", "problem": "The date is '
        'wrong.", "fix": "Say 1969."},], "done": false,}\n```\nHope it helps.',
        'Review: {"score": 6, "issues": [{"where": "paragraph 2", "problem": "The date is wrong.", "fix": "Say '
        '1969."}], "done": false} -- end.',
        "{'score': 6, 'issues': [{'where': 'paragraph 2', 'problem': 'The date is wrong.', 'fix': 'Say 1969.'}], "
        "'done': False}",
        '{"Score": "6/10", "Issues": [{"location": "paragraph 2", "issue": "The date is wrong.", "suggestion": '
        '"Say 1969."}], "Done": "false"}',
        '{"critique": {"score": 6, "issues": [{"where": "paragraph 2", "problem": "The date is wrong.", "fix": '
        '"Say 1969."}], "done": false}}',
        "\u201cignored\u201d {\u201cscore\u201d: 6, \u201cissues\u201d: [{\u201cwhere\u201d: \u201cparagraph 2\u201d, "
        "\u201cproblem\u201d: \u201cThe date is wrong.\u201d, \u201cfix\u201d: \u201cSay 1969.\u201d}], "
        "\u201cdone\u201d: false}",
    ],
    ids=["fenced-trailing-commas", "in-prose", "python-literals", "aliases-strings", "wrapped", "smart-quotes"],
)
def test_tolerant_parsing(raw):
    c = parse(raw)
    assert c.structured, c.note
    assert (c.score, c.issues, c.done) == (6.0, (ISSUE,), False)


@pytest.mark.parametrize(
    ("raw", "note"),
    [
        ("The second paragraph gets the date wrong; say 1969.", "no JSON object in the reply"),
        ('Round 1: {"score": 4, "issues": [{"where": "Round 1", "prob', "no critique object could be parsed"),
        ('{"verdict": "fine"}', "no critique object could be parsed"),
        ("{" * 5000 + "}" * 5000, "no critique object could be parsed"),
        ("[" * 100_000, "no JSON object in the reply"),
        ("{'score': " + "[" * 50_000 + "}", "no critique object could be parsed"),
    ],
    ids=["prose", "cut-short", "no-critique-keys", "deep-braces", "deep-brackets", "deep-literal"],
)
def test_a_reply_without_a_critique_is_kept_as_prose_and_noted(raw, note):
    c = parse(raw)
    assert not c.structured and c.score is None
    assert c.text == raw  # the raw text is the critique
    assert c.note == note
    entry = score_entry(0, 1, c, "none")
    assert entry["score"] is None and entry["fallback"] == note and entry["iteration"] == 0


def test_a_prose_fallback_keeps_todays_stop_rule():
    assert parse("NO FURTHER CHANGES").satisfied
    assert not parse("No further changes, except the date.").satisfied


def test_done_needs_no_issues():
    assert parse('{"score": 10, "issues": [], "done": true}').satisfied
    assert not parse(json.dumps({"score": 9, "issues": [ISSUE], "done": True})).satisfied
    assert not parse('{"score": 10, "issues": [], "done": false}').satisfied
    assert not parse('{"score": 10, "issues": []}').satisfied  # done missing: not done
    assert render(parse('{"score": 10, "issues": [], "done": true}')).endswith(NO_FURTHER_CHANGES)


@pytest.mark.parametrize("score", ["11", -1, "high", True, None, float("nan")])
def test_a_bad_score_is_dropped_and_noted(score):
    c = parse(json.dumps({"score": score, "issues": ["Too long."], "done": False}))
    assert c.structured and c.score is None and c.note
    assert c.issues == ({"where": "", "problem": "Too long.", "fix": ""},)
    assert c.text.startswith("Score: not given\n1. Too long.")


def test_the_schema_sent_as_response_format_is_strict_json_schema():
    assert CRITIQUE_SCHEMA["required"] == ["score", "issues", "done"]
    assert CRITIQUE_SCHEMA["additionalProperties"] is False
    assert CRITIQUE_SCHEMA["properties"]["issues"]["items"]["required"] == ["where", "problem", "fix"]


def test_best_version_is_the_top_scored_else_todays_rule():
    # scored versions: the highest wins, later on ties; the unscored last revision is not preferred
    assert best_version([0.5, 0.9, 0.7], 4, "max_loops", {0: 3.0, 1: 8.0, 2: 5.0}) == 1
    assert best_version([0.5, 0.9], 3, "min_score", {0: 3.0, 1: 8.0, 2: 8.0}) == 2
    assert best_version([0.5, 0.9], 3, "max_loops", {0: None, 1: None}) == 2  # no score given: today's rule
    assert best_version([0.5, 0.9, 0.7], 4, "max_loops") == 2
    assert best_version([0.5, 0.9, 0.7], 4, "converged") == 3


def test_scores_log_entries_keep_similarities_apart():
    state = {
        "scores": [
            {"slot": 0, "iteration": 0, "score": 4.0, "critique": 1},
            {"slot": 0, "iteration": 1, "similarity": 0.8},
            {"slot": 0, "iteration": 1, "score": 9.0, "critique": 2},
            {"slot": 1, "iteration": 0, "score": 2.0, "critique": 1},
        ]
    }
    from redraft.graph.state import scores_for

    assert scores_for(state, 0) == [0.8]
    assert critic_scores_for(state, 0) == {0: 4.0, 1: 9.0}
    view = report([0.8], 2, 0.9, critic_scores_for(state, 0), 8.0)
    assert view["by_version"] == [
        {"version": 0, "similarity_to_previous": None, "score": 4.0},
        {"version": 1, "similarity_to_previous": 0.8, "score": 9.0},
    ]
    assert (view["latest_score"], view["best_score"], view["min_score"]) == (9.0, 9.0, 8.0)
    assert report([0.8], 2, 0.9)["scores"] == []  # prose critiques / old checkpoints: no scores
