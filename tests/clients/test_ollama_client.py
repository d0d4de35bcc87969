"""The official `ollama` Python client against the proxy, as an application would use it."""

import ollama
import pytest


@pytest.fixture(scope="module")
def client(fleet):
    return ollama.Client(host=fleet.api)


def test_generate(client):
    r = client.generate(model="llama3.2:3b", prompt="Why is the sky blue?", options={"num_predict": 8})
    assert r.done
    assert r.response
    assert r.eval_count == 8


def test_generate_stream(client):
    chunks = list(client.generate(model="llama3.2:3b", prompt="hi", stream=True, options={"num_predict": 6}))
    assert chunks[-1].done
    assert sum(1 for c in chunks if c.response) == 6


def test_chat_and_stream(client):
    messages = [{"role": "user", "content": "Hello"}]
    r = client.chat(model="llama3.2:3b", messages=messages, options={"num_predict": 5})
    assert r.message.role == "assistant" and r.message.content
    parts = list(client.chat(model="llama3.2:3b", messages=messages, stream=True, options={"num_predict": 5}))
    assert parts[-1].done
    assert "".join(p.message.content for p in parts)


def test_embed(client):
    r = client.embed(model="nomic-embed-text", input=["one", "two"])
    assert len(r.embeddings) == 2
    assert len(r.embeddings[0]) > 0


def test_list_ps_show(client):
    names = {m.model for m in client.list().models}
    assert {"llama3.2:3b", "smollm2:135m", "nomic-embed-text"} <= names
    client.ps()
    shown = client.show("llama3.2:3b")
    assert shown.details is not None


def test_unknown_model_raises_ollama_error(client):
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="no-such-model", prompt="x")
    assert e.value.status_code == 404
    assert "no-such-model" in e.value.error
