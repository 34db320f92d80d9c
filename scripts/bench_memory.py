"""Recall of long-term memory retrieval on LoCoMo-format conversations.

Each conversation is ingested through the real memory pipeline: one user and
one conversation row per LoCoMo conversation, every dialog turn a `messages`
row (with its session's date), and episodic memories cut from the turns by
`memory.episodes.cut_episodes` and stored with `LongTermMemory.add` (embedded
by the packaged MiniLM through `SentenceEmbedder.embed`), each episode with
the one before it in its session as context (`LongTermMemory.add`'s
``context``). Both speakers' turns belong to that user's memory.
``--no-context`` and ``--feedback-top 0`` measure the retrieval without the
episode context and without the second hop (docs/memory.md, "Second round");
``--query-adapter FILE`` retrieves with a learned query adapter (off by
default; docs/memory.md, "Fourth round").

Then every question of categories 1-4 is asked with `LongTermMemory.retrieve`
and scored by provenance: recall@k is the share of the question's evidence
turns ("D<session>:<turn>") that the top k memories' ``source_message_ids``
cover, averaged over questions. k counts memories (an episode holds a few
turns). Also reported: tokens@10 (mean estimated tokens of the ten retrieved
memories together) and retrieval latency (embedding included).

``--ceiling 20,30,50`` also reports, per category, the best recall@10 that
any choice of ten memories among the top N of ``retrieve(k=max N)`` could
reach (up to N = 50 that is the ranking of the usual 100 candidates per
list; a deeper one fetches 2N): how much a better ordering of today's
candidates could still give, as against finding new ones. It is a greedy
cover of the evidence turns, exact for a question with at most ten evidence
turns (each pick adds at least one turn until all that the top N hold are
covered); the dev set has at most nine.

Examples (from the repository root)::

    .venv/bin/python scripts/bench_memory.py --locomo ../shared/data/locomo/locomo-dev.json
    .venv/bin/python scripts/bench_memory.py --locomo FILE --json artifacts/bench_memory.json \\
        --database-url postgresql://localhost/bench
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import re
import statistics
import tempfile
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import asyncpg

from inference.embedder import SentenceEmbedder
from memory.config import DatabaseConfig
from memory.db import create_pool
from memory.embedded import EmbeddedPostgres
from memory.episodes import DEFAULT_EPISODE_TOKENS, Turn, cut_episodes
from memory.longterm import LongTermMemory, RetrievalConfig
from memory.migrate import migrate_url
from memory.ranking import RankingConfig, estimate_tokens
from memory.relevance import QueryAdapter

CATEGORIES = {1: "multi-hop", 2: "temporal", 3: "open-domain", 4: "single-hop"}
# Lenient on purpose: the data has entries like "D8:6; D9:17" and "D:11:26".
_EVIDENCE = re.compile(r"D:?(\d+):(\d+)")
_SESSION = re.compile(r"session_(\d+)")
_NO_BUDGET = 1_000_000  # measure k alone; tokens@10 reports the size


@dataclass
class Question:
    text: str
    category: int
    evidence: set[int]  # message ids


@dataclass
class Result:
    category: int
    covered: dict[int, float]  # k -> recall
    ceiling: dict[int, float]  # N -> best recall of ten memories among the top N
    tokens10: int
    latency_s: float


@dataclass
class Report:
    results: list[Result] = field(default_factory=list)
    skipped: int = 0  # questions without a usable evidence id


def parse_date(text: Any) -> datetime | None:
    """LoCoMo session dates look like "1:56 pm on 8 May, 2023"; anything else is None."""
    if not isinstance(text, str):
        return None
    for pattern in ("%I:%M %p on %d %B, %Y", "%I:%M %p on %d %b, %Y", "%d %B, %Y"):
        try:
            return datetime.strptime(text.strip(), pattern).replace(tzinfo=UTC)
        except ValueError:
            continue
    return None


def sessions(conversation: dict[str, Any]) -> list[tuple[datetime | None, list[dict[str, Any]]]]:
    """The sessions in order, each with its date and turns."""
    found = []
    for key, turns in conversation.items():
        match = _SESSION.fullmatch(key)
        if match and isinstance(turns, list):
            when = parse_date(conversation.get(f"{key}_date_time"))
            found.append((int(match[1]), when, turns))
    return [(when, turns) for _, when, turns in sorted(found, key=lambda s: s[0])]


def turn_text(turn: dict[str, Any]) -> str:
    """The turn as the chat saw it: its text, plus the caption of a shared photo."""
    text = str(turn.get("text", ""))
    caption = turn.get("blip_caption")
    return f"{text} [shares a photo: {caption}]" if caption else text


def evidence_ids(entries: Any, dia_to_message: dict[str, int]) -> set[int]:
    """Message ids of the evidence turns that parse and exist; malformed ones are dropped."""
    ids = set()
    for entry in entries if isinstance(entries, list) else []:
        for session, turn in _EVIDENCE.findall(str(entry)):
            message_id = dia_to_message.get(f"D{int(session)}:{int(turn)}")
            if message_id is not None:
                ids.add(message_id)
    return ids


async def create_user(
    conn: asyncpg.Connection | asyncpg.Pool, name: str
) -> tuple[uuid.UUID, uuid.UUID]:
    """A user and a conversation of theirs, named ``name`` (a suffix keeps names unique)."""
    user_id = await conn.fetchval(
        "INSERT INTO users (username) VALUES ($1) RETURNING id", f"{name}-{uuid.uuid4().hex[:8]}"
    )
    conversation_id = await conn.fetchval(
        "INSERT INTO conversations (user_id, title) VALUES ($1, $2) RETURNING id", user_id, name
    )
    return user_id, conversation_id


async def insert_messages(
    conn: asyncpg.Connection,
    ids: tuple[uuid.UUID, uuid.UUID],
    speaker_a: str,
    turns: list[tuple[datetime | None, dict[str, Any]]],
) -> dict[str, int]:
    """Store every turn as a message; return dia_id -> message id."""
    user_id, conversation_id = ids
    rows = await conn.fetch(
        "INSERT INTO messages (conversation_id, user_id, role, content, metadata, created_at) "
        "SELECT $1, $2, r, c, m::jsonb, coalesce(t, now()) "
        "FROM unnest($3::text[], $4::text[], $5::text[], $6::timestamptz[]) AS u(r, c, m, t) "
        "RETURNING id, metadata->>'dia_id' AS dia_id",
        conversation_id,
        user_id,
        ["user" if turn.get("speaker") == speaker_a else "assistant" for _, turn in turns],
        [turn_text(turn) for _, turn in turns],
        [json.dumps({"dia_id": t.get("dia_id"), "speaker": t.get("speaker")}) for _, t in turns],
        [when for when, _ in turns],
    )
    return {row["dia_id"]: row["id"] for row in rows if row["dia_id"]}


async def ingest(
    store: LongTermMemory,
    pool: asyncpg.Pool,
    sample: dict[str, Any],
    episode_tokens: int,
    use_context: bool = True,
) -> tuple[uuid.UUID, dict[str, int], int]:
    """One LoCoMo conversation into one user's memory; returns user, dia map, memory count."""
    conversation = sample["conversation"]
    flat = [(when, turn) for when, turns in sessions(conversation) for turn in turns]
    async with pool.acquire() as conn:
        ids = await create_user(conn, str(sample.get("sample_id", "locomo")))
        dia_map = await insert_messages(conn, ids, conversation.get("speaker_a", ""), flat)
    episodes = []
    for when, turns in sessions(conversation):
        session = [
            Turn(dia_map[t["dia_id"]], str(t.get("speaker", "")), turn_text(t))
            for t in turns
            if t.get("dia_id") in dia_map
        ]
        episodes.extend(cut_episodes(session, when, episode_tokens))
    await asyncio.gather(
        *(
            store.add(
                ids[0],
                "episodic",
                e.content,
                0.5,
                e.source_message_ids,
                ids[1],
                occurred_at=e.occurred_at,
                context=e.context if use_context else None,
            )
            for e in episodes
        )
    )
    return ids[0], dia_map, len(episodes)


