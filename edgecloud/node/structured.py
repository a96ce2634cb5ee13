"""What a request asks of its output beyond free text: a grammar (from `response_format` or a
forced tool call), how tool calls are written and read back, and log-probabilities.

Pure: the request and the chat template in, an OutputPlan out. Whether the grammar compiles
is checked by the model (`LoadedModel.grammar_compiles`), still before the request is queued.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

import orjson

from edgecloud.api.errors import BadRequest
from edgecloud.api.openai import ChatCompletionRequest, CompletionRequest, ResponseFormat
from edgecloud.node.grammar import json_object_grammar, schema_grammar
from edgecloud.node.prompt import ChatTemplate
from edgecloud.node.tools import ToolPlan, plan_tools

MAX_GRAMMAR_CHARS = 1 << 20


@dataclass
class OutputPlan:
    grammar: str | None = None
    tools: ToolPlan = field(default_factory=ToolPlan)
    logprobs: int | None = None  # None: off; k: the chosen token and the top k

    @property
    def constrained(self) -> bool:
        return self.grammar is not None


def plan_output(
    body: ChatCompletionRequest | CompletionRequest, template: ChatTemplate | None
) -> OutputPlan:
    """Check the structured-output, tool and logprob fields; 400 on anything we cannot honour."""
    plan = OutputPlan()
    if isinstance(body, ChatCompletionRequest):
        if body.logprobs:
            plan.logprobs = body.top_logprobs or 0
        source = template.source if template is not None else None
        has_tools = template.supports_tools if template is not None else False
        plan.tools = plan_tools(body, source, has_tools)
        if plan.tools.mode == "forced":
            plan.grammar = plan.tools.grammar
    else:
        if body.logprobs is not None:
            if body.echo:
                raise BadRequest(
                    "'echo' together with 'logprobs' is not supported.", param="logprobs"
                )
            plan.logprobs = body.logprobs
    if plan.grammar is None and body.response_format is not None:
        plan.grammar = format_grammar(body.response_format)
    if plan.grammar is not None and len(plan.grammar) > MAX_GRAMMAR_CHARS:
        raise BadRequest(
            "The schema makes a grammar too large for this node.", param="response_format"
        )
    return plan


def format_grammar(fmt: ResponseFormat) -> str | None:
    if fmt.type == "text":
        return None
    if fmt.type == "json_object":
        return _json_object()
    assert fmt.json_schema is not None and fmt.json_schema.schema_ is not None
    return _schema_grammar(orjson.dumps(fmt.json_schema.schema_))


@functools.lru_cache(maxsize=1)
def _json_object() -> str:
    return json_object_grammar()


@functools.lru_cache(maxsize=64)
def _schema_grammar(schema_json: bytes) -> str:
    # Cached on the schema's canonical text: agents send the same schema on every turn.
    return schema_grammar(orjson.loads(schema_json))
