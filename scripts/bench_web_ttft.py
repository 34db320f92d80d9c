#!/usr/bin/env python3
"""Time to first token as a user of the web chat sees it, with the memory worker on.

    .venv/bin/python scripts/bench_web_ttft.py [--engine llamacpp|vllm|auto]
        [--long-chars 8000] [--json PATH] [--base-url URL]

Starts `companion serve` on a fresh data dir with its defaults (the packaged
model, the embedded databases, memory jobs in process: what a user runs), or
uses ``--base-url``. Then, in headless Chromium (/usr/bin/chromium, as the web
UI tests), a new user signs up and sends the messages below one after another
in one conversation, each once the previous reply is done, the way a person
chats. For each it records, in the page: from pressing Enter to the first
token shown (what the user waits for) and to the reply done, the chat
engine's load as the message left (``GET /api/v1/models``: running, waiting,
and how many of them were background memory jobs), the engine's own time to
first token (the status panel's figure from the turn's ``done`` event; the rest
of the wait is the turn's preparation: classifiers, retrieval, prompt), and
the stored reply's route and model.

The last message is long (``--long-chars``, default 8000, the message limit),
as in the walk-through that found 35 s before its first token.

Prints a table; ``--json`` writes the rows with the machine's description.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_client import COMPANION, free_port, serving, without_databases
from bench_report import machine_info, write_json

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = Path("/usr/bin/chromium")
MESSAGES = (
    "Hi! My name is Alice. I just adopted a cat called Miso.",
    "I work as a nurse, mostly night shifts. Do you remember my cat's name?",
    "Work was rough today: two admissions at 3 am and no break until six.",
    "My sister Jo is visiting next weekend; we want to cook something together.",
    "Any ideas for a quiet Sunday? I would like to read and maybe walk by the river.",
)
LONG_TOPIC = (
    "Let me tell you about my week in detail, since you asked me to keep a journal. "
    "On Monday I slept badly after the night shift and fed Miso too late. "
)


@contextmanager
def local_server(data_dir: Path, engine: str) -> Iterator[str]:
    """``companion serve`` on ``data_dir`` with ``engine``; its base URL until the block ends."""
    env = without_databases(os.environ) | {
        "COMPANION_DATA_DIR": str(data_dir),
        "COMPANION_CHAT_ENGINE": engine,
        "COMPANION_LOG_LEVEL": "warning",
        "COMPANION_RATE_LIMITS": "false",
    }
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    command = [*COMPANION, "serve", "--port", str(port)]
    log = data_dir / "serve.log"
    # auto measures both engines on a first start
    with serving(command, env, f"{base}/health/ready", log, timeout_s=1200, cwd=ROOT):
        yield base


# Runs in the page: send one message, resolve with the times the user sees.
_SEND = """async (text) => {
  const list = document.getElementById('messages');
  const replies = () => list.querySelectorAll('.message.assistant');
  const before = replies().length;
  const box = document.getElementById('composer-input');
  box.value = text;
  const started = performance.now();
  document.getElementById('send').click();
  return await new Promise((resolve) => {
    let first = null;
    const check = () => {
      const all = replies();
      if (all.length <= before) return;
      const reply = all[all.length - 1];
      const text = reply.querySelector('.text').textContent;
      if (first === null && text.length > 0) first = performance.now() - started;
      if (reply.matches('.done, .failed, .stopped')) {
        observer.disconnect();
        resolve({ first_token_ms: first, done_ms: performance.now() - started,
                  ended: reply.className, chars: text.length });
      }
    };
    const observer = new MutationObserver(check);
    observer.observe(list, { subtree: true, childList: true, characterData: true,
                             attributes: true, attributeFilter: ['class'] });
  });
}"""


def run(base: str, messages: list[str]) -> list[dict[str, Any]]:
    from playwright.sync_api import sync_playwright

    username, password = f"bench{uuid.uuid4().hex[:8]}", "a long enough secret"
    rows = []
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), args=["--headless", "--no-sandbox", "--disable-gpu"]
        )
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.set_default_timeout(600_000)
        page.goto(base + "/")
        page.get_by_label("Username", exact=True).fill(username)
        page.get_by_label("Password", exact=True).fill(password)
        page.get_by_role("button", name="Sign up").click()
        page.wait_for_selector("#who:has-text('Signed in')")
        token = page.evaluate("sessionStorage.getItem('companion.token')")
        api = httpx.Client(
            base_url=base + "/api/v1", headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        for number, text in enumerate(messages, start=1):
            load = api.get("/models").json().get("engine") or {}
            seen = page.evaluate(_SEND, text)
            # the status panel's line for the last reply: "<page> (engine <engine>)"
            engine_ttft = page.locator("#stat-ttft").text_content() or ""
            conversation = api.get("/conversations").json()[0]["id"]
            stored = api.get(f"/conversations/{conversation}/messages", params={"limit": 1})
            metadata = stored.json()[-1].get("metadata", {})
            rows.append(
                {
                    "turn": number,
                    "message_chars": len(text),
                    "first_token_s": None
                    if seen["first_token_ms"] is None
                    else round(seen["first_token_ms"] / 1000, 3),
                    "done_s": round(seen["done_ms"] / 1000, 3),
                    "engine_ttft": engine_ttft.partition("(engine ")[2].rstrip(")") or None,
                    "ended": seen["ended"],
                    "running_at_send": load.get("running"),
                    "waiting_at_send": load.get("waiting"),
                    "background_at_send": load.get("background"),
                    "route": metadata.get("route"),
                    "model": metadata.get("model"),
                }
            )
            print_row(rows[-1])
        browser.close()
    return rows


HEADER = (
    f"{'turn':>4} {'chars':>6} {'first token':>12} {'engine ttft':>12} {'done':>8}"
    f" {'load at send':>22}"
)


def print_row(row: dict[str, Any]) -> None:
    first = "-" if row["first_token_s"] is None else f"{row['first_token_s']:.2f} s"
    load = (
        f"{row['running_at_send']} run, {row['waiting_at_send']} wait,"
        f" {row['background_at_send']} bg"
    )
    done = f"{row['done_s']:.2f} s"
    engine = row["engine_ttft"] or "-"
    print(
        f"{row['turn']:>4} {row['message_chars']:>6} {first:>12} {engine:>12} {done:>8} {load:>22}",
        flush=True,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--engine", default="llamacpp", help="COMPANION_CHAT_ENGINE to start with")
    parser.add_argument("--base-url", help="a running server instead of starting one")
    parser.add_argument("--long-chars", type=int, default=8000)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    long_message = (LONG_TOPIC * (args.long_chars // len(LONG_TOPIC) + 1))[: args.long_chars]
    messages = [*MESSAGES, long_message.strip()]
    print(HEADER)
    if args.base_url:
        rows = run(args.base_url.rstrip("/"), messages)
        engine = "(running server)"
    else:
        with (
            tempfile.TemporaryDirectory(prefix="cmp-ttft-") as directory,
            local_server(Path(directory), args.engine) as base,
        ):
            rows = run(base, messages)
        engine = args.engine
    if args.json:
        write_json(args.json, {"machine": machine_info(), "engine": engine, "turns": rows})


if __name__ == "__main__":
    main()
