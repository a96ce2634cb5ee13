"""HTTP edge of the node: OpenAI-compatible routes on raw ASGI, errors in the OpenAI envelope."""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
import signal
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import orjson

from edgecloud.api import replies
from edgecloud.api.asgi import (
    GET,
    JSON_HEADERS,
    POST,
    SSE_DONE,
    SSE_HEADERS,
    Receive,
    Routes,
    Scope,
    Send,
    StreamedReply,
    dispatch,
    header,
    lifespan,
    read_body,
    send_bytes,
    send_json,
    sse_event,
)
from edgecloud.api.errors import APIError, BadRequest, NotFound, ShuttingDown, Unauthorized
from edgecloud.api.messages import anthropic_error, messages_to_chat
from edgecloud.api.openai import ChatCompletionRequest, CompletionRequest, parse_request
from edgecloud.api.replies import Reply, sse_error
from edgecloud.api.responses import responses_to_chat
from edgecloud.logs import log_event
from edgecloud.node.answer import Answer
from edgecloud.node.backend import SamplingParams
from edgecloud.node.config import NodeConfig
from edgecloud.node.dialects import MESSAGES, RESPONSES, Dialect
from edgecloud.node.engine import GenerationRequest, StreamEvent
from edgecloud.node.image_projector import MultimodalPrompt
from edgecloud.node.image_reader import ImagePromptReader, has_images
from edgecloud.node.kernels import prove_kernels
from edgecloud.node.metrics import NodeMetrics
from edgecloud.node.model import LoadedModel
from edgecloud.node.service import KEEP_PROJECTOR, Loaded, NodeService
from edgecloud.node.structured import OutputPlan, plan_output

if TYPE_CHECKING:
    from edgecloud.node.otel import NodeTracer

log = logging.getLogger("edgecloud.node")

PROMETHEUS_HEADERS = [(b"content-type", b"text/plain; version=0.0.4; charset=utf-8")]


def _sampling(body: ChatCompletionRequest | CompletionRequest, plan: OutputPlan) -> SamplingParams:
    return SamplingParams(
        temperature=1.0 if body.temperature is None else body.temperature,
        top_p=1.0 if body.top_p is None else body.top_p,
        top_k=body.top_k or 0,
        min_p=body.min_p or 0.0,
        seed=body.seed,
        frequency_penalty=body.frequency_penalty or 0.0,
        presence_penalty=body.presence_penalty or 0.0,
        repeat_penalty=body.repeat_penalty or 1.0,
        grammar=plan.grammar,
        logprobs=plan.logprobs,
        ignore_eos=bool(body.ignore_eos),
    )