async def evaluate(
    store: LongTermMemory,
    user_id: uuid.UUID,
    questions: Sequence[Question],
    ks: Sequence[int],
    report: Report,
    ceilings: Sequence[int] = (),
) -> None:
    """Ask every question; record recall at each k from one top-max(k) retrieval.

    The ceilings come from a second, deeper retrieval, untimed: `retrieve`
    fetches max(100, 2k) candidates per list, so a deeper one may rank its
    first k differently, and must not change the recall figures.
    """
    for question in questions:
        started = time.perf_counter()
        found = await store.retrieve(user_id, question.text, k=max(ks), token_budget=_NO_BUDGET)
        latency = time.perf_counter() - started
        covered = {}
        for k in ks:
            turns = {i for memory in found[:k] for i in memory.source_message_ids}
            covered[k] = len(turns & question.evidence) / len(question.evidence)
        ceiling = {}
        if ceilings:
            deep = await store.retrieve(
                user_id, question.text, k=max(ceilings), token_budget=_NO_BUDGET
            )
            sources = [set(m.source_message_ids) for m in deep]
            ceiling = {n: best_cover(sources[:n], question.evidence, 10) for n in ceilings}
        tokens = sum(estimate_tokens(m.content) for m in found[:10])
        report.results.append(Result(question.category, covered, ceiling, tokens, latency))


