"""What the memory extraction job actually extracts, measured on LoCoMo sessions.

The service's own pipeline runs end to end: every sampled session is stored as
`messages` rows of one user and conversation per LoCoMo conversation, and after
every reply the real job function `memory.jobs.extract_turn` runs on it, as the
worker would (the window of the last two messages, read back from PostgreSQL),
with the service's `Extractor` (its prompt, `FACTS_SCHEMA`, answer parsing,
grounding check and add / update / no-op decision), `LongTermMemory` on
PostgreSQL + pgvector, the packaged MiniLM embedder and `EngineJSONGenerator` on
the llama.cpp engine (the packaged SmolLM2-135M, found through
`models.packaged`, or ``--model FILE.gguf``). The job is called directly rather
than through the Redis queue: nothing the queue does changes what is extracted.

Who the user is: LoCoMo has two speakers and annotates observations per
speaker; ``speaker_a`` is the user (role ``user``), ``speaker_b`` the reply
(role ``assistant``), as in scripts/bench_memory.py. The reference is
``speaker_a``'s observations of the session, with their name replaced by
"The user" (the extractor writes "The user ...").

Measured:

- observation recall: the share of observations whose most similar fact of the
  same session (cosine of MiniLM embeddings, the service's embedder) reaches
  ``--threshold``. The facts of a session are the contents of its decisions:
  added, updated, and no-ops (an equivalent fact is already stored). The
  threshold is picked on hand-checked (observation, nearest fact) pairs in the
  checks file (``--checks``): the value that agrees best with the judgements;
- precision: the share of the hand-checked stored facts judged a true statement
  about the user that the session supports (checks file, ``facts``);
- cost per session: model seconds, prompt and completion tokens, wall time.

``--sample-out FILE`` writes the pairs and facts to judge (seed-chosen) with
empty judgements; after judging them, ``--rescore RUN.json --checks FILE``
recomputes the table without running the model again. ``--guard`` also scores
what the `memory.extraction.is_about_user` guard keeps of a record's stored
facts (for a record made before the guard: precision and recall before / after
on the same judgements).

Examples (from the repository root)::

    nice -n 5 .venv/bin/python scripts/bench_extraction.py \\
        --locomo ../shared/data/locomo/locomo-dev.json --sessions 20 \\
        --json docs/results/extraction/smollm2-135m.json \\
        --checks docs/results/extraction/checks-smollm2-135m.json
    .venv/bin/python scripts/bench_extraction.py \\
        --rescore docs/results/extraction/smollm2-135m.json \\
        --checks docs/results/extraction/checks-smollm2-135m.json
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import json
import random
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import asyncpg
import numpy as np
from bench_memory import create_user

from inference.embedder import SentenceEmbedder
from inference.engine import Engine
from inference.engines.llamacpp import LlamaCppConfig, LlamaCppEngine
from inference.types import Finished, GenerationRequest, StreamEvent
from memory.config import DatabaseConfig
from memory.consolidation import Consolidator
from memory.db import create_pool
from memory.embedded import EmbeddedPostgres
from memory.extraction import Extractor, is_about_user
from memory.jobs import JobContext, JobsConfig, MemoryJobDeps, extract_turn
from memory.longterm import LongTermMemory
from memory.migrate import migrate_url
from models.packaged import packaged_model, packaged_path
from server.memory_jobs import EngineJSONGenerator

_SESSION = re.compile(r"session_(\d+)")
DEFAULT_THRESHOLD = 0.83  # from the hand-checked pairs (docs/memory.md, "Extraction, measured")


@dataclass
class Usage:
    """Model time and tokens, summed over the requests that went through `MeteredEngine`."""

    calls: int = 0
    model_s: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0


class MeteredEngine:
    """The engine as is, with each request's time and tokens added to ``usage``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self.usage = Usage()

    async def generate(self, request: GenerationRequest) -> AsyncGenerator[StreamEvent, None]:
        started = time.perf_counter()
        try:
            async for event in self._engine.generate(request):
                if isinstance(event, Finished):
                    self.usage.prompt_tokens += event.usage.prompt_tokens
                    self.usage.completion_tokens += event.usage.completion_tokens
                yield event
        finally:
            self.usage.calls += 1
            self.usage.model_s += time.perf_counter() - started


@dataclass
class Session:
    """One sampled LoCoMo session: its turns and the user's observations."""

    conversation: int  # 1-based, in the file's order
    number: int
    when: datetime | None
    speaker_a: str
    turns: list[dict[str, Any]]
    observations: list[str]


