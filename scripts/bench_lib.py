"""The companion workload: what the conversation benchmarks ask, whoever answers.

C users, each with the same operator persona (the prefix every user may share),
their own memory notes and their own messages, turn after turn. A
`ConversationSession` sends one of them through the load harness
(scripts/bench_harness.py) with any client that streams a reply into a
`Sample` (scripts/bench_client.py): bench_engine.py's backends,
bench_openai.py's servers; bench_cache_scope.py and bench_chat.py use the
conversations and messages alone. Nothing here imports a model library.
"""

from __future__ import annotations

import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, NamedTuple

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_harness import Sample

Role = Literal["system", "user", "assistant"]

# Operator-written and identical for every user: the shareable prefix. About 500
# tokens with the SmolLM2 tokenizer (bench_engine.py prints the exact count).
PERSONA = """\
You are Juniper, a warm, curious and steady companion. You talk with one person \
at a time, and you remember what they have shared with you over weeks and months. \
You are not a therapist, a doctor, a lawyer or a financial adviser, and you never \
pretend to be one; you are a thoughtful friend who listens well.

How you speak:
- Write the way a kind friend texts: short paragraphs, plain words, no lists \
unless the person asks for steps.
- Mirror their energy. If they are playful, be playful back; if they are tired \
or sad, slow down and be gentle.
- Ask at most one question per reply, and only when you genuinely want to know \
the answer. Never end every message with a question out of habit.

What you do with memory:
- You receive a short block of notes about the person before the conversation. \
Treat it as things they told you earlier. Bring details up naturally when they \
are relevant (a pet's name, an upcoming exam, a friend they mentioned) and never \
recite the notes back as a list.
- If a note seems out of date or the person contradicts it, believe the person \
and adjust without making a fuss.
- Never invent memories. If you are unsure whether they told you something, say \
so lightly and ask.

Boundaries and care:
- If someone mentions wanting to hurt themselves or someone else, stay calm, \
take it seriously, encourage them to contact local emergency services or a \
crisis line, and keep talking with them kindly.
- Do not give medical dosages, legal strategies or investment picks. You can help \
them prepare questions for a professional.
- Respect privacy: do not ask for passwords, addresses, bank details or \
identity numbers, and gently discourage sharing them.
- You may disagree, but do it with warmth and give your reasons.

Your personality:
- You love small everyday joys: the first coffee of the morning, rain on a \
window, a good sandwich, a dog that is too excited to see its owner.
- You are quietly funny. You enjoy wordplay and light teasing once you know \
someone, never sarcasm that could sting.
- You get curious about people's hobbies and like to learn the details, from \
sourdough hydration to chess openings to the plot of the show they are watching.

Keep replies under about a hundred words unless the person asks for more detail \
or is clearly in the middle of telling a longer story that deserves a longer answer.\
"""

_NAMES = ("Maya", "Tom", "Priya", "Jonas", "Aiko", "Luis", "Fatima", "Ben", "Chloe", "Arjun")
_CITIES = ("Lisbon", "Leeds", "Pune", "Hamburg", "Osaka", "Bogotá", "Casablanca", "Denver")
_JOBS = (
    "a night-shift nurse",
    "a second-year architecture student",
    "a freelance illustrator",
    "a bus driver",
    "a junior data analyst",
    "a primary school teacher",
    "a sous-chef in a busy bistro",
    "a retired postman",
)
_PETS = (
    "a grey cat called Biscuit",
    "an elderly beagle named Pepper",
    "two goldfish, Salt and Vinegar",
    "a rescue greyhound called Comet",
    "no pets but wants a parrot",
    "a bearded dragon named Gus",
)
_HOBBIES = (
    "bouldering on weekends",
    "baking sourdough and failing at baguettes",
    "learning Korean on a language app",
    "restoring an old road bike",
    "playing online chess most evenings",
    "growing chillies on the balcony",
    "writing a fantasy novel in secret",
)
_EVENTS = (
    "has a job interview on Thursday and is nervous about it",
    "just moved flats and still lives out of boxes",
    "is training for a first half marathon in six weeks",
    "had a falling-out with their sister last month",
    "is planning a surprise birthday trip for their partner",
    "started sleeping badly since a new neighbour moved in",
)
_TOPICS = (
    "I finally tried that recipe you suggested and the kitchen is a disaster.",
    "Work was long today and my manager keeps changing the plan.",
    "Do you think it is silly to be this nervous about something so small?",
    "I went for a walk by the river and saw a heron, which cheered me up.",
    "Can you help me think of a nice way to say sorry to a friend?",
    "I keep putting off replying to messages and now there are forty of them.",
    "Random question: what would you cook if you only had eggs and rice?",
    "I slept really badly again and I feel like a zombie.",
    "Tell me something cheerful, I could do with it right now.",
    "I made a plan for the weekend but part of me just wants to stay in.",
    "My neighbour's music was loud until two in the morning.",
    "I think I am finally getting the hang of my hobby, small wins!",
)
_OPENERS = ("Hey Juniper.", "Hi again!", "Evening.", "So,", "Okay, update:", "Morning!")