def best_cover(sources: Sequence[set[int]], evidence: set[int], k: int) -> float:
    """Recall of the ``k`` memories among ``sources`` that cover most evidence (greedy)."""
    covered: set[int] = set()
    left = list(sources)
    for _ in range(k):
        best = max(left, key=lambda turns: len((turns & evidence) - covered), default=None)
        if best is None or not (best & evidence) - covered:
            break
        covered |= best & evidence
        left.remove(best)
    return len(covered) / len(evidence)


def questions_of(sample: dict[str, Any], dia_map: dict[str, int], report: Report) -> list[Question]:
    chosen = []
    for qa in sample.get("qa", []):
        category = qa.get("category")
        if category not in CATEGORIES or not isinstance(qa.get("question"), str):
            continue
        evidence = evidence_ids(qa.get("evidence"), dia_map)
        if not evidence:
            report.skipped += 1
            continue
        chosen.append(Question(qa["question"], category, evidence))
    return chosen


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def summarize(report: Report, ks: Sequence[int], ceilings: Sequence[int] = ()) -> dict[str, Any]:
    results = report.results
    by_category: dict[int, list[Result]] = defaultdict(list)
    for result in results:
        by_category[result.category].append(result)
    summary: dict[str, Any] = {f"recall@{k}": _mean(r.covered[k] for r in results) for k in ks}
    for n in ceilings:
        summary[f"best10_of_top{n}"] = _mean(r.ceiling[n] for r in results)
    summary["tokens@10"] = _mean(r.tokens10 for r in results)
    summary["per_category"] = {
        CATEGORIES[c]: {
            "questions": len(rs),
            **{f"recall@{k}": _mean(r.covered[k] for r in rs) for k in ks},
            **{f"best10_of_top{n}": _mean(r.ceiling[n] for r in rs) for n in ceilings},
        }
        for c, rs in sorted(by_category.items())
    }
    summary["questions"] = len(results)
    summary["skipped_no_evidence"] = report.skipped
    latencies = [r.latency_s * 1000 for r in results]
    summary["latency_ms"] = {"p50": percentile(latencies, 0.5), "p95": percentile(latencies, 0.95)}
    return summary


def _mean(values: Any) -> float:
    items = list(values)
    return statistics.fmean(items) if items else 0.0