@dataclass
class SessionRun:
    session: Session
    windows: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0
    usage: Usage = field(default_factory=Usage)


def parse_date(text: Any) -> datetime | None:
    """LoCoMo dates look like "1:56 pm on 8 May, 2023"; anything else is None."""
    for pattern in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y"):
        try:
            return datetime.strptime(str(text).strip(), pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def turn_text(turn: dict[str, Any]) -> str:
    """The turn as the chat saw it: its text, plus the caption of a shared photo."""
    text = str(turn.get("text", ""))
    caption = turn.get("blip_caption")
    return f"{text} [shares a photo: {caption}]" if caption else text


def as_user(observation: str, name: str) -> str:
    """The observation as the extractor would word it: the speaker's name is "The user"."""
    text = re.sub(rf"\b{re.escape(name)}'s\b", "the user's", observation)
    text = re.sub(rf"\b{re.escape(name)}\b", "the user", text)
    return text[0].upper() + text[1:] if text else text


def all_sessions(samples: list[dict[str, Any]], conversations: Sequence[int]) -> list[Session]:
    """Every session of the chosen conversations that has observations of speaker_a."""
    found = []
    for number in conversations:
        sample = samples[number - 1]
        conversation, observed = sample["conversation"], sample.get("observation", {})
        name = str(conversation.get("speaker_a", ""))
        for key, turns in conversation.items():
            match = _SESSION.fullmatch(key)
            notes = observed.get(f"{key}_observation", {}).get(name, [])
            if not (match and isinstance(turns, list) and turns and notes):
                continue
            observations = [as_user(str(n[0]), name) for n in notes]
            when = parse_date(conversation.get(f"{key}_date_time"))
            found.append(Session(number, int(match[1]), when, name, turns, observations))
    return found


def choose(sessions: list[Session], count: int, seed: int) -> list[Session]:
    """``count`` sessions drawn with ``seed``, in conversation and session order."""
    drawn = random.Random(seed).sample(sessions, min(count, len(sessions)))
    return sorted(drawn, key=lambda s: (s.conversation, s.number))


async def store_session(
    pool: asyncpg.Pool, ids: tuple[uuid.UUID, uuid.UUID], session: Session
) -> list[tuple[int, str, str]]:
    """The session's turns as messages of the user: (id, role, text) in order."""
    roles = [
        "user" if t.get("speaker") == session.speaker_a else "assistant" for t in session.turns
    ]
    texts = [turn_text(t) for t in session.turns]
    rows = await pool.fetch(
        "INSERT INTO messages (conversation_id, user_id, role, content, created_at) "
        "SELECT $1, $2, r, c, coalesce($5, now()) FROM unnest($3::text[], $4::text[]) "
        "WITH ORDINALITY AS u(r, c, n) ORDER BY n RETURNING id",
        ids[1],
        ids[0],
        roles,
        texts,
        session.when,
    )
    return [(int(r["id"]), role, text) for r, role, text in zip(rows, roles, texts, strict=True)]


def trigger_points(messages: list[tuple[int, str, str]]) -> list[int]:
    """Indexes after which the service runs extraction: every reply, and a last
    message of the user's that got none in the session."""
    points = [i for i, (_, role, _) in enumerate(messages) if role == "assistant"]
    if messages and messages[-1][1] == "user":
        points.append(len(messages) - 1)
    return points


async def run_session(
    ctx: JobContext,
    metered: MeteredEngine,
    ids: tuple[uuid.UUID, uuid.UUID],
    session: Session,
) -> SessionRun:
    """Store the session and run the extraction job after every reply."""
    pool = ctx["deps"].pool
    messages = await store_session(pool, ids, session)
    run, before = SessionRun(session), Usage(**vars(metered.usage))
    started = time.perf_counter()
    for index in trigger_points(messages):
        result = await extract_turn(
            ctx,
            user_id=str(ids[0]),
            conversation_id=str(ids[1]),
            last_message_id=messages[index][0],
            messages=2,
        )
        window = "\n".join(
            f"{role}: {text}" for _, role, text in messages[max(0, index - 1) : index + 1]
        )
        run.windows.append({"window": window, **result})
    run.wall_s = time.perf_counter() - started
    after = metered.usage
    run.usage = Usage(
        after.calls - before.calls,
        after.model_s - before.model_s,
        after.prompt_tokens - before.prompt_tokens,
        after.completion_tokens - before.completion_tokens,
    )
    return run


def open_engine(model: Path | None, threads: int) -> tuple[LlamaCppEngine, str]:
    """The llama.cpp engine on ``model`` (default: the packaged chat model)."""
    path = model or packaged_path("chat")
    model_id = packaged_model("chat").id if model is None else path.stem
    config = LlamaCppConfig(
        model_path=path, model_id=model_id, n_ctx=4096, n_slots=1, n_threads=threads, nice=0
    )
    return LlamaCppEngine(config), model_id


async def extract_all(args: argparse.Namespace, url: str, chosen: list[Session]) -> dict[str, Any]:
    """Run the extraction over ``chosen``; the raw record of every window and decision."""
    await migrate_url(url)
    embedder = SentenceEmbedder()
    await embedder.warm_up()
    engine, model_id = open_engine(args.model, args.threads)
    await engine.start()
    pool = await create_pool(DatabaseConfig(pool_min=1, pool_max=4), url)
    store = LongTermMemory(pool, embedder)
    metered = MeteredEngine(engine)
    generator = EngineJSONGenerator(metered)  # type: ignore[arg-type]  # generate is all it uses
    deps = MemoryJobDeps(
        pool,
        Extractor(pool, store, embedder, generator),
        Consolidator(pool, store, generator),
        JobsConfig(),
    )
    ctx = cast(JobContext, {"deps": deps})  # extract_turn reads only the deps
    runs, users = [], {}
    try:
        for session in chosen:
            if session.conversation not in users:
                users[session.conversation] = await create_user(
                    pool, f"locomo-{session.conversation}"
                )
            run = await run_session(ctx, metered, users[session.conversation], session)
            runs.append(run)
            print(
                f"conv {session.conversation} session {session.number}: "
                f"{len(run.windows)} windows, {run.wall_s:.0f} s",
                flush=True,
            )
        record = {"model": model_id, "runs": [_run_record(r) for r in runs]}
        await add_similarities(record, embedder)
    finally:
        await store.close()
        await pool.close()
        await engine.close()
        embedder.close()
    return record


def _run_record(run: SessionRun) -> dict[str, Any]:
    s = run.session
    return {
        "conversation": s.conversation,
        "session": s.number,
        "observations": s.observations,
        "windows": run.windows,
        "wall_s": round(run.wall_s, 2),
        "usage": vars(run.usage),
    }


def session_facts(run: dict[str, Any]) -> list[str]:
    """The facts the store holds for the session: every decision's content."""
    return [d["content"] for w in run["windows"] for d in w.get("decisions", [])]


def stored_facts(run: dict[str, Any]) -> list[dict[str, Any]]:
    """The facts written (added or updated), each with the window it came from."""
    return [
        {"fact": d["content"], "window": w["window"]}
        for w in run["windows"]
        for d in w.get("decisions", [])
        if d["action"] in ("add", "update")
    ]


async def add_similarities(record: dict[str, Any], embedder: SentenceEmbedder) -> None:
    """Each observation's nearest fact of its session and their cosine (MiniLM)."""
    for run in record["runs"]:
        facts = sorted(set(session_facts(run)))
        nearest = []
        if facts:
            obs = np.asarray(await embedder.embed(run["observations"]))
            vecs = np.asarray(await embedder.embed(facts))
            sims = obs @ vecs.T
            for i, observation in enumerate(run["observations"]):
                j = int(np.argmax(sims[i]))
                nearest.append(
                    {"observation": observation, "fact": facts[j], "similarity": float(sims[i, j])}
                )
        else:
            nearest = [
                {"observation": o, "fact": None, "similarity": 0.0} for o in run["observations"]
            ]
        run["nearest"] = nearest


def pick_threshold(pairs: list[dict[str, Any]]) -> float | None:
    """The similarity cut that agrees best with the judged pairs (midpoint between the
    two similarities it falls between; ties go to the higher cut)."""
    judged = sorted(
        (p["similarity"], bool(p["match"])) for p in pairs if p.get("match") is not None
    )
    if not judged:
        return None
    cuts = [0.0] + [(a[0] + b[0]) / 2 for a, b in itertools.pairwise(judged)] + [1.0]
    best = max(cuts, key=lambda t: (sum((s >= t) == m for s, m in judged), t))
    return round(float(best), 3)


def sample_to_check(record: dict[str, Any], pairs: int, facts: int, seed: int) -> dict[str, Any]:
    """Pairs spread evenly over the similarity range, plus every pair at 0.4 or more
    (where a threshold would fall), and stored facts, to judge by hand."""
    nearest = [n for r in record["runs"] for n in r["nearest"] if n["fact"] is not None]
    nearest.sort(key=lambda n: n["similarity"])
    count = len(nearest)
    spread = {round(i * (count - 1) / max(1, pairs - 1)) for i in range(pairs)} if count else set()
    spread |= {i for i, n in enumerate(nearest) if n["similarity"] >= 0.4}
    chosen_pairs = [{**nearest[i], "source": "model"} for i in sorted(spread)]
    stored = [f for r in record["runs"] for f in stored_facts(r)]
    chosen_facts = random.Random(seed).sample(stored, min(facts, len(stored)))
    return {
        "model": record["model"],
        "how": (
            "pairs: match = the fact states the observation's main point about the user; "
            "facts: supported = a true statement about the user (speaker_a) that the window "
            "says or plainly implies"
        ),
        "pairs": [{**p, "match": None} for p in chosen_pairs],
        "facts": [{**f, "supported": None, "note": ""} for f in chosen_facts],
    }


def score(
    record: dict[str, Any], checks: dict[str, Any] | None, threshold: float, guard: bool
) -> dict[str, Any]:
    """The table's numbers from a raw record and (optionally) the hand checks."""
    runs = record["runs"]
    picked = pick_threshold(checks["pairs"]) if checks else None
    used = picked if picked is not None else threshold
    observations = [n for r in runs for n in r["nearest"]]
    windows = [w for r in runs for w in r["windows"]]
    stored = [f for r in runs for f in stored_facts(r)]
    usage = [r["usage"] for r in runs]
    summary: dict[str, Any] = {
        "model": record["model"],
        "sessions": len(runs),
        "windows": len(windows),
        "observations": len(observations),
        "threshold": used,
        "threshold_from_checks": picked is not None,
        "recall": _share(n["similarity"] >= used for n in observations),
        "facts_stored": len(stored),
        "facts_per_session": len(stored) / max(1, len(runs)),
        "status": {s: sum(w["status"] == s for w in windows) for s in _statuses(windows)},
        "dropped_ungrounded": sum(len(w.get("dropped", [])) for w in windows),
        "model_s_per_session": _mean(u["model_s"] for u in usage),
        "prompt_tokens_per_session": _mean(u["prompt_tokens"] for u in usage),
        "completion_tokens_per_session": _mean(u["completion_tokens"] for u in usage),
        "wall_s_per_session": _mean(r["wall_s"] for r in runs),
    }
    if checks:
        summary.update(_precision(checks, guard))
        summary["pairs_checked"] = sum(p.get("match") is not None for p in checks["pairs"])
    if guard:
        summary.update(_guarded_recall(record, used))
    return summary


def _precision(checks: dict[str, Any], guard: bool) -> dict[str, Any]:
    judged = [f for f in checks["facts"] if f.get("supported") is not None]
    out: dict[str, Any] = {
        "facts_checked": len(judged),
        "precision": _share(f["supported"] for f in judged),
    }
    if guard:
        kept = [f for f in judged if is_about_user(f["fact"])]
        out["facts_checked_kept"] = len(kept)
        out["precision_guarded"] = _share(f["supported"] for f in kept) if kept else None
        out["wrong_dropped"] = sum(not f["supported"] for f in judged if f not in kept)
        out["right_dropped"] = sum(f["supported"] for f in judged if f not in kept)
    return out


def _guarded_recall(record: dict[str, Any], threshold: float) -> dict[str, Any]:
    """Recall when the guard's rejects are left out (their nearest-fact match is lost)."""
    hits = total = 0
    for run in record["runs"]:
        kept = {
            d["content"]
            for w in run["windows"]
            for d in w.get("decisions", [])
            if is_about_user(d["content"])
        }
        for n in run["nearest"]:
            total += 1
            hits += n["fact"] in kept and n["similarity"] >= threshold
    return {"recall_guarded_lower_bound": hits / total if total else 0.0}


def _statuses(windows: list[dict[str, Any]]) -> list[str]:
    return sorted({str(w["status"]) for w in windows})


def _share(flags: Any) -> float:
    values = [bool(f) for f in flags]
    return sum(values) / len(values) if values else 0.0


def _mean(values: Any) -> float:
    items = list(values)
    return statistics.fmean(items) if items else 0.0


def print_table(s: dict[str, Any]) -> None:
    rows = [
        ("model", s["model"]),
        ("sessions / windows", f"{s['sessions']} / {s['windows']}"),
        ("window status", ", ".join(f"{k} {v}" for k, v in s["status"].items())),
        ("facts stored (per session)", f"{s['facts_stored']} ({s['facts_per_session']:.1f})"),
        ("facts dropped as ungrounded", s["dropped_ungrounded"]),
        (
            f"observation recall (cos >= {s['threshold']:.2f})",
            f"{s['recall']:.3f} of {s['observations']}",
        ),
    ]
    if "precision" in s:
        rows.append(("precision (hand-checked)", f"{s['precision']:.3f} of {s['facts_checked']}"))
    if "precision_guarded" in s:
        kept = s["precision_guarded"]
        value = "n/a: no fact kept" if kept is None else f"{kept:.3f}"
        dropped = f"drops {s['wrong_dropped']} wrong, {s['right_dropped']} right"
        rows.append(
            (
                "precision with the is_about_user guard",
                f"{value} of {s['facts_checked_kept']} ({dropped})",
            )
        )
        guarded_recall = f"{s['recall_guarded_lower_bound']:.3f}"
        rows.append(("recall with the guard (lower bound)", guarded_recall))
    rows += [
        ("model s / session", f"{s['model_s_per_session']:.1f}"),
        (
            "tokens / session (prompt + completion)",
            f"{s['prompt_tokens_per_session']:.0f} + {s['completion_tokens_per_session']:.0f}",
        ),
        ("wall s / session", f"{s['wall_s_per_session']:.1f}"),
    ]
    width = max(len(r[0]) for r in rows)
    for name, value in rows:
        print(f"{name:<{width}}  {value}")


def conversations_arg(text: str) -> list[int]:
    """ "1-5" or "1,3": 1-based conversation numbers."""
    numbers: set[int] = set()
    for part in text.split(","):
        low, _, high = part.partition("-")
        numbers.update(range(int(low), int(high or low) + 1))
    return sorted(numbers)


def measure(args: argparse.Namespace) -> dict[str, Any]:
    samples = json.loads(Path(args.locomo).read_text(encoding="utf-8"))
    chosen = choose(all_sessions(samples, args.conversations), args.sessions, args.seed)
    print("sessions:", ", ".join(f"{s.conversation}:{s.number}" for s in chosen), flush=True)
    if args.database_url:
        record = asyncio.run(extract_all(args, args.database_url, chosen))
    else:
        with tempfile.TemporaryDirectory(prefix="cmpx-", dir="/tmp") as directory:
            server = EmbeddedPostgres(Path(directory))
            try:
                record = asyncio.run(extract_all(args, server.start(), chosen))
            finally:
                server.stop()
    record["command"] = {
        "sessions": args.sessions,
        "conversations": args.conversations,
        "seed": args.seed,
        "model": str(args.model) if args.model else "packaged",
    }
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--locomo", help="a LoCoMo-format JSON file (to run the model)")
    parser.add_argument("--rescore", help="a raw record written by --json: score it again")
    parser.add_argument("--json", help="write the raw record and the summary here")
    parser.add_argument("--checks", help="hand checks (pairs and facts), JSON")
    parser.add_argument("--sample-out", help="write pairs and facts to judge here")
    parser.add_argument("--sessions", type=int, default=20, help="sessions drawn (default 20)")
    parser.add_argument(
        "--conversations", type=conversations_arg, default=[1, 2, 3, 4, 5], help='e.g. "1-5"'
    )
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--model", type=Path, help="a GGUF to run instead of the packaged model")
    parser.add_argument("--threads", type=int, default=2, help="llama.cpp threads")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument(
        "--guard", action="store_true", help="also score what is_about_user keeps of the record"
    )
    parser.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one")
    args = parser.parse_args()
    if args.rescore:
        record = json.loads(Path(args.rescore).read_text(encoding="utf-8"))["record"]
    elif args.locomo:
        record = measure(args)
    else:
        parser.error("give --locomo (run the model) or --rescore RECORD")
    checks = json.loads(Path(args.checks).read_text(encoding="utf-8")) if args.checks else None
    summary = score(record, checks, args.threshold, args.guard)
    print_table(summary)
    if args.sample_out:
        sample = sample_to_check(record, pairs=40, facts=50, seed=args.seed)
        Path(args.sample_out).write_text(json.dumps(sample, indent=2) + "\n", encoding="utf-8")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        out = {"summary": summary, "record": record}
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
