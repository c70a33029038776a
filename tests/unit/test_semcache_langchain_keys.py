"""What SemcacheCache looks up and what scopes it, from the prompts langchain_core really
passes (its own `dumps` of the messages), and the generations' round trip through an entry."""

from __future__ import annotations

import json

import pytest
from langchain_core.language_models import FakeListChatModel
from langchain_core.load import dumps
from langchain_core.messages import (
    AIMessage,
    BaseMessage,
    ChatMessage,
    HumanMessage,
    SystemMessage,
    ToolMessage,
)
from langchain_core.outputs import ChatGeneration, Generation

from semcache_client.langchain import SemcacheCache
from semcache_client.langchain.generations import decode, encode
from semcache_client.langchain.prompts import (
    LLM_ATTRIBUTE,
    SCOPE_ATTRIBUTE,
    CacheKey,
    cache_key,
)

LLM = FakeListChatModel(responses=["x"])._get_llm_string()


def key(*messages: BaseMessage, llm_string: str = LLM) -> CacheKey | None:
    return cache_key(dumps(list(messages)), llm_string)


def test_the_last_human_text_is_looked_up_and_the_rest_of_the_conversation_scopes_it() -> None:
    asked = key(SystemMessage("Be brief."), HumanMessage("What is the capital of France?"))
    paraphrase = key(SystemMessage("Be brief."), HumanMessage("Which city is France's capital?"))
    assert asked is not None and paraphrase is not None
    assert asked.text == "What is the capital of France?"
    assert asked.attributes == paraphrase.attributes  # same model, same conversation
    other_system = key(SystemMessage("Answer in French."), HumanMessage("What is the capital?"))
    assert other_system is not None
    assert other_system.attributes[SCOPE_ATTRIBUTE] != asked.attributes[SCOPE_ATTRIBUTE]
    assert other_system.attributes[LLM_ATTRIBUTE] == asked.attributes[LLM_ATTRIBUTE]


def test_earlier_turns_and_later_messages_are_part_of_the_scope() -> None:
    first = key(HumanMessage("Hi"), AIMessage("Hello!"), HumanMessage("How are you?"))
    other_history = key(HumanMessage("Hey"), AIMessage("Yo"), HumanMessage("How are you?"))
    assert first is not None and other_history is not None
    assert first.text == other_history.text == "How are you?"
    assert first.attributes != other_history.attributes
    with_tool = key(
        HumanMessage("Weather in Paris?"),
        AIMessage("", tool_calls=[{"name": "weather", "args": {"city": "Paris"}, "id": "t1"}]),
        ToolMessage("18 C, sunny", tool_call_id="t1"),
    )
    without_tool = key(HumanMessage("Weather in Paris?"))
    assert with_tool is not None and without_tool is not None
    assert with_tool.text == "Weather in Paris?"
    assert with_tool.attributes != without_tool.attributes


def test_another_model_or_other_parameters_scope_apart() -> None:
    model = FakeListChatModel(responses=["x"])
    other = FakeListChatModel(responses=["y"])
    strings = {
        model._get_llm_string(),
        model._get_llm_string(stop=["."]),
        model._get_llm_string(temperature=0.7),
        other._get_llm_string(),
    }
    keys = {
        key(HumanMessage("hello?"), llm_string=s).attributes[LLM_ATTRIBUTE]  # type: ignore[union-attr]
        for s in strings
    }
    assert len(strings) == len(keys) == 4


def test_text_parts_of_a_multimodal_message_are_looked_up_and_the_image_scopes_them() -> None:
    def ask(url: str, text: str) -> CacheKey | None:
        image = {"type": "image_url", "image_url": {"url": url}}
        return key(HumanMessage(content=[{"type": "text", "text": text}, image]))

    cat, cat_again = ask("cat.png", "What is this?"), ask("cat.png", "What's this?")
    dog = ask("dog.png", "What is this?")
    assert cat is not None and cat_again is not None and dog is not None
    assert cat.text == "What is this?"
    assert cat.attributes == cat_again.attributes != dog.attributes


def test_prompts_that_cannot_be_looked_up_are_not_cached() -> None:
    assert key(SystemMessage("Only a system prompt.")) is None
    assert key(HumanMessage("  ")) is None
    assert key(HumanMessage(content=[{"type": "image_url", "image_url": {"url": "a"}}])) is None
    assert cache_key("", LLM) is None


def test_a_user_chat_message_counts_as_human_and_a_text_prompt_is_its_own_look_up_text() -> None:
    chat = key(ChatMessage(role="user", content="Ping?"))
    assert chat is not None and chat.text == "Ping?"
    plain = cache_key("Tell me a joke.", "llm")
    assert plain is not None and plain.text == "Tell me a joke."
    # A text prompt that happens to be JSON is still text.
    assert cache_key('["not", "messages"]', "llm") == CacheKey(
        '["not", "messages"]', plain.attributes
    )


def test_chat_generations_come_back_whole() -> None:
    message = AIMessage(
        "Paris.",
        response_metadata={"model_name": "m", "finish_reason": "stop"},
        usage_metadata={"input_tokens": 5, "output_tokens": 2, "total_tokens": 7},
        id="run-1",
    )
    stored = encode([ChatGeneration(message=message, generation_info={"finish_reason": "stop"})])
    json.loads(stored)  # plain JSON
    (back,) = decode(stored)
    assert isinstance(back, ChatGeneration)
    assert back.message == message and back.text == "Paris."
    assert back.generation_info == {"finish_reason": "stop"}
    texts = decode(encode([Generation(text="a"), Generation(text="b", generation_info={"n": 1})]))
    assert [(g.text, g.generation_info) for g in texts] == [("a", None), ("b", {"n": 1})]


def test_an_answer_stored_by_another_client_is_served_as_text() -> None:
    assert decode("Paris.") == [Generation(text="Paris.")]
    assert decode('{"some": "json"}') == [Generation(text='{"some": "json"}')]


def test_clear_takes_only_an_llm_string() -> None:
    cache = SemcacheCache("127.0.0.1:1")
    with pytest.raises(TypeError, match="llm_string"):
        cache.clear(model="gpt")
    cache.close()
