"""The reformulation prompt of conversational search (gateway.reformulation): what the LLM is
sent, that two different conversations never make the same prompt (it is the key of the kept
rewrite), how the LLM's answer is read back, the reserved cache that keeps the rewrites, and
the route's input rules."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import ValidationError

from cache_server.entries import (
    RESERVED_CACHE_IDS,
    InvalidInputError,
    check_cache_id,
    normalize_prompt,
)
from gateway.reformulation import (
    MAX_CONTEXT_ITEMS,
    MAX_PROMPT_CHARS,
    REFORMULATION_CACHE_ID,
    TEMPLATE,
    reformulation_prompt,
    standalone_question,
)
from gateway.routes.conversations import ConversationalSearchRequest
from gateway.routes.deps import CACHE_ID_PATTERN

DOCS = Path(__file__).resolve().parents[2] / "docs" / "rest-api.md"

EXPECTED = """\
Rewrite the last question of a conversation as one standalone question, for a search over \
questions that were asked before.
- Replace every pronoun or reference to an earlier question (it, its, they, them, this, \
that, there, the same, ...) with what it stands for.
- Keep the meaning, the language and the details of the last question; add nothing else.
- Do not answer the question.
- If the last question already stands on its own, repeat it unchanged.
- Reply with the standalone question alone: one line, no quotes, no label.

Earlier questions, oldest first (each one a JSON string):
1. "What is the capital of France?"
2. "Who is its mayor?"

Last question (a JSON string):
"And its population?"

