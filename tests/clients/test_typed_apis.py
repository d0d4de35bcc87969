"""The routes Ollama serves beyond chat and completions: `GET /v1/models/{id}` and
`POST /v1/responses` with the official `openai` client, Ollama's Anthropic-style
`POST /v1/messages` with a plain HTTP client. Each is routed by model and metered: the
proxy's output-token counter grows by what the client received."""

import json
import re

import httpx
import openai
import pytest

MODEL = "llama3.2:3b"


@pytest.fixture(scope="module")
def client(fleet):
    return openai.OpenAI(base_url=f"{fleet.api}/v1", api_key="unused")


def output_tokens(fleet):
    """The proxy's `wes_node_output_tokens_total` for MODEL, over the nodes."""
    text = httpx.get(f"{fleet.admin}/metrics").text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("wes_node_output_tokens_total{") and f'model="{MODEL}"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def test_one_model_by_id(client):
    m = client.models.retrieve(MODEL)
    assert m.id == MODEL
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("no-such-model:1b")
    assert e.value.body["code"] == "model_not_found"


def test_responses_routed_and_metered(client, fleet):
    before = output_tokens(fleet)
    r = client.responses.create(model=MODEL, input="Say hi", max_output_tokens=9)
    assert r.output_text and r.usage.output_tokens == 9
    stream = client.responses.create(model=MODEL, input="Say hi", max_output_tokens=6, stream=True)
    kinds, deltas, completed = [], [], None
    for event in stream:
        kinds.append(event.type)
        if event.type == "response.output_text.delta":
            deltas.append(event.delta)
        if event.type == "response.completed":
            completed = event.response
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed", kinds
    assert len(deltas) == 6 and completed.usage.output_tokens == 6
    # 9 claimed by the whole answer, 6 counted on the stream.
    assert output_tokens(fleet) - before == 15
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model:1b", input="hi")


def sse_events(body: str):
    events = []
    for block in body.strip().split("\n\n"):
        name = re.search(r"^event: (.*)$", block, re.M)
        data = re.search(r"^data: (.*)$", block, re.M)
        events.append((name.group(1) if name else None, json.loads(data.group(1))))
    return events


def test_anthropic_messages_routed_and_metered(fleet):
    url = f"{fleet.api}/v1/messages"
    headers = {"anthropic-version": "2023-06-01", "x-api-key": "unused"}
    before = output_tokens(fleet)
    body = {"model": MODEL, "max_tokens": 5, "messages": [{"role": "user", "content": "hi"}]}
    r = httpx.post(url, json=body, headers=headers, timeout=30)
    assert r.status_code == 200, r.text
    m = r.json()
    assert m["type"] == "message" and m["content"][0]["text"], m
    assert m["usage"]["output_tokens"] == 5 and m["stop_reason"] == "max_tokens"
    assert r.headers["x-wes-node"] in fleet.nodes
    r = httpx.post(url, json={**body, "max_tokens": 7, "stream": True}, headers=headers, timeout=30)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
    events = sse_events(r.text)
    names = [n for n, _ in events]
    assert names[0] == "message_start" and names[-1] == "message_stop", names
    assert names.count("content_block_delta") == 7
    assert all(n == d["type"] for n, d in events)
    assert output_tokens(fleet) - before == 12


def test_anthropic_errors_keep_that_apis_shape(fleet):
    url = f"{fleet.api}/v1/messages"
    r = httpx.post(url, json={"model": "no-such-model:1b", "max_tokens": 5,
                              "messages": [{"role": "user", "content": "hi"}]})
    assert r.status_code == 404
    assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error", r.text
    r = httpx.post(url, content=b"{not json")
    assert r.status_code == 400
    assert r.json()["error"]["type"] == "invalid_request_error", r.text
