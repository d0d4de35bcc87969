"""The official `openai` Python client against the proxy's OpenAI-compatible API."""

import httpx
import openai
import pytest


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=f"{fleet.api}/v1", api_key="unused")


def test_chat(client):
    r = client.chat.completions.create(
        model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}], max_tokens=7
    )
    assert r.choices[0].message.content
    assert r.usage.completion_tokens == 7


def test_chat_stream(client):
    stream = client.chat.completions.create(
        model="llama3.2:3b", messages=[{"role": "user", "content": "hi"}], max_tokens=7, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text


def test_embeddings(client):
    r = client.embeddings.create(model="nomic-embed-text", input="hello")
    assert len(r.data[0].embedding) > 0


def test_models(client):
    ids = {m.id for m in client.models.list()}
    assert "llama3.2:3b" in ids


def test_unknown_model_is_openai_shaped(client):
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="nope", messages=[{"role": "user", "content": "x"}])


def test_every_relayed_response_names_its_node(fleet):
    r = httpx.post(f"{fleet.api}/api/generate", json={"model": "llama3.2:3b", "prompt": "x", "stream": False,
                                                      "options": {"num_predict": 2}})
    assert r.status_code == 200
    assert r.headers["x-wes-node"] in {"gpu", "cpu"}