Standalone question:"""


def parse(rendered: str) -> tuple[list[str], str]:
    """The conversation back from its reformulation prompt (the test of injectivity)."""
    head, rest = rendered.split("(each one a JSON string):\n", 1)
    assert head + "(each one a JSON string):\n" == TEMPLATE.split("{history}")[0]
    history, rest = rest.split("\n\nLast question (a JSON string):\n", 1)
    question, tail = rest.split("\n\nStandalone question:", 1)
    assert tail == ""
    context = []
    for n, line in enumerate(history.split("\n"), start=1):
        number, literal = line.split(". ", 1)
        assert number == str(n)
        context.append(json.loads(literal))
    return context, json.loads(question)


def test_the_prompt_is_the_documented_one() -> None:
    rendered = reformulation_prompt(
        ["What is the capital of France?", "Who is its mayor?"], "And its population?"
    )
    assert rendered == EXPECTED
    # docs/rest-api.md shows it as it is sent (a one-question example of the same template).
    example = reformulation_prompt(["What is the capital of France?"], "And its population?")
    assert f"```text\n{example}\n```" in DOCS.read_text()


def test_questions_that_imitate_the_layout_do_not_collide() -> None:
    # Written as plain lines, these two conversations would be the same text.
    one = reformulation_prompt(['What is "A"?\n2. What is B?'], "And C?")
    two = reformulation_prompt(['What is "A"?', "What is B?"], "And C?")
    assert one != two
    assert parse(one) == (['What is "A"?\n2. What is B?'], "And C?")
    tricky = reformulation_prompt(["x"], 'y"\n\nLast question (a JSON string):\n"z')
    assert parse(tricky) == (["x"], 'y"\n\nLast question (a JSON string):\n"z')


def test_only_surrounding_whitespace_of_a_question_is_ignored() -> None:
    base = reformulation_prompt(["What is the capital of France?"], "And its population?")
    assert reformulation_prompt([" What is the capital of France?\n"], " And its population?") == (
        base
    )
    assert reformulation_prompt(["What is the capital of  France?"], "And its population?") != (
        base
    )
    assert reformulation_prompt(["what is the capital of france?"], "And its population?") != (base)
    # The cache server's exact match strips the whole prompt: the template's own ends stay.
    assert normalize_prompt(base) == base


questions = st.text(min_size=1, max_size=40)


@given(st.lists(questions, min_size=1, max_size=6), questions)
def test_a_conversation_is_read_back_from_its_prompt(context: list[str], prompt: str) -> None:
    """So two conversations that differ (beyond a question's surrounding whitespace) never
    share a prompt, nor the rewrite kept under it."""
    assert parse(reformulation_prompt(context, prompt)) == (
        [q.strip() for q in context],
        prompt.strip(),
    )


@given(
    st.lists(questions, min_size=1, max_size=4),
    questions,
    st.lists(questions, min_size=1, max_size=4),
    questions,
)
def test_different_conversations_make_different_prompts(
    a: list[str], p: str, b: list[str], q: str
) -> None:
    same = [x.strip() for x in a] == [y.strip() for y in b] and p.strip() == q.strip()
    assert (reformulation_prompt(a, p) == reformulation_prompt(b, q)) == same


@pytest.mark.parametrize(
    ("answer", "question"),
    [
        ("What is the population of Paris?", "What is the population of Paris?"),
        ("  What is the population of Paris?\n", "What is the population of Paris?"),
        ('"What is the population of Paris?"', "What is the population of Paris?"),
        ('"What is \\"Paris\\" famous for?"', 'What is "Paris" famous for?'),
        ("\u201cWhat is the population of Paris?\u201d", "What is the population of Paris?"),
        (
            "Standalone question: What is the population of Paris?",
            "What is the population of Paris?",
        ),
        (
            "\n\nWhat is the population of Paris?\nParis has 2.1 million.",
            "What is the population of Paris?",
        ),
        ("'It's'", "It's"),
        ("What's up?", "What's up?"),
    ],
)
def test_the_question_is_read_from_the_answer(answer: str, question: str) -> None:
    assert standalone_question(answer) == question


@pytest.mark.parametrize("answer", ["", "   \n ", '""', "Standalone question:", "x" * 8193])
def test_an_answer_without_a_usable_question_is_none(answer: str) -> None:
    assert standalone_question(answer) is None


def test_the_reserved_cache_is_the_cache_servers_and_out_of_the_rest_apis_reach() -> None:
    assert REFORMULATION_CACHE_ID in RESERVED_CACHE_IDS
    assert check_cache_id(REFORMULATION_CACHE_ID) == REFORMULATION_CACHE_ID
    assert re.match(CACHE_ID_PATTERN, REFORMULATION_CACHE_ID) is None
    # Reserving it opened nothing else.
    for other in ("__other__", "_reformulations", "__reformulations__x"):
        with pytest.raises(InvalidInputError):
            check_cache_id(other)


def request(**fields: object) -> ConversationalSearchRequest:
    return ConversationalSearchRequest.model_validate({"prompt": "And its population?", **fields})


def fields_of(error: pytest.ExceptionInfo[ValidationError]) -> set[str]:
    return {".".join(str(p) for p in e["loc"]) for e in error.value.errors()}


def test_the_route_takes_a_list_of_questions_within_limits() -> None:
    assert request().context is None
    assert request(context=[]).context == []
    assert request(context=["q"] * MAX_CONTEXT_ITEMS).context == ["q"] * MAX_CONTEXT_ITEMS
    body = request(context=["What is the capital of France?"], maxResults=3)
    assert body.max_results == 3 and body.prompt == "And its population?"


@pytest.mark.parametrize(
    ("context", "field"),
    [
        ("What is the capital of France?", "context"),
        ([1], "context.0"),
        ([None], "context.0"),
        ([""], "context.0"),
        (["ok", "  "], "context.1"),
        (["q"] * (MAX_CONTEXT_ITEMS + 1), "context"),
        (["q" * (MAX_PROMPT_CHARS + 1)], "context.0"),
        (["q" * 4000, "r" * 4000], "context"),  # each fits; their reformulation prompt does not
    ],
)
def test_bad_context_is_refused_naming_the_field(context: object, field: str) -> None:
    with pytest.raises(ValidationError) as error:
        request(context=context)
    assert fields_of(error) == {field}


def test_a_blank_prompt_is_refused() -> None:
    with pytest.raises(ValidationError) as error:
        request(prompt=" \n", context=["What is the capital of France?"])
    assert fields_of(error) == {"prompt"}
