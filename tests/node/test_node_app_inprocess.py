"""The node's HTTP app in this process, on a scripted model: its API behaviour without a model
process. The model plays the part of llama.cpp (tests/node/scripted_backend.py); the engine,
the service, the routes and the error envelope are the real ones. The same behaviour on the
real model is tested through a server process in test_api.py and test_bad_input.py."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from edgecloud.node.config import NodeConfig
from edgecloud.node.server import NodeApp
from tests.asgi_client import in_process
from tests.node.scripted_backend import ScriptedModel

SAFETY_S = 20.0  # bounds a hang; never a timing assertion
NAME = "scripted-270m"
REPLY = b"Hello from the script. STOP here."
USER = [{"role": "user", "content": "Hi"}]
USER_PROMPT = b"User: Hi\nAssistant:"  # the plain transcript (the scripted model has no template)


class ScriptedChatModel(ScriptedModel):
    """Answers every prompt with REPLY."""

    def script(self, prompt: Sequence[int]) -> bytes:
        return REPLY


@asynccontextmanager
async def node(tmp_path: Path, hold_load: bool = False,
               **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    """The node app on a scripted model, started (lifespan) and, unless `hold_load`, ready."""
    model = tmp_path / "scripted.gguf"
    model.write_bytes(b"GGUF scripted")
    config = NodeConfig(model=str(model), name=NAME, parallel=2, **settings)
    if hold_load:
        ScriptedModel.opened.clear()
    else:
        ScriptedModel.opened.set()
    app = NodeApp(config, open_model=ScriptedChatModel, prove=None)
    async with in_process(app) as client:
        if not hold_load:
            await until_ready(client)
        yield client
    ScriptedModel.opened.set()


async def until_ready(client: httpx.AsyncClient) -> None:
    async with asyncio.timeout(SAFETY_S):
        while (await client.get("/readyz")).status_code != 200:
            await asyncio.sleep(0.005)


def run(main: Any) -> None:
    asyncio.run(main())


def sse_data(r: httpx.Response) -> list[Any]:
    """The data payloads of a server-sent-event body, JSON decoded ("[DONE]" kept as is)."""
    out: list[Any] = []
    for event in r.text.split("\n\n"):
        for line in event.splitlines():
            if line.startswith("data: "):
                data = line[len("data: "):]
                out.append(data if data == "[DONE]" else orjson.loads(data))
    return out


def error_of(r: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    """The OpenAI error envelope of `r`, checked for its status and code."""
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    if code is not None:
        assert error["code"] == code, error
    assert error["message"]
    return dict(error)


# -- generation --------------------------------------------------------------------------------


def test_chat_completion_answers_with_the_models_reply_and_counts_tokens(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            r = await client.post("/v1/chat/completions", json={"model": NAME, "messages": USER})
            assert r.status_code == 200 and r.headers["content-type"] == "application/json"
            body = r.json()
            assert body["object"] == "chat.completion" and body["model"] == NAME
            choice = body["choices"][0]
            assert choice["message"]["role"] == "assistant"
            assert choice["message"]["content"] == REPLY.decode()
            assert choice["finish_reason"] == "stop"
            # A scripted token is one byte: the counts are the bytes of prompt and reply.
            assert body["usage"]["prompt_tokens"] == len(USER_PROMPT)
            assert body["usage"]["completion_tokens"] == len(REPLY) + 1  # and the end token
            assert body["usage"]["total_tokens"] == len(USER_PROMPT) + len(REPLY) + 1

    run(main)


def test_completion_stops_at_max_tokens_and_at_a_stop_string(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            r = await client.post("/v1/completions",
                                  json={"model": NAME, "prompt": "Say it", "max_tokens": 5})
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            assert (choice["text"], choice["finish_reason"]) == (REPLY[:5].decode(), "length")
            usage = r.json()["usage"]
            assert (usage["prompt_tokens"], usage["completion_tokens"]) == (6, 5)
            r = await client.post("/completions",  # also without /v1
                                  json={"prompt": "Say it", "stop": [" STOP"], "echo": True})
            choice = r.json()["choices"][0]
            assert choice["text"] == "Say it" + REPLY.split(b" STOP")[0].decode()
            assert choice["finish_reason"] == "stop"
            r = await client.post("/v1/completions", json={"prompt": [72, 105], "max_tokens": 2})
            assert r.json()["usage"]["prompt_tokens"] == 2  # token ids are taken as they are

    run(main)


def test_chat_stream_is_server_sent_events_ending_in_done(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            r = await client.post("/v1/chat/completions", json={
                "model": NAME, "messages": USER, "stream": True,
                "stream_options": {"include_usage": True}})
            assert r.status_code == 200
            assert r.headers["content-type"].startswith("text/event-stream")
            events = sse_data(r)
            assert events[-1] == "[DONE]"
            chunks = events[:-1]
            assert all(c["object"] == "chat.completion.chunk" for c in chunks)
            assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
            text = "".join(c["choices"][0]["delta"].get("content") or ""
                           for c in chunks if c["choices"])
            assert text == REPLY.decode()
            finishes = [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]]
            assert finishes[-1] == "stop" and set(finishes[:-1]) == {None}
            usage = chunks[-1]
            assert usage["choices"] == [] and usage["usage"]["prompt_tokens"] == len(USER_PROMPT)

    run(main)


def test_completion_stream_matches_the_whole_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            ask = {"prompt": "Say it", "max_tokens": 9}
            whole = (await client.post("/v1/completions", json=ask)).json()
            r = await client.post("/v1/completions", json={**ask, "stream": True})
            events = sse_data(r)
            assert events[-1] == "[DONE]"
            text = "".join(c["choices"][0]["text"] for c in events[:-1])
            assert text == whole["choices"][0]["text"] == REPLY[:9].decode()
            assert events[-2]["choices"][0]["finish_reason"] == "length"

    run(main)


def test_concurrent_requests_each_get_the_whole_answer(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            asks = [client.post("/v1/chat/completions", json={"messages": USER})
                    for _ in range(6)]  # more than the 2 slots: some queue
            replies = await asyncio.gather(*asks)
            assert [r.json()["choices"][0]["message"]["content"] for r in replies] == [
                REPLY.decode()] * 6

    run(main)


# -- errors ------------------------------------------------------------------------------------


@pytest.mark.parametrize("raw", [b"", b"{not json", b"[1, 2]", b'"text"', b"\xff\xfe"])
def test_a_body_that_is_not_a_json_request_is_400(tmp_path: Path, raw: bytes) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            for path in ("/v1/chat/completions", "/v1/completions"):
                error = error_of(await client.post(path, content=raw), 400)
                assert error["type"] == "invalid_request_error"

    run(main)


def test_request_errors_name_what_was_wrong(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path, ctx=128, max_body_bytes=4096) as client:
            chat = "/v1/chat/completions"
            error = error_of(await client.post(chat, json={"model": "gpt-9", "messages": USER}),
                             404, "model_not_found")
            assert "gpt-9" in error["message"] and NAME in error["message"]
            error = error_of(await client.post(chat, json={"messages": "hi"}), 400)
            assert error["param"] == "messages"
            long = [{"role": "user", "content": "x" * 200}]  # over the 128-token context
            error = error_of(await client.post(chat, json={"messages": long}), 400,
                             "context_length_exceeded")
            assert "128" in error["message"]
            error = error_of(await client.post(chat, json={"messages": USER, "max_tokens": 500}),
                             400, "context_length_exceeded")
            assert error["param"] == "max_tokens"
            error_of(await client.post(chat, json={"messages": USER, "max_tokens": 0}), 400)
            error = error_of(await client.post(chat, json={"messages": USER, "n": 2}), 400)
            assert error["param"] == "n"
            huge = {"messages": [{"role": "user", "content": "y" * 5000}]}
            error_of(await client.post(chat, json=huge), 413)
            image = [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}}]}]
            error = error_of(await client.post(chat, json={"messages": image}), 400)
            assert "text only" in error["message"]
            error_of(await client.get(chat), 405, "method_not_allowed")
            error_of(await client.get("/v1/nowhere"), 404, "not_found")
            error_of(await client.get("/v1/models/gpt-9"), 404)
            # And the node still answers after all of that.
            r = await client.post(chat, json={"messages": USER})
            assert r.json()["choices"][0]["message"]["content"] == REPLY.decode()

    run(main)


def test_an_api_key_is_compared_and_a_missing_one_is_401(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SCRIPTED_NODE_KEY", "s3cret")

    async def main() -> None:
        async with node(tmp_path, api_key_env="SCRIPTED_NODE_KEY") as client:
            ask = {"messages": USER}
            error_of(await client.post("/v1/chat/completions", json=ask), 401)
            error_of(await client.post("/v1/chat/completions", json=ask,
                                       headers={"authorization": "Bearer wrong"}), 401)
            r = await client.post("/v1/chat/completions", json=ask,
                                  headers={"authorization": "Bearer s3cret"})
            assert r.status_code == 200
            r = await client.post("/v1/chat/completions", json=ask, headers={"x-api-key": "s3cret"})
            assert r.status_code == 200
            assert (await client.get("/healthz")).status_code == 200  # probes need no key

    run(main)


# -- readiness, models, metrics ----------------------------------------------------------------


def test_readyz_is_503_until_the_model_is_loaded(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path, hold_load=True) as client:
            assert (await client.get("/healthz")).json() == {"status": "ok"}
            r = await client.get("/readyz")
            assert r.status_code == 503 and r.json()["ready"] is False
            ScriptedModel.opened.set()  # the load may finish now
            await until_ready(client)
            r = await client.get("/readyz")
            assert r.json() == {"ready": True, "model": NAME, "version": None}

    run(main)


def test_models_list_the_served_name_and_what_it_reads(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path, ctx=256, aliases=["gpt-4o-mini"]) as client:
            data = (await client.get("/v1/models")).json()["data"]
            assert [m["id"] for m in data] == [NAME, "gpt-4o-mini"]
            assert data[0]["meta"]["n_ctx"] == 256 and data[0]["meta"]["capabilities"] == ["text"]
            assert "embeddings" in data[0]["apis"]
            one = (await client.get("/v1/models/gpt-4o-mini")).json()
            assert one["id"] == "gpt-4o-mini"
            r = await client.post("/v1/chat/completions",
                                  json={"model": "gpt-4o-mini", "messages": USER})
            assert r.json()["model"] == "gpt-4o-mini"  # an alias is served under its own name

    run(main)


def test_metrics_count_requests_tokens_and_errors(tmp_path: Path) -> None:
    def value(text: str, name: str) -> float:
        for line in text.splitlines():
            if line.startswith(name + " ") or line.startswith(name + "{"):
                return float(line.rsplit(" ", 1)[1])
        raise AssertionError(f"{name} not in the metrics")

    async def main() -> None:
        async with node(tmp_path) as client:
            await client.post("/v1/chat/completions", json={"messages": USER})
            await client.post("/v1/chat/completions", content=b"{not json")
            r = await client.get("/metrics")
            assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
            text = r.text
            ok = 'route="/v1/chat/completions",status="200"'
            bad = 'route="/v1/chat/completions",status="400"'
            assert any(ok in line and line.endswith(" 1.0") for line in text.splitlines()), text
            assert any(bad in line and line.endswith(" 1.0") for line in text.splitlines())
            assert value(text, "edgecloud_node_prompt_tokens_total") >= len(USER_PROMPT)
            assert value(text, "edgecloud_node_ready") == 1.0

    run(main)


# -- the other APIs: Responses, Messages, embeddings -------------------------------------------


def test_responses_create_and_stream(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            r = await client.post("/v1/responses", json={"model": NAME, "input": "Hi"})
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["object"] == "response" and body["status"] == "completed"
            texts = [part["text"] for item in body["output"] if item["type"] == "message"
                     for part in item["content"] if part["type"] == "output_text"]
            assert texts == [REPLY.decode()]
            r = await client.post("/v1/responses", json={"input": "Hi", "stream": True})
            kinds = [e["type"] for e in sse_data(r)]
            assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
            assert "response.output_text.delta" in kinds
            error_of(await client.get("/v1/responses/resp_1"), 404, "response_not_stored")

    run(main)


def test_messages_create_stop_sequence_and_errors_in_anthropic_shape(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            ask = {"model": NAME, "max_tokens": 64, "messages": USER,
                   "stop_sequences": [" STOP"]}
            r = await client.post("/v1/messages", json=ask)
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["type"] == "message" and body["role"] == "assistant"
            assert body["content"] == [{"type": "text", "text": "Hello from the script."}]
            assert (body["stop_reason"], body["stop_sequence"]) == ("stop_sequence", " STOP")
            r = await client.post("/v1/messages/count_tokens",
                                  json={"model": NAME, "messages": USER})
            assert r.json() == {"input_tokens": body["usage"]["input_tokens"]}
            r = await client.post("/v1/messages", json={"max_tokens": 8, "model": "gpt-9",
                                                        "messages": USER})
            assert r.status_code == 404
            assert r.json()["type"] == "error" and r.json()["error"]["type"] == "not_found_error"
            r = await client.post("/v1/messages", content=b"{not json")
            assert r.status_code == 400 and r.json()["error"]["type"] == "invalid_request_error"

    run(main)


def test_embeddings_are_unit_vectors_in_float_and_base64(tmp_path: Path) -> None:
    async def main() -> None:
        async with node(tmp_path) as client:
            r = await client.post("/v1/embeddings", json={"model": NAME, "input": ["ab", "ab",
                                                                                  "zz"]})
            assert r.status_code == 200, r.text
            body = r.json()
            vectors = [np.array(d["embedding"]) for d in body["data"]]
            assert [d["index"] for d in body["data"]] == [0, 1, 2]
            assert all(abs(np.linalg.norm(v) - 1) < 1e-6 for v in vectors)
            assert np.allclose(vectors[0], vectors[1]) and not np.allclose(vectors[0], vectors[2])
            assert body["usage"]["prompt_tokens"] == 6
            r = await client.post("/v1/embeddings",
                                  json={"input": "ab", "encoding_format": "base64"})
            packed = np.frombuffer(base64.b64decode(r.json()["data"][0]["embedding"]), "<f4")
            assert np.allclose(packed, vectors[0])
            error_of(await client.post("/v1/embeddings", json={"input": []}), 400)
            error = error_of(await client.post("/v1/embeddings",
                                               json={"input": "ab", "dimensions": 3}), 400)
            assert error["param"] == "dimensions"

    run(main)


class TurnEndModel(ScriptedModel):
    """Answers with a reply that goes on into the next turn of the plain transcript."""

    def script(self, prompt: Sequence[int]) -> bytes:
        return b"Sure.\nUser: and more"


def test_ignore_eos_passes_the_plain_transcripts_end_of_turn(tmp_path: Path) -> None:
    """The plain transcript ends a turn at "\\nUser:", its stand-in for an end-of-generation
    token: a chat stops there, and one with ignore_eos (run to max_tokens, as llama-server's)
    does not; a stop string the client gave still applies."""
    async def main() -> None:
        model = tmp_path / "scripted.gguf"
        model.write_bytes(b"GGUF scripted")
        ScriptedModel.opened.set()
        app = NodeApp(NodeConfig(model=str(model), name=NAME, parallel=2),
                      open_model=TurnEndModel, prove=None)
        async with in_process(app) as client:
            await until_ready(client)
            body = {"model": NAME, "messages": USER, "max_tokens": 64}
            plain = (await client.post("/v1/chat/completions", json=body)).json()
            assert plain["choices"][0]["message"]["content"] == "Sure."
            run_on = (await client.post("/v1/chat/completions",
                                        json={**body, "ignore_eos": True})).json()
            assert run_on["choices"][0]["message"]["content"].startswith("Sure.\nUser: and more")
            stopped = (await client.post("/v1/chat/completions",
                                         json={**body, "ignore_eos": True, "stop": ["more"]}))
            assert stopped.json()["choices"][0]["message"]["content"] == "Sure.\nUser: and "

    run(main)