def print_table(summary: dict[str, Any], ks: Sequence[int], ceilings: Sequence[int] = ()) -> None:
    header = f"{'category':<12} {'questions':>9} " + " ".join(f"{'R@' + str(k):>6}" for k in ks)
    header += "".join(f" {'best10/' + str(n):>10}" for n in ceilings)
    print(header)
    print("-" * len(header))
    rows = [*summary["per_category"].items(), ("all", summary)]
    for name, row in rows:
        cells = " ".join(f"{row[f'recall@{k}']:>6.3f}" for k in ks)
        cells += "".join(f" {row[f'best10_of_top{n}']:>10.3f}" for n in ceilings)
        print(f"{name:<12} {row['questions']:>9} {cells}")
    latency = summary["latency_ms"]
    print(
        f"\ntokens@10 {summary['tokens@10']:.0f}   latency p50 {latency['p50']:.1f} ms   "
        f"p95 {latency['p95']:.1f} ms   memories {summary['memories']}   "
        f"skipped (no usable evidence) {summary['skipped_no_evidence']}"
    )


def load_samples(path: str) -> list[dict[str, Any]]:
    """The conversations of a LoCoMo-format file (a list, or one conversation)."""
    samples = json.loads(Path(path).read_text(encoding="utf-8"))
    return samples if isinstance(samples, list) else [samples]


async def run(args: argparse.Namespace, url: str) -> dict[str, Any]:
    await migrate_url(url)
    samples = load_samples(args.locomo)
    embedder = SentenceEmbedder()
    await embedder.warm_up()
    pool = await create_pool(DatabaseConfig(pool_min=1, pool_max=8), url)
    ranking = dataclasses.replace(RankingConfig(), feedback_top=args.feedback_top)
    adapter = QueryAdapter.load(Path(args.query_adapter)) if args.query_adapter else None
    store = LongTermMemory(pool, embedder, RetrievalConfig(ranking=ranking, query_adapter=adapter))
    report, memories = Report(), 0
    try:
        for sample in samples:
            user_id, dia_map, count = await ingest(
                store, pool, sample, args.episode_tokens, not args.no_context
            )
            memories += count
            questions = questions_of(sample, dia_map, report)
            await evaluate(store, user_id, questions, args.k, report, args.ceiling)
    finally:
        await pool.close()
        embedder.close()
    return {**summarize(report, args.k, args.ceiling), "memories": memories}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--locomo", required=True, help="a LoCoMo-format JSON file")
    parser.add_argument("--json", help="write the numbers here")
    parser.add_argument("--k", default="5,10,20", help="comma-separated k values")
    parser.add_argument(
        "--episode-tokens", type=int, default=DEFAULT_EPISODE_TOKENS, help="episode size bound"
    )
    parser.add_argument(
        "--no-context",
        action="store_true",
        help="embed each episode alone, without the episode before it (the earlier design)",
    )
    parser.add_argument(
        "--feedback-top",
        type=int,
        default=RankingConfig().feedback_top,
        help="memories the second hop moves the query towards (0: one hop)",
    )
    parser.add_argument(
        "--ceiling",
        default="",
        help="comma-separated N: also the best recall of ten memories among the top N",
    )
    parser.add_argument(
        "--query-adapter",
        help="retrieve with a query adapter (an .npz from scripts/train_relevance.py fit; "
        "one trained on the dev set gives no held-out figure there)",
    )
    parser.add_argument("--database-url", help="use this PostgreSQL instead of an embedded one")
    args = parser.parse_args()
    args.k = sorted({int(k) for k in args.k.split(",")})
    args.ceiling = sorted({int(n) for n in args.ceiling.split(",") if n.strip()})
    if args.database_url:
        summary = asyncio.run(run(args, args.database_url))
    else:
        with tempfile.TemporaryDirectory(prefix="cmpb-", dir="/tmp") as directory:
            server = EmbeddedPostgres(Path(directory))
            try:
                summary = asyncio.run(run(args, server.start()))
            finally:
                server.stop()
    print_table(summary, args.k, args.ceiling)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(summary, indent=2) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
