"""Access control through the official clients: client API keys (no key, a wrong key, a
forbidden model, each limit), the admin token on the admin listener and on the API's management
calls, and the proxy refusing to start with an open admin listener off loopback."""

import hashlib
import subprocess
import tempfile
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from conftest import BIN, free_port, start_fleet

ADMIN_TOKEN = "adm-secret-1"
KEY_A = "sk-team-a-1"
KEY_HASHED = "sk-hashed-2"
KEY_FEW = "sk-few-3"
KEY_TOKENS = "sk-tokens-4"
WRONG = "sk-wrong-9"

ACCESS = f"""
[admin]
token = "{ADMIN_TOKEN}"

[[keys]]
id = "team-a"
key = "{KEY_A}"
models = ["llama3.2:3b", "nomic-embed-text"]

[[keys]]
id = "hashed"
key_sha256 = "{hashlib.sha256(KEY_HASHED.encode()).hexdigest()}"

[[keys]]
id = "few-requests"
key = "{KEY_FEW}"
requests_per_minute = 2

[[keys]]
id = "few-tokens"
key = "{KEY_TOKENS}"
tokens_per_minute = 10
"""

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture(scope="module")
def guarded():
    f = start_fleet(Path(tempfile.mkdtemp(prefix="wes-access-")), ACCESS)
    try:
        yield f
    finally:
        f.close()


def oai(fleet, key, **kw):
    return openai.OpenAI(base_url=f"{fleet.api}/v1", api_key=key, max_retries=0, **kw)


def olm(fleet, key=None):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return ollama.Client(host=fleet.api, headers=headers)


def chat(client, model="llama3.2:3b"):
    return client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )


def test_no_key_is_401_in_each_protocols_shape(guarded):
    r = httpx.post(f"{guarded.api}/v1/chat/completions",
                   json={"model": "llama3.2:3b", "messages": []})
    assert r.status_code == 401
    assert r.headers["www-authenticate"] == "Bearer"
    assert r.json()["error"]["code"] == "invalid_api_key"
    with pytest.raises(ollama.ResponseError) as e:
        olm(guarded).generate(model="llama3.2:3b", prompt="x")
    assert e.value.status_code == 401 and "API key" in e.value.error
    # Listings need a key too; only the banner stays open, for health checks.
    assert httpx.get(f"{guarded.api}/api/tags").status_code == 401
    assert httpx.get(f"{guarded.api}/").status_code == 200


def test_a_wrong_key_is_refused(guarded):
    with pytest.raises(openai.AuthenticationError):
        chat(oai(guarded, WRONG))
    with pytest.raises(ollama.ResponseError) as e:
        olm(guarded, WRONG).chat(model="llama3.2:3b", messages=[{"role": "user", "content": "x"}])
    assert e.value.status_code == 401 and e.value.error == "invalid API key"


def test_a_known_key_works_as_itself_or_by_its_digest(guarded):
    r = chat(oai(guarded, KEY_A))
    assert r.choices[0].message.content
    g = olm(guarded, KEY_HASHED).generate(model="smollm2:135m", prompt="x",
                                          options={"num_predict": 3})
    assert g.done and g.eval_count == 3


def test_a_model_outside_the_allow_list_is_403_and_not_listed(guarded):
    with pytest.raises(openai.PermissionDeniedError) as e:
        chat(oai(guarded, KEY_A), model="smollm2:135m")
    assert "may not use model" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        olm(guarded, KEY_A).generate(model="smollm2:135m", prompt="x")
    assert e.value.status_code == 403
    listed = {m.id for m in oai(guarded, KEY_A).models.list()}
    assert listed == {"llama3.2:3b", "nomic-embed-text"}
    tags = {m.model for m in olm(guarded, KEY_A).list().models}
    assert tags == {"llama3.2:3b", "nomic-embed-text"}
    everything = {m.model for m in olm(guarded, KEY_HASHED).list().models}
    assert "smollm2:135m" in everything


def test_requests_per_minute_answers_429_with_retry_after(guarded):
    client = oai(guarded, KEY_FEW)
    chat(client)
    chat(client)
    with pytest.raises(openai.RateLimitError) as e:
        chat(client)
    retry_after = int(e.value.response.headers["retry-after"])
    assert 1 <= retry_after <= 30  # 2 a minute: one refills in 30 s
    assert "requests_per_minute" in str(e.value)
    with pytest.raises(ollama.ResponseError) as e:
        olm(guarded, KEY_FEW).generate(model="llama3.2:3b", prompt="x")
    assert e.value.status_code == 429


