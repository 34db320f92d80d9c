"""Layer 4 of the content classifier: the local chat model as a judge.

`EngineJudge` asks an `Engine` for a JSON object constrained by a schema
(``{"label": one of CONTENT_LABELS, "confidence": number}``), greedy, with a
deadline, and parses it into a typed reply. Anything that goes wrong (the
engine fails, the deadline passes, the reply does not parse) is a
`JudgeError`; the classifier then keeps the cheap layers' answer.

The service runs it on the chat engine, or on a model of its own
(``COMPANION_CONTENT_JUDGE``, `server.resources`). It asks at background
priority, as the memory jobs do: one user's unsure message must not delay
other users' replies, so under load their turns are admitted first and the
judge, past its deadline, gives way to the cheap answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from typing import Any

import msgspec

from inference.classifiers.content import ContentContext, JudgeError
from inference.classifiers.content_rules import CONTENT_LABELS
from inference.engine import Engine
from inference.errors import InferenceError
from inference.types import ChatMessage, GenerationRequest, Priority, SamplingParams, TextDelta

JUDGE_PROMPT = """You label one chat message for a companion app's safety routing.
Labels:
- safe: anything else, including sadness, everyday talk, questions about health or sex education
- romantic: affection, flirting, dating, not sexual
- explicit: requests for sexual content or adult roleplay
- fetish: requests for kink, domination, bondage or other fetish roleplay
- self_harm: suicidal thoughts, self-injury, wanting to die or disappear, even indirect
- minor_sexual: any romantic or sexual request from or about someone under 18
- violent_threat: a threat or plan to hurt someone else
- hate: contempt or calls for harm against a group of people
Answer with JSON only: {"label": "...", "confidence": 0.0-1.0}."""

JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "label": {"type": "string", "enum": list(CONTENT_LABELS)},
        "confidence": {"type": "number", "minimum": 0, "maximum": 1},
    },
    "required": ["label", "confidence"],
    "additionalProperties": False,
}


class JudgeReply(msgspec.Struct, frozen=True):
    """The judge's parsed answer."""

    label: str
    confidence: float


class EngineJudge:
    """A `Judge` that prompts the local chat model with a schema-constrained reply."""

    def __init__(self, engine: Engine, deadline_s: float = 5.0, max_tokens: int = 48) -> None:
        self.engine = engine
        self.deadline_s = deadline_s
        self.max_tokens = max_tokens

    async def judge(self, text: str, context: ContentContext) -> tuple[str, float]:
        """The label and confidence the model gives ``text`` in ``context``.

        The deadline is also kept here, on the caller's clock: the engine ends a
        late request only at its next decode step (an engine process is given
        5 s more), and a chat turn waits for this answer.
        """
        request = self.request(text, context)
        try:
            async with asyncio.timeout(self.deadline_s):
                reply = await self._collect(request)
        except TimeoutError as exc:
            raise JudgeError(f"no answer within {self.deadline_s:g} s") from exc
        except InferenceError as exc:
            raise JudgeError(f"{type(exc).__name__}: {exc}") from exc
        parsed = parse_reply(reply)
        return parsed.label, parsed.confidence

    def request(self, text: str, context: ContentContext) -> GenerationRequest:
        """The generation request for one message (public: tests inspect it)."""
        return GenerationRequest(
            request_id=f"content-judge-{uuid.uuid4().hex}",
            # the writer's id: their message's KV is theirs (erasing them drops it)
            user_id=context.user_id or "content-judge",
            messages=(
                ChatMessage("system", JUDGE_PROMPT),
                ChatMessage("user", describe(text, context)),
            ),
            sampling=SamplingParams(temperature=0.0, max_tokens=self.max_tokens),
            json_schema=JUDGE_SCHEMA,
            priority=Priority.BACKGROUND,  # chat turns first (the module doc)
            deadline_s=self.deadline_s,
            public_prefix_messages=1,
        )

    async def _collect(self, request: GenerationRequest) -> str:
        parts: list[str] = []
        # closed at once when the deadline cancels it: the engine aborts the request
        async with contextlib.aclosing(self.engine.generate(request)) as events:
            async for event in events:
                if isinstance(event, TextDelta):
                    parts.append(event.text)
        return "".join(parts)


def describe(text: str, context: ContentContext) -> str:
    """The user turn: the conversation facts the judge may use, then the message."""
    facts = []
    if context.is_minor:
        facts.append("The user is under 18.")
    if context.route:
        facts.append(f"The conversation is on the {context.route} route.")
    if context.recent_labels:
        facts.append(f"Recent message labels: {', '.join(context.recent_labels[-3:])}.")
    return " ".join([*facts, f"Message: {text!r}"])


def parse_reply(reply: str) -> JudgeReply:
    """Decode the model's JSON; `JudgeError` when it is not a valid answer."""
    try:
        parsed = msgspec.json.decode(reply.strip(), type=JudgeReply)
    except msgspec.DecodeError as exc:
        raise JudgeError(f"judge reply does not parse: {reply[:80]!r}") from exc
    if parsed.label not in CONTENT_LABELS:
        raise JudgeError(f"judge answered an unknown label {parsed.label!r}")
    return JudgeReply(parsed.label, min(max(parsed.confidence, 0.0), 1.0))
