"""The companion workload and its reporting, for scripts/bench_engine.py.

Kept apart from the backends so that the workload (what is asked) and the
numbers (what is measured) read the same whichever server answers. Nothing here
imports a model library.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol

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


@dataclass(frozen=True, slots=True)
class Reply:
    """What a backend reports about one completion. ``None``: the backend does not say."""

    text: str
    ttft_s: float | None
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int


class Backend(Protocol):
    """Something that answers chat turns. ``reply`` is called concurrently."""

    name: str

    async def start(self) -> None: ...

    async def close(self) -> None: ...

    async def reply(self, conversation: Conversation, messages: Sequence[Message]) -> Reply: ...

    def extras(self) -> dict[str, Any]:
        """Backend-specific numbers for the JSON (engine counters, server flags)."""
        ...


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


# --- running


@dataclass(frozen=True, slots=True)
class TurnRecord:
    conversation: int
    turn: int  # 1-based
    started_s: float  # since the run began
    e2e_s: float
    ttft_s: float | None
    prompt_tokens: int | None
    cached_tokens: int | None
    completion_tokens: int
    error: str | None = None


@dataclass
class RunResult:
    backend: str
    concurrency: int
    wall_s: float
    records: list[TurnRecord]
    extras: dict[str, Any] = field(default_factory=dict)


class Progress(Protocol):
    def update(self, n: int = 1) -> Any: ...

    def close(self) -> Any: ...


def progress_bar(total: int, description: str) -> Progress:
    """tqdm when it is installed, else a counter on stderr."""
    try:
        from tqdm import tqdm  # type: ignore[import-untyped,unused-ignore]
    except ImportError:
        return _Counter(total, description)
    bar: Progress = tqdm(total=total, desc=description, unit="turn", file=sys.stderr)
    return bar


class _Counter:
    def __init__(self, total: int, description: str) -> None:
        self.total, self.done, self.description = total, 0, description

    def update(self, n: int = 1) -> None:
        self.done += n
        print(f"\r{self.description}: {self.done}/{self.total} turns", end="", file=sys.stderr)

    def close(self) -> None:
        print(file=sys.stderr)


async def run_workload(
    backend: Backend, conversations: Sequence[Conversation], turns: int, progress: Progress
) -> RunResult:
    """Run every conversation's turns in order, all conversations at once."""
    began = time.perf_counter()
    per_conversation = await asyncio.gather(
        *(_converse(backend, c, turns, began, progress) for c in conversations)
    )
    wall = time.perf_counter() - began
    records = [r for rs in per_conversation for r in rs]
    return RunResult(backend.name, len(conversations), wall, records, backend.extras())


async def _converse(
    backend: Backend, conversation: Conversation, turns: int, began: float, progress: Progress
) -> list[TurnRecord]:
    history = conversation.opening()
    records: list[TurnRecord] = []
    for turn in range(turns):
        history.append(Message("user", conversation.user_messages[turn]))
        # Every first turn is due when the run begins. A backend that blocks the
        # event loop delays the start of other conversations' tasks; that delay is
        # part of their latency, so it is added back here.
        started = began if turn == 0 else time.perf_counter()
        late = time.perf_counter() - started
        try:
            reply = await backend.reply(conversation, history)
        except Exception as exc:  # a failed turn ends its conversation; the rest go on
            records.append(_failed(conversation.index, turn + 1, started - began, exc))
            progress.update(turns - turn)
            break
        if reply.ttft_s is not None:
            reply = replace(reply, ttft_s=reply.ttft_s + late)
        e2e = time.perf_counter() - started
        records.append(_record(conversation.index, turn + 1, started - began, e2e, reply))
        history.append(Message("assistant", reply.text))
        progress.update()
    return records


def _record(conv: int, turn: int, started: float, e2e: float, reply: Reply) -> TurnRecord:
    return TurnRecord(
        conversation=conv,
        turn=turn,
        started_s=started,
        e2e_s=e2e,
        ttft_s=reply.ttft_s,
        prompt_tokens=reply.prompt_tokens,
        cached_tokens=reply.cached_tokens,
        completion_tokens=reply.completion_tokens,
    )


def _failed(conv: int, turn: int, started: float, exc: BaseException) -> TurnRecord:
    message = f"{type(exc).__name__}: {exc}"
    print(f"\nconversation {conv} turn {turn} failed: {message}", file=sys.stderr)
    return TurnRecord(conv, turn, started, 0.0, None, None, None, 0, error=message)


# --- numbers