def test_tokens_per_minute_counts_what_the_node_answered(guarded):
    client = olm(guarded, KEY_TOKENS)
    # Admitted with budget left; its 30 tokens overdraw the 10 a minute.
    r = client.generate(model="llama3.2:3b", prompt="x", options={"num_predict": 30})
    assert r.eval_count == 30
    r = httpx.post(f"{guarded.api}/api/generate", headers={"Authorization": f"Bearer {KEY_TOKENS}"},
                   json={"model": "llama3.2:3b", "prompt": "x", "stream": False})
    assert r.status_code == 429
    assert "tokens_per_minute" in r.json()["error"]
    # 20 over at 10 a minute: two minutes.
    assert 100 <= int(r.headers["retry-after"]) <= 121
    with pytest.raises(ollama.ResponseError) as e:
        client.generate(model="llama3.2:3b", prompt="x")
    assert e.value.status_code == 429 and "tokens_per_minute" in e.value.error
    with pytest.raises(openai.RateLimitError) as e:
        chat(oai(guarded, KEY_TOKENS))
    assert int(e.value.response.headers["retry-after"]) >= 100


def test_admin_posts_need_the_token(guarded):
    for path in ("/reload", "/nodes/gpu/drain"):
        assert httpx.post(f"{guarded.admin}{path}").status_code == 401
        wrong = httpx.post(f"{guarded.admin}{path}", headers={"Authorization": "Bearer nope"})
        assert wrong.status_code == 401
    assert httpx.post(f"{guarded.admin}/reload", headers=ADMIN).json()["status"] == "applied"
    assert httpx.post(f"{guarded.admin}/nodes/gpu/drain", headers=ADMIN).status_code == 200
    assert httpx.post(f"{guarded.admin}/nodes/gpu/undrain", headers=ADMIN).status_code == 200
    # Reads stay open unless protect_reads; /healthz always.
    assert httpx.get(f"{guarded.admin}/ranking").status_code == 200
    assert httpx.get(f"{guarded.admin}/healthz").status_code == 200


def test_management_calls_need_the_admin_token(guarded, fleet):
    with pytest.raises(ollama.ResponseError) as e:
        olm(guarded, KEY_A).pull("llama3.2:3b")
    assert e.value.status_code == 401 and "admin token" in e.value.error
    # With it, the call goes to the nodes (test_manage.py tests what it does there).
    assert olm(guarded, ADMIN_TOKEN).pull("llama3.2:3b").status == "success"
    # A proxy with no admin token refuses them and names the setting.
    with pytest.raises(ollama.ResponseError) as e:
        olm(fleet).delete("llama3.2:3b")
    assert e.value.status_code == 403 and "admin.token" in e.value.error


def test_reload_applies_keys_and_protect_reads(guarded):
    original = guarded.config.read_text()
    try:
        guarded.config.write_text(
            original.replace(f'token = "{ADMIN_TOKEN}"',
                             f'token = "{ADMIN_TOKEN}"\nprotect_reads = true')
            + '\n[[keys]]\nid = "late"\nkey = "sk-late-5"\n'
        )
        assert httpx.post(f"{guarded.admin}/reload", headers=ADMIN).json()["changed"] is True
        assert httpx.get(f"{guarded.admin}/ranking").status_code == 401
        assert httpx.get(f"{guarded.admin}/metrics", headers=ADMIN).status_code == 200
        assert httpx.get(f"{guarded.admin}/healthz").status_code == 200
        assert chat(oai(guarded, "sk-late-5")).choices
    finally:
        guarded.config.write_text(original)
        assert httpx.post(f"{guarded.admin}/reload", headers=ADMIN).json()["changed"] is True
    with pytest.raises(openai.AuthenticationError):
        chat(oai(guarded, "sk-late-5"))


def test_secrets_never_reach_the_log(guarded):
    log = guarded.proxy_log.read_text()
    assert "refused" in log  # the refusals above were logged...
    for secret in (KEY_A, KEY_HASHED, KEY_FEW, KEY_TOKENS, WRONG, ADMIN_TOKEN):
        assert secret not in log  # ...without any secret


def test_an_open_admin_listener_off_loopback_does_not_start(tmp_path):
    config = tmp_path / "proxy.toml"
    config.write_text(
        f'[listen]\napi = "127.0.0.1:{free_port()}"\ntelemetry = "127.0.0.1:0"\n'
        'admin = "0.0.0.0:0"\n'
        '[[nodes]]\nid = "n"\nurl = "http://127.0.0.1:9"\ntoken = "t"\n'
    )
    run = subprocess.run([str(BIN / "wes-proxy"), "--config", str(config)],
                         capture_output=True, text=True, timeout=20)
    assert run.returncode != 0
    assert "line 4" in run.stderr and "admin.token" in run.stderr, run.stderr
    check = subprocess.run([str(BIN / "wes-proxy"), "check-config", str(config)],
                           capture_output=True, text=True, timeout=20)
    assert check.returncode == 1 and "admin.token" in check.stderr