def _reject_unsupported(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.n is not None and body.n > 1:
        raise BadRequest("n > 1 is not supported by this node; send separate requests.", param="n")
    if isinstance(body, CompletionRequest) and body.suffix:
        raise BadRequest("suffix (fill-in-the-middle) is not supported.", param="suffix")


def _output_plan(loaded: Loaded, body: ChatCompletionRequest | CompletionRequest) -> OutputPlan:
    """The request's grammar, tools and logprobs, checked; a grammar llama.cpp refuses is a 400."""
    plan = plan_output(body, loaded.template if isinstance(body, ChatCompletionRequest) else None)
    if plan.grammar is not None and not loaded.model.grammar_compiles(plan.grammar):
        raise BadRequest(
            "The schema or tools produce a grammar llama.cpp cannot use.",
            param="response_format" if plan.tools.mode != "forced" else "tools",
        )
    return plan


class NodeApp:
    """The ASGI application of `edgecloud serve`.

    `open_model` and `prove` are the service's seams to llama.cpp (see `NodeService`): the
    in-process tests pass a scripted model and no kernel check.
    """

    def __init__(
        self,
        config: NodeConfig,
        open_model: Callable[..., LoadedModel] = LoadedModel,
        prove: Callable[[str], str | None] | None = prove_kernels,
    ) -> None:
        self.config = config
        self.metrics = NodeMetrics()
        self.service = NodeService(config, self.metrics, open_model, prove)
        self.images = ImagePromptReader(config)
        self.admin_token = os.environ.get(config.admin_token_env) or None
        self.api_key = (os.environ.get(config.api_key_env) or None) if config.api_key_env else None
        self.tracer: NodeTracer | None = None  # None while tracing is off (nothing imported)
        self._stopping = False
        self.fatal_error: str | None = None
        self._load_task: asyncio.Task[Any] | None = None
        self._drain_cut: asyncio.Task[None] | None = None
        self.routes = self._routes()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            await dispatch(self.routes, scope, receive, send, self._observe)
        elif kind == "lifespan":
            await lifespan(receive, send, self._startup, self._shutdown)

    def _observe(self, route: str, status: int) -> None:
        self.metrics.requests.labels(route=route, status=str(status)).inc()

    def _routes(self) -> Routes:
        routes = Routes()
        for prefix in ("", "/v1"):  # the OpenAI routes answer with and without /v1
            routes.add(prefix + "/chat/completions", self._chat, POST, "/v1/chat/completions")
            routes.add(prefix + "/completions", self._text, POST, "/v1/completions")
            routes.add(prefix + "/responses", self._responses, POST, "/v1/responses")
            routes.add(prefix + "/responses/*", self._stored_response, None, "/v1/responses/{id}")
            routes.add(prefix + "/messages", self._messages, POST, "/v1/messages")
            routes.add(prefix + "/messages/count_tokens", self._count_tokens, POST,
                       "/v1/messages/count_tokens")
            routes.add(prefix + "/embeddings", self._embeddings, POST, "/v1/embeddings")
            routes.add(prefix + "/models", self._model_list, GET, "/v1/models")
            routes.add(prefix + "/models/*", self._model_one, GET, "/v1/models/{id}")
        routes.add("/healthz", self._healthz, GET, "/healthz")
        routes.add("/readyz", self._readyz, GET, "/readyz")
        routes.add("/metrics", self._metrics, GET, "/metrics")
        routes.add("/admin/model", self._admin, frozenset({"GET", "HEAD", "POST"}), "/admin/model")
        return routes

    # -- lifespan -----------------------------------------------------------------------------
    async def _startup(self) -> None:
        from edgecloud.gateway.config import TracingConfig
        from edgecloud.gateway.tracing import resolve_tracing

        service = os.environ.get("OTEL_SERVICE_NAME") or "edgecloud-node"
        settings = resolve_tracing(TracingConfig(enabled=self.config.tracing,
                                                 service_name=service), os.environ)
        if settings is not None:
            from edgecloud.node.otel import NodeTracer

            self.tracer = NodeTracer(settings)
        if self.config.preload:
            self._load_task = asyncio.create_task(self._preload())

    async def _shutdown(self) -> None:
        self._stopping = True
        if self._load_task is not None and not self._load_task.done():
            self._load_task.cancel()
        await self.service.shutdown()
        if self.tracer is not None:
            await asyncio.to_thread(self.tracer.shutdown)  # exports what is still queued
        log_event(log, "node_stopped")

    async def _preload(self) -> None:
        try:
            await self.service.ensure_loaded()
        except APIError as exc:
            if self.service.kernel_error is not None:
                # llama.cpp cannot compute on this CPU: no model would serve, so exit non-zero
                # now instead of dying on a user's first request.
                log_event(log, "kernel_check_failed", logging.ERROR,
                          error=str(self.service.kernel_error))
                self.fatal_error = str(self.service.kernel_error)
                os.kill(os.getpid(), signal.SIGTERM)
                return
            # A bad model file: stay up and say so on /readyz (503) until an admin swap.
            log_event(log, "model_load_failed", logging.ERROR, error=exc.message)
        except Exception as exc:  # noqa: BLE001 - a bug must stop the node, not leave it unready
            log.exception("preload_crashed", extra={"fields": {"error": repr(exc)}})
            self.fatal_error = repr(exc)
            os.kill(os.getpid(), signal.SIGTERM)

    # -- routes -------------------------------------------------------------------------------
    async def _chat(self, scope: Scope, receive: Receive, send: Send) -> int:
        return await self._generate(scope, receive, send, chat=True)

    async def _text(self, scope: Scope, receive: Receive, send: Send) -> int:
        return await self._generate(scope, receive, send, chat=False)

    async def _responses(self, scope: Scope, receive: Receive, send: Send) -> int:
        return await self._translated(scope, receive, send, RESPONSES)

    async def _stored_response(self, scope: Scope, receive: Receive, send: Send) -> int:
        raise NotFound("Responses are not stored on this node (store is false): there is "
                       "nothing to retrieve, cancel or delete.", code="response_not_stored")

    async def _messages(self, scope: Scope, receive: Receive, send: Send) -> int:
        try:
            return await self._translated(scope, receive, send, MESSAGES)
        except APIError as err:
            return await _send_anthropic_error(send, err)

    async def _count_tokens(self, scope: Scope, receive: Receive, send: Send) -> int:
        """Anthropic's count_tokens: the prompt the Messages request would have, in tokens."""
        try:
            self._check_key(scope)
            data = await self._read_json(scope, receive)
            body = parse_request(ChatCompletionRequest, messages_to_chat(data, count_only=True))
            self.service.check_model_name(body.model)
            loaded = await self.service.ensure_loaded()
            plan = _output_plan(loaded, body)
            _, tokens, _, media = await self._prompt(loaded, body, plan)
            if media is not None:
                media.free()
            await send_json(send, 200, {"input_tokens": len(tokens)})
            return 200
        except APIError as err:
            return await _send_anthropic_error(send, err)

    async def _embeddings(self, scope: Scope, receive: Receive, send: Send) -> int:
        self._check_key(scope)
        data = await self._read_json(scope, receive)
        loaded = await self.service.ensure_loaded()
        await send_json(send, 200, await self.service.embed(loaded, data))
        return 200

    def _check_key(self, scope: Scope) -> None:
        """The node's API key, when it has one: Bearer, or x-api-key (Anthropic clients)."""
        if self.api_key is None:
            return
        auth = header(scope, b"authorization") or b""
        given = auth[7:].strip() if auth[:7].lower() == b"bearer " else header(
            scope, b"x-api-key") or b""
        if not hmac.compare_digest(given, self.api_key.encode()):
            raise Unauthorized("A valid API key is required: send Authorization: Bearer <key> "
                               "(or x-api-key).")

    async def _healthz(self, scope: Scope, receive: Receive, send: Send) -> int:
        await send_json(send, 200, {"status": "ok"})
        return 200

    async def _readyz(self, scope: Scope, receive: Receive, send: Send) -> int:
        status = 200 if self.service.ready and not self._stopping else 503
        await send_json(send, status, self._readiness())
        return status

    async def _metrics(self, scope: Scope, receive: Receive, send: Send) -> int:
        await send_bytes(send, 200, self.metrics.render(), PROMETHEUS_HEADERS)
        return 200

    async def _model_list(self, scope: Scope, receive: Receive, send: Send) -> int:
        await send_json(send, 200, {"object": "list", "data": self._models()})
        return 200

    async def _model_one(self, scope: Scope, receive: Receive, send: Send) -> int:
        name = scope["path"].split("/models/", 1)[1]
        found = [m for m in self._models() if m["id"] == name]
        if not found:
            raise NotFound(f"The model '{name}' does not exist.", param="model")
        await send_json(send, 200, found[0])
        return 200

    def _readiness(self) -> dict[str, Any]:
        cur = self.service.current
        out: dict[str, Any] = {"ready": cur is not None and not self._stopping}
        if cur is not None:
            out["model"] = cur.info.id
            out["version"] = cur.info.version
        if self.service.load_error:
            out["error"] = self.service.load_error
        if self._stopping:
            out["status"] = "shutting_down"
        return out

    def _models(self) -> list[dict[str, Any]]:
        apis = ["chat.completions", "completions", "responses", "messages", "embeddings"]
        cur = self.service.current
        created = int(cur.info.loaded_at) if cur else int(time.time())
        meta: dict[str, Any] = {}
        if cur is not None:
            meta = {
                "n_ctx": cur.model.n_ctx_seq,
                "n_ctx_train": cur.info.n_ctx_train,
                "n_params": cur.info.n_params,
                "size": cur.info.size_bytes,
                "version": cur.info.version,
                "capabilities": cur.capabilities,
            }
        return [
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "edgecloud",
                "apis": apis,
                "meta": meta,
            }
            for name in self.service.model_ids
        ]

    # -- admin --------------------------------------------------------------------------------
    async def _admin(self, scope: Scope, receive: Receive, send: Send) -> int:
        method = scope["method"]
        if self.admin_token is None:
            raise NotFound(f"The admin API is off; set {self.config.admin_token_env} to enable it.")
        auth = header(scope, b"authorization") or b""
        given = auth[7:] if auth[:7].lower() == b"bearer " else b""
        if not hmac.compare_digest(given, self.admin_token.encode()):
            raise Unauthorized("A valid admin bearer token is required.")
        if method != "POST":
            info = await self.service.model_info()
            await send_json(send, 200, self._info_json(info))
            return 200
        data = self._decode(await read_body(receive, 64 * 1024, scope))
        path = data.get("path") if isinstance(data, dict) else None
        version = data.get("version") if isinstance(data, dict) else None
        if not isinstance(path, str) or not path:
            raise BadRequest("'path' (absolute path of a GGUF file) is required.", param="path")
        if version is not None and not isinstance(version, str):
            raise BadRequest("'version' must be a string.", param="version")
        # No "mmproj": the current projector's file again; null: text only.
        mmproj = data.get("mmproj", KEEP_PROJECTOR)
        if (
            mmproj is not None
            and mmproj is not KEEP_PROJECTOR
            and (not isinstance(mmproj, str) or not mmproj)
        ):
            raise BadRequest(
                "'mmproj' must be the path of a projector GGUF, or null for none.", param="mmproj"
            )
        await self.service.swap(path, version, mmproj)
        await send_json(send, 200, self._info_json(await self.service.model_info()))
        return 200

    def _info_json(self, info: Any) -> dict[str, Any]:
        if info is None:  # "state" says whether its configured model is still loading
            return {"id": None, "loaded": False, "state": self.service.state.value}
        cur = self.service.current
        projector = cur.projector if cur is not None else None
        return {
            "id": info.id,
            "path": info.path,
            "sha256": info.sha256,
            "version": info.version,
            "loaded_at": info.loaded_at,
            "size": info.size_bytes,
            "mmproj": projector.path if projector is not None else None,
            "capabilities": cur.capabilities if cur is not None else ["text"],
            "loaded": True,
        }

    # -- generation ---------------------------------------------------------------------------
    def begin_drain(self, timeout_s: float) -> None:
        """SIGTERM: refuse new work (/readyz 503) and let running requests finish; any still
        running shortly before the server's drain deadline is ended by the engine, so its
        stream closes with an error event and [DONE] instead of being dropped mid-way."""
        self._stopping = True
        margin = min(max(2.0, timeout_s / 10), timeout_s / 2)
        loop = asyncio.get_running_loop()

        def cut() -> None:
            log_event(log, "drain_deadline", logging.WARNING, in_flight=self.service.in_flight)
            self._drain_cut = loop.create_task(self.service.shutdown())

        loop.call_later(timeout_s - margin, cut)

    @staticmethod
    def _decode(raw: bytes) -> Any:
        if not raw:
            raise BadRequest("The request body is empty; send a JSON object.")
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"The request body is not valid JSON: {exc}.") from None

    async def _read_json(self, scope: Scope, receive: Receive) -> Any:
        if self._stopping:
            raise ShuttingDown("This node is shutting down.")
        return self._decode(await read_body(receive, self.config.max_body_bytes, scope))

    async def _generate(self, scope: Scope, receive: Receive, send: Send, chat: bool) -> int:
        arrived = time.perf_counter()
        self._check_key(scope)
        data = await self._read_json(scope, receive)
        body: ChatCompletionRequest | CompletionRequest
        if chat:
            body = parse_request(ChatCompletionRequest, data)
        else:
            body = parse_request(CompletionRequest, data)
        return await self._run(scope, receive, send, body, arrived)

    async def _translated(self, scope: Scope, receive: Receive, send: Send,
                          dialect: Dialect) -> int:
        """A Responses or Messages request: translated to chat (api/), run on the chat path,
        its answer translated back."""
        arrived = time.perf_counter()
        self._check_key(scope)
        data = await self._read_json(scope, receive)
        translate = responses_to_chat if dialect is RESPONSES else messages_to_chat
        body = parse_request(ChatCompletionRequest, translate(data))
        return await self._run(scope, receive, send, body, arrived, dialect, data)

    async def _run(self, scope: Scope, receive: Receive, send: Send,
                   body: ChatCompletionRequest | CompletionRequest, arrived: float,
                   dialect: Dialect | None = None, original: Any = None) -> int:
        """Generate for a parsed request; a dialect's answer is translated from the chat one."""
        chat = isinstance(body, ChatCompletionRequest)
        _reject_unsupported(body)
        self.service.check_model_name(body.model)
        loaded = await self.service.ensure_loaded()
        plan = _output_plan(loaded, body)
        prompt_text, tokens, stops, media = await self._prompt(loaded, body, plan)
        req = GenerationRequest(
            prompt=tokens,
            max_tokens=1,
            sampling=_sampling(body, plan),
            stop=stops,
            submitted_at=arrived,
            deadline=arrived + self.config.max_request_s,
            media=media,
        )
        echo = not chat and bool(getattr(body, "echo", False))
        answer = Answer(chat, plan, loaded.model.piece, len(prompt_text) if echo else 0)
        try:
            req.max_tokens = self.service.plan_tokens(
                loaded, len(tokens), body.requested_max_tokens()
            )
            self.service.submit(loaded, req)
        except BaseException:
            req.free_media()  # it never reached the engine
            raise
        self.service.begin()
        self.metrics.prompt_tokens.inc(len(tokens))
        watcher = asyncio.ensure_future(self._watch_disconnect(receive, req))
        status = 500  # until an answer says otherwise (an error raised mid-way)
        try:
            if body.stream:
                status = await self._stream(send, body, req, answer, prompt_text, dialect,
                                            original)
            else:
                status = await self._complete(send, body, req, answer, prompt_text, dialect,
                                              original)
        finally:
            watcher.cancel()
            self.service.end()
            self.metrics.output_tokens.inc(req.output_tokens)
            if req.media_read:
                self.metrics.images.inc(req.media_read)
                self.metrics.image_seconds.inc(req.media_seconds)
            if req.admitted_at is not None:
                self.metrics.queue_wait.observe(req.admitted_at - arrived)
            if req.first_token_at is not None:
                self.metrics.ttft.observe(req.first_token_at - arrived)
            if req.finished_at is not None:
                self.metrics.e2e.observe(req.finished_at - arrived)
            if self.tracer is not None:
                path = scope["path"]
                route = path if path.startswith("/v1/") else "/v1" + path
                self.tracer.record(scope["headers"], route, self._served(body), req, status,
                                   arrived)
        return status

    async def _prompt(
        self, loaded: Loaded, body: ChatCompletionRequest | CompletionRequest, plan: OutputPlan
    ) -> tuple[str, list[int], tuple[str, ...], MultimodalPrompt | None]:
        """Prompt text, tokens (MEDIA_TOKEN where images stand), stop strings, image chunks."""
        model = loaded.model
        stops = body.stop_list()
        if isinstance(body, ChatCompletionRequest):
            if not body.ignore_eos:
                # The plain transcript's end of turn stands for an end-of-generation token, so
                # ignore_eos (run to max_tokens, as llama-server's) passes it too.
                stops = stops + tuple(s for s in loaded.template.default_stops
                                      if s not in stops)
            projector = loaded.projector
            if projector is not None and has_images(body.messages):
                text, media = await self.images.read(
                    body.messages,
                    loaded.template,
                    projector,
                    model.n_batch,
                    plan.tools.template_tools,
                )
                return text, media.flat_tokens(), stops, media
            # Without a projector, an image part is refused here (400, model_not_vision).
            text = loaded.template.render(body.messages, plan.tools.template_tools)
            return text, await self.service.tokenize(loaded, text), stops, None
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and all(isinstance(t, int) for t in prompt):
            ids = [int(t) for t in prompt]
            if any(t < 0 or t >= model.n_vocab for t in ids):
                raise BadRequest(f"Token ids must be in [0, {model.n_vocab}).", param="prompt")
            return "", ids, stops, None
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise BadRequest(
                    "Send one prompt per request (a list of several prompts is not supported).",
                    param="prompt",
                )
            prompt = str(prompt[0])
        return str(prompt), await self.service.tokenize(loaded, str(prompt)), stops, None

    async def _watch_disconnect(self, receive: Receive, req: GenerationRequest) -> None:
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                req.cancel()
                self.metrics.cancelled.inc()
                req.events.put_nowait(StreamEvent(finish_reason="cancelled"))
                return

    def _usage(self, req: GenerationRequest) -> dict[str, Any]:
        return replies.usage(len(req.prompt), req.output_tokens, req.cached_tokens)

    async def _complete(
        self, send: Send, body: Any, req: GenerationRequest, answer: Answer, prompt_text: str,
        dialect: Dialect | None = None, original: Any = None,
    ) -> int:
        while True:
            event = await req.events.get()
            answer.add(event.text, event.logprobs)
            if event.finish_reason is not None:
                break
        if event.finish_reason == "cancelled":
            if req.cancelled:
                return 499
            raise ShuttingDown("The node stopped before this request finished.")
        if event.finish_reason == "error":
            raise APIError(f"Generation failed: {event.error}")
        whole = answer.whole(event.finish_reason)
        text = whole.content
        if not answer.chat and getattr(body, "echo", False):
            text = prompt_text + (text or "")
        reply = Reply(self._served(body), chat=answer.chat)
        out = reply.completion(
            text,
            whole.finish_reason,
            self._usage(req),
            logprobs=whole.logprobs,
            tool_calls=whole.tool_calls,
        )
        if dialect is not None:
            out["choices"][0]["stop_sequence"] = _user_stop(req, body)
            out = dialect.whole(out, original, self._served(body))
        else:
            out["timings"] = req.timings()
        await send_json(send, 200, out)
        return 200

    def _served(self, body: Any) -> str:
        return body.model or self.config.name

    async def _stream(
        self, send: Send, body: Any, req: GenerationRequest, answer: Answer, prompt_text: str,
        dialect: Dialect | None = None, original: Any = None,
    ) -> int:
        if dialect is not None:
            return await self._stream_dialect(send, body, req, answer, dialect, original)
        chat = answer.chat
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        reply = Reply(self._served(body), chat=chat, include_usage=include_usage)
        stream = await StreamedReply.start(send, 200, SSE_HEADERS)
        if chat:
            await stream.chunk(sse_event(reply.chunk(role=True)))
        elif getattr(body, "echo", False) and prompt_text:
            await stream.chunk(sse_event(reply.chunk(prompt_text)))
        while True:
            event = await req.events.get()
            if event.finish_reason == "cancelled" and req.cancelled:
                return 499
            piece = answer.delta(event.text, event.logprobs)
            if piece is not None:
                chunk = reply.chunk(piece.text, logprobs=piece.logprobs)
                await stream.chunk(sse_event(chunk))
            if event.finish_reason is not None:
                break
        if event.finish_reason in ("cancelled", "error"):
            await stream.chunk(sse_error(_stream_failure(event)))
        else:
            closing, finish = answer.closing(event.finish_reason)
            for piece in closing:
                calls = piece.tool_calls
                chunk = reply.chunk(piece.text, logprobs=piece.logprobs, tool_calls=calls)
                await stream.chunk(sse_event(chunk))
            last = reply.chunk(None, finish)
            last["timings"] = req.timings()  # as llama-server: on the finishing chunk
            await stream.chunk(sse_event(last))
            if include_usage:
                await stream.chunk(sse_event(reply.usage_chunk(self._usage(req))))
        await stream.end(SSE_DONE)
        return 200

    async def _stream_dialect(self, send: Send, body: Any, req: GenerationRequest,
                              answer: Answer, dialect: Dialect, original: Any) -> int:
        """A translated stream: the chat chunks go through the dialect's codec, not the wire."""
        model = self._served(body)
        codec = dialect.stream(original, model, len(req.prompt))
        reply = Reply(model, chat=True)
        stream = await StreamedReply.start(send, 200, SSE_HEADERS)
        await stream.chunk(codec.chunk(reply.chunk(role=True)))
        while True:
            event = await req.events.get()
            if event.finish_reason == "cancelled" and req.cancelled:
                return 499
            piece = answer.delta(event.text)
            if piece is not None and piece.text:
                await stream.chunk(codec.chunk(reply.chunk(piece.text)))
            if event.finish_reason is not None:
                break
        if event.finish_reason in ("cancelled", "error"):
            tail = codec.error(_stream_failure(event))
        else:
            closing, finish = answer.closing(event.finish_reason)
            tail = b"".join(codec.chunk(reply.chunk(p.text, tool_calls=p.tool_calls))
                            for p in closing)
            last = reply.chunk(None, finish)
            last["choices"][0]["stop_sequence"] = _user_stop(req, body)
            tail += codec.chunk(last) + codec.chunk(reply.usage_chunk(self._usage(req)))
            tail += codec.done()
        await stream.end(tail)
        return 200


def _stream_failure(event: StreamEvent) -> APIError:
    """The error that ends a stream whose generation was cut (node stopping) or failed."""
    if event.finish_reason == "cancelled":
        return APIError("The node stopped before this request finished.", code="cancelled")
    return APIError(f"Generation failed: {event.error}", code="error")


def _user_stop(req: GenerationRequest, body: Any) -> str | None:
    """The client's own stop string that ended the answer (not the template's end marker)."""
    hit = req.stop_hit
    return hit if hit is not None and hit in body.stop_list() else None


async def _send_anthropic_error(send: Send, err: APIError) -> int:
    """An error on a Messages route, in Anthropic's shape (`{"type": "error", ...}`)."""
    headers = [*JSON_HEADERS, *((k.encode(), v.encode()) for k, v in err.headers.items())]
    await send_bytes(send, err.status, anthropic_error(err), headers)
    return err.status