class Message(NamedTuple):
    role: Role
    content: str


@dataclass(frozen=True, slots=True)
class Conversation:
    """One user's chat: the shared persona, their memory notes and the messages they send."""

    index: int
    user_id: str
    conversation_id: str
    memory: str
    user_messages: tuple[str, ...]

    def opening(self) -> list[Message]:
        """The two system messages every turn starts with (persona first: the public prefix)."""
        return [Message("system", PERSONA), Message("system", self.memory)]


def memory_notes(index: int) -> str:
    """About a hundred tokens of made-up facts about user ``index``."""
    pick = _picker(index)
    name = pick(_NAMES)
    return (
        f"Notes about the person you are talking to (from earlier conversations): "
        f"Their name is {name}. They live in {pick(_CITIES)} and work as {pick(_JOBS)}. "
        f"They have {pick(_PETS)}. In their free time they enjoy {pick(_HOBBIES)}. "
        f"Recently {name} {pick(_EVENTS)}. They prefer short, honest replies, dislike "
        f"being lectured, and once told you their favourite comfort food is "
        f"{('dal', 'ramen', 'pierogi', 'arepas', 'toast with jam')[index % 5]}. "
        f"They usually write in the {('morning', 'evening', 'late night')[index % 3]}."
    )


def user_messages(index: int, turns: int) -> tuple[str, ...]:
    """A different message for every (conversation, turn)."""
    return tuple(
        f"{_OPENERS[(index + turn) % len(_OPENERS)]} "
        f"{_TOPICS[(index * 5 + turn * 7) % len(_TOPICS)]} "
        f"(turn {turn + 1})"
        for turn in range(turns)
    )


def build_conversations(count: int, turns: int) -> list[Conversation]:
    return [
        Conversation(
            index=i,
            user_id=f"bench-user-{i}",
            conversation_id=f"bench-conv-{i}",
            memory=memory_notes(i),
            user_messages=user_messages(i, turns),
        )
        for i in range(count)
    ]


def _picker(seed: int) -> Callable[[Sequence[str]], str]:
    """Deterministic choices that differ between users (a tiny LCG, no global random state)."""
    state = [seed * 2654435761 + 12345]

    def pick(options: Sequence[str]) -> str:
        state[0] = (state[0] * 1103515245 + 12345) % (1 << 31)
        return options[state[0] % len(options)]

    return pick


# --- one conversation through the harness

# Sends the conversation's messages so far and streams the reply (scripts/bench_client.py).
Send = Callable[[Conversation, Sequence[Message]], Awaitable[Sample]]


class ConversationSession:
    """A conversation as the harness's Session: each turn adds the user's next message
    and sends the whole history through ``send``; a reply that arrives extends it."""

    def __init__(self, conversation: Conversation, send: Send) -> None:
        self.conversation = conversation
        self.send = send
        self.turns = len(conversation.user_messages)
        self.history = conversation.opening()

    async def prepare(self) -> None:
        return None

    async def request(self, turn: int) -> Sample:
        self.history.append(Message("user", self.conversation.user_messages[turn]))
        sample = await self.send(self.conversation, self.history)
        if sample.error is None:
            self.history.append(Message("assistant", sample.text))
        return sample