def percentile(values: Iterable[float], q: float) -> float | None:
    """Linear-interpolated percentile (q in 0..100); None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = (len(ordered) - 1) * q / 100
    low, high = math.floor(rank), math.ceil(rank)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def mean(values: Iterable[float]) -> float | None:
    items = list(values)
    return sum(items) / len(items) if items else None


def summarize(run: RunResult) -> dict[str, Any]:
    """The per-(backend, concurrency) numbers that go into the table, JSON and plot."""
    ok = [r for r in run.records if r.error is None]
    completion = sum(r.completion_tokens for r in ok)
    first = [r.ttft_s for r in ok if r.turn == 1 and r.ttft_s is not None]
    later = [r.ttft_s for r in ok if r.turn >= 2 and r.ttft_s is not None]
    return {
        "backend": run.backend,
        "concurrency": run.concurrency,
        "turns_ok": len(ok),
        "errors": len(run.records) - len(ok),
        "wall_s": run.wall_s,
        "completion_tokens": completion,
        "throughput_tok_s": completion / run.wall_s if run.wall_s > 0 else None,
        "completion_tokens_min": min((r.completion_tokens for r in ok), default=None),
        "completion_tokens_max": max((r.completion_tokens for r in ok), default=None),
        "ttft_turn1_p50_s": percentile(first, 50),
        "ttft_turn1_p90_s": percentile(first, 90),
        "ttft_later_p50_s": percentile(later, 50),
        "ttft_later_p90_s": percentile(later, 90),
        "ttft_p50_by_turn_s": _ttft_by_turn(ok),
        "e2e_p50_s": percentile((r.e2e_s for r in ok), 50),
        "prompt_tokens_mean": mean(r.prompt_tokens for r in ok if r.prompt_tokens is not None),
        "cached_tokens_mean": mean(r.cached_tokens for r in ok if r.cached_tokens is not None),
        "extras": run.extras,
        "turns": [asdict(r) for r in run.records],
    }


def _ttft_by_turn(records: Sequence[TurnRecord]) -> list[float | None]:
    last = max((r.turn for r in records), default=0)
    return [
        percentile((r.ttft_s for r in records if r.turn == t and r.ttft_s is not None), 50)
        for t in range(1, last + 1)
    ]


# --- reporting

_COLUMNS: tuple[tuple[str, str, str], ...] = (
    # (header, summary key, format: "s" seconds as ms, "f" one decimal, "i" integer)
    ("backend", "backend", ""),
    ("C", "concurrency", "i"),
    ("tok/s", "throughput_tok_s", "f"),
    ("ttft1 p50", "ttft_turn1_p50_s", "s"),
    ("ttft1 p90", "ttft_turn1_p90_s", "s"),
    ("ttft2+ p50", "ttft_later_p50_s", "s"),
    ("ttft2+ p90", "ttft_later_p90_s", "s"),
    ("e2e p50", "e2e_p50_s", "s"),
    ("prompt", "prompt_tokens_mean", "f"),
    ("cached", "cached_tokens_mean", "f"),
    ("gen min", "completion_tokens_min", "i"),
    ("wall s", "wall_s", "f"),
    ("errors", "errors", "i"),
)


def _cell(value: Any, kind: str) -> str:
    if value is None:
        return "-"
    if kind == "s":
        return f"{value * 1000:.0f}ms"
    if kind == "f":
        return f"{value:.1f}"
    if kind == "i":
        return str(int(value))
    return str(value)


def format_table(summaries: Sequence[dict[str, Any]]) -> str:
    """A plain-text table, one row per (backend, concurrency), numbers right-aligned."""
    header = [h for h, _, _ in _COLUMNS]
    rows = [[_cell(s[key], kind) for _, key, kind in _COLUMNS] for s in summaries]
    widths = [max(len(x) for x in column) for column in zip(header, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        first = cells[0].ljust(widths[0])
        rest = (c.rjust(w) for c, w in zip(cells[1:], widths[1:], strict=True))
        return "  ".join([first, *rest])

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def machine_info() -> dict[str, Any]:
    return {
        "platform": platform.platform(),
        "python": platform.python_version(),
        "cpu": _cpu_model() or platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": len(os.sched_getaffinity(0)),
    }


def _cpu_model() -> str | None:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return None


def write_json(path: Path, document: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(document, indent=2, ensure_ascii=False) + "\n")


def draw_png(path: Path, summaries: Sequence[dict[str, Any]], title: str) -> None:
    """Left: throughput against concurrency per backend. Right: TTFT p50 by turn
    (log scale; one colour per backend, one line style per concurrency)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    fig, (left, right) = plt.subplots(1, 2, figsize=(12, 4.8))
    levels = sorted({int(s["concurrency"]) for s in summaries}, reverse=True)
    backends = list(dict.fromkeys(s["backend"] for s in summaries))
    for colour, backend in enumerate(backends):
        runs = sorted((s for s in summaries if s["backend"] == backend), key=_by_concurrency)
        _plot_throughput(left, backend, runs, f"C{colour}")
        for run in runs:
            style = _LINE_STYLES[levels.index(run["concurrency"]) % len(_LINE_STYLES)]
            _plot_ttft(right, backend, run, f"C{colour}", style)
    left.set(xlabel="concurrent conversations", ylabel="generated tokens/s (all)")
    left.set_title("Aggregate throughput")
    left.set_xticks(levels)
    left.set_ylim(bottom=0)
    right.set(xlabel="turn", ylabel="TTFT p50 (ms, log scale)", yscale="log")
    right.set_title("Time to first token by turn")
    right.xaxis.set_major_locator(MaxNLocator(integer=True))
    for ax in (left, right):
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize="x-small", loc="best", framealpha=0.8)
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


_LINE_STYLES = ("-", "--", ":", "-.")  # largest concurrency solid


def _by_concurrency(summary: dict[str, Any]) -> int:
    return int(summary["concurrency"])


def _plot_throughput(ax: Any, backend: str, runs: Sequence[dict[str, Any]], colour: str) -> None:
    xs = [s["concurrency"] for s in runs]
    ys = [s["throughput_tok_s"] or 0.0 for s in runs]
    ax.plot(xs, ys, marker="o", color=colour, label=backend)


def _plot_ttft(ax: Any, backend: str, run: dict[str, Any], colour: str, style: str) -> None:
    by_turn = run["ttft_p50_by_turn_s"]
    xs = [t + 1 for t, v in enumerate(by_turn) if v is not None]
    ys = [v * 1000 for v in by_turn if v is not None]
    label = f"{backend} C={run['concurrency']}"
    ax.plot(xs, ys, marker="o", markersize=4, color=colour, linestyle=style, label=label)
