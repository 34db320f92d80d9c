"""The web chat UI in a real headless Chromium, against `companion serve` on the tiny model.

The browser is the system's Chromium (Debian's `chromium` package at /usr/bin/chromium),
driven by Playwright; nothing is downloaded. Without that binary these tests skip on a
developer's machine, and fail in CI (where ``CI`` is set), so CI can never pass them silently.

The server overrides the `companion` persona to reply with 1500 tokens: the tiny model writes
gibberish quickly, and a long reply keeps a turn streaming long enough to watch it grow and
to stop it midway. Screenshots are kept under ``artifacts/web-ui/`` (or
``$COMPANION_ARTIFACTS_DIR``); their paths are printed.
"""

from __future__ import annotations

import asyncio
import os
import re
import tempfile
import uuid
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import numpy as np
import pytest
from support import companion_env, serving

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
REPO = Path(__file__).resolve().parents[2]
PASSWORD = "correct horse battery"
LONG_REPLY_TOKENS = 1500
WAIT_MS = 120_000  # generous: a guard against hanging, never a speed requirement

if not CHROMIUM.exists():
    if os.environ.get("CI"):
        pytest.fail(f"{CHROMIUM} is missing: install Debian's chromium (see README)", pytrace=False)
    pytest.skip(f"{CHROMIUM} is not installed", allow_module_level=True)

from playwright.sync_api import Browser, Page, expect, sync_playwright  # noqa: E402

PERSONAS = f"""
[personas.companion]
name = "Mira"
description = "A warm, curious companion who remembers what you share."
prompt = "You are Mira, a warm and curious companion."
max_tokens = {LONG_REPLY_TOKENS}
"""


@dataclass(frozen=True)
class WebServer:
    base_url: str
    data_dir: Path
    model_id: str


@pytest.fixture(scope="module")
def web_server(tiny_gguf: Path) -> Iterator[WebServer]:
    with tempfile.TemporaryDirectory(prefix="cmp-web-", dir="/tmp") as directory:
        data_dir = Path(directory)
        (data_dir / "personas.toml").write_text(PERSONAS, encoding="utf-8")
        env = companion_env(
            data_dir,
            COMPANION_CHAT_MODEL=str(tiny_gguf),
            COMPANION_CHAT_CTX="2048",
            COMPANION_CHAT_SLOTS="4",
            # keys on: the page must work with its access token alone
            COMPANION_API_KEYS_REQUIRED="true",
            # every test user signs up from 127.0.0.1: per-address limits are not under test
            COMPANION_RATE_LIMITS="false",
        )
        with serving(env, data_dir / "serve.log") as (base, _):
            yield WebServer(base, data_dir, tiny_gguf.stem)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def artifacts() -> Path:
    directory = Path(os.environ.get("COMPANION_ARTIFACTS_DIR", REPO / "artifacts")) / "web-ui"
    directory.mkdir(parents=True, exist_ok=True)
    return directory


def open_page(browser: Browser, width: int, height: int) -> tuple[Page, list[str]]:
    """A fresh context (own storage) and page; uncaught script errors are collected."""
    context = browser.new_context(viewport={"width": width, "height": height})
    page = context.new_page()
    page.set_default_timeout(WAIT_MS)
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    return page, errors


@pytest.fixture
def desktop(browser: Browser) -> Iterator[Page]:
    page, errors = open_page(browser, 1280, 800)
    yield page
    page.context.close()
    assert errors == [], "uncaught errors in the page"


@pytest.fixture
def phone(browser: Browser) -> Iterator[Page]:
    page, errors = open_page(browser, 375, 740)
    yield page
    page.context.close()
    assert errors == [], "uncaught errors in the page"


def keep(page: Page, artifacts: Path, name: str) -> Path:
    path = artifacts / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


# --- steps a user takes


def sign_up(page: Page, server: WebServer) -> str:
    username = f"u{uuid.uuid4().hex[:12]}"
    page.goto(server.base_url + "/")
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.locator("#who")).to_have_text(f"Signed in as {username}")
    return username


def new_conversation(page: Page) -> None:
    conversations = page.locator("#conversations li")
    before = conversations.count()
    page.get_by_role("button", name="New conversation").click()
    expect(conversations).to_have_count(before + 1)
    expect(page.locator("#chat-title")).to_contain_text("started")
    expect(page.get_by_label("Message", exact=True)).to_be_enabled()


def send(page: Page, text: str) -> None:
    box = page.get_by_label("Message", exact=True)
    box.fill(text)
    box.press("Enter")


def last_reply_length(page: Page) -> int:
    return len(page.locator(".message.assistant .text").last.text_content() or "")


def wait_reply_longer_than(page: Page, length: int) -> None:
    page.wait_for_function(
        "n => { const r = [...document.querySelectorAll('.message.assistant .text')].pop();"
        " return r && r.textContent.length > n; }",
        arg=length,
        timeout=WAIT_MS,
    )


def record_reply_lengths(page: Page) -> None:
    """From now on, note the last reply's length at every change the page makes to the list."""
    page.evaluate(
        """() => {
          window.replyLengths = [];
          const list = document.getElementById('messages');
          new MutationObserver(() => {
            const reply = [...list.querySelectorAll('.message.assistant .text')].pop();
            if (reply) window.replyLengths.push(reply.textContent.length);
          }).observe(list, {subtree: true, childList: true, characterData: true});
        }"""
    )


def token_of(page: Page) -> str:
    token = page.evaluate("sessionStorage.getItem('companion.token')")
    assert isinstance(token, str) and token
    return token


def api(server: WebServer, token: str) -> httpx.Client:
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.Client(base_url=server.base_url + "/api/v1", headers=headers, timeout=30)


# --- the tests


def test_sign_up_send_and_watch_the_reply_stream(
    desktop: Page, web_server: WebServer, artifacts: Path
) -> None:
    page = desktop
    sign_up(page, web_server)
    expect(page.get_by_label("Persona")).to_contain_text("Mira")
    new_conversation(page)
    # bad input says so (issue 25, item 7): an empty send, a message near the limit
    page.get_by_role("button", name="Send").click()
    expect(page.locator("#composer-status")).to_have_text("Write a message first.")
    page.get_by_label("Message", exact=True).fill("x" * 7800)
    expect(page.locator("#composer-status")).to_have_text("200 of 8000 characters left.")
    record_reply_lengths(page)
    send(page, "I love hiking in the mountains with my dog.")
    expect(page.locator("#composer-status")).to_have_text("")

    user = page.locator(".message.user").last
    expect(user.locator(".text")).to_have_text("I love hiking in the mountains with my dog.")
    wait_reply_longer_than(page, 0)
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    expect(page.locator(".message.assistant.done")).to_have_count(1, timeout=WAIT_MS)
    # the reply grew in many steps as tokens arrived, not in one piece at the end (not
    # strictly: a Markdown marker closing turns "**" into bold and shortens the text)
    lengths = [n for n in page.evaluate("window.replyLengths") if n > 0]
    assert len(set(lengths)) >= 10 and lengths[0] < lengths[-1] / 2
    assert lengths[-1] == last_reply_length(page)

    # the list followed the reply to its end (the page's own scrolling never reads as the
    # user scrolling away), so nothing offers a jump
    expect(page.get_by_role("button", name="Jump to latest")).to_be_hidden()
    assert page.locator("#messages").evaluate(
        "l => l.scrollHeight - l.scrollTop - l.clientHeight < 40"
    )
    expect(user.locator(".about")).to_contain_text(re.compile(r"feeling: \w+ \(\d+%\)"))
    reply = page.locator(".message.assistant").last
    expect(reply.locator(".about")).to_contain_text("route: normal")
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()

    page.get_by_role("button", name="Status").click()
    expect(page.locator("#models")).to_contain_text(f"{web_server.model_id} (chat, on llama.cpp)")
    expect(page.locator("#stat-speed")).to_have_text(re.compile(r"^\d+(\.\d)? tokens/s$"))
    expect(page.locator("#stat-ttft")).to_have_text(re.compile(r"\d.*\(engine \d"))
    expect(page.locator("#stat-cached")).to_have_text(re.compile(r"^\d+ of [1-9]\d*$"))
    expect(page.locator("#stat-completion")).to_have_text(re.compile(r"^[1-9]\d*$"))
    keep(page, artifacts, "desktop-chat")

    live_reply = reply.locator(".about").inner_text()
    live_feeling = user.locator(".about").inner_text()
    assert "Mira" in live_reply and web_server.model_id in live_reply
    # a reply cut at the persona's max_tokens says so (1,500 tokens: the tiny model's
    # random text rarely ends by itself, but may)
    with api(web_server, token_of(page)) as client:
        conversation = client.get("/conversations").json()[0]["id"]
        stored = client.get(f"/conversations/{conversation}/messages").json()
    cut = stored[-1]["metadata"]["finish_reason"] == "length"
    cut_note = page.locator(".message.assistant .state")
    if cut:
        expect(cut_note).to_have_text("This reply reached its length limit and was cut short.")
    else:
        expect(cut_note).to_be_hidden()

    # a reload keeps the session (sessionStorage) and shows the stored turn, labelled as it
    # was live: the persona that answered by name, the model, the feeling (issue 25, item 2)
    page.reload()
    expect(page.locator(".message.done")).to_have_count(2)
    expect(page.locator(".message.user .text")).to_have_text(
        "I love hiking in the mountains with my dog."
    )
    expect(page.locator("#conversations li")).to_have_count(1)
    expect(page.locator(".message.assistant .about")).to_have_text(live_reply)
    expect(page.locator(".message.user .about")).to_have_text(live_feeling)
    if cut:
        expect(cut_note).to_be_visible()
    else:
        expect(cut_note).to_be_hidden()

    # a second conversation, a few messages: the page never grows taller than the window
    # (the hidden "You:"/"Reply:" labels spilled out of the list: item 3), and a reload
    # reopens the conversation that was open, not the newest (item 4)
    first_title = page.locator("#chat-title").inner_text()
    new_conversation(page)
    for n in range(3):
        send(page, f"Message {n}: tell me about the mountains.")
        expect(page.locator(".message.assistant.done")).to_have_count(n + 1, timeout=WAIT_MS)
    assert page.evaluate("document.documentElement.scrollHeight <= window.innerHeight")
    page.locator("#conversations button.open").last.click()  # the older one, listed last
    expect(page.locator("#chat-title")).to_have_text(first_title)
    page.reload()
    expect(page.locator("#chat-title")).to_have_text(first_title)
    expect(page.locator(".message.done")).to_have_count(2)


def running_requests(client: httpx.Client) -> int:
    engine = client.get("/models").raise_for_status().json()["engine"]
    return int(engine["running"]) + int(engine["waiting"])


def wait_engine_idle(page: Page, client: httpx.Client) -> None:
    deadline_ms = WAIT_MS
    while running_requests(client) and deadline_ms > 0:
        page.wait_for_timeout(250)
        deadline_ms -= 250
    assert running_requests(client) == 0, still_running(client)


def still_running(client: httpx.Client) -> str:
    """What the engine and the job queue hold: whether a reply that was stopped still
    runs, or background jobs (memory extraction) do."""
    engine = client.get("/models").json()["engine"]
    base = str(client.base_url).removesuffix("/api/v1")
    metrics = httpx.get(f"{base}/metrics", timeout=30).text.splitlines()
    jobs = [m for m in metrics if m.startswith(("companion:jobs", "companion:job_queue_depth"))]
    return f"engine {engine}\njobs:\n" + "\n".join(jobs)


def test_stop_ends_the_reply_and_keeps_the_message_then_verify_age(
    desktop: Page, web_server: WebServer
) -> None:
    page = desktop
    sign_up(page, web_server)
    new_conversation(page)
    send(page, "Talk dirty to me.")

    # the server asks for age verification (meta event) while the reply streams
    verify = page.get_by_role("form", name="Age verification")
    expect(verify).to_be_visible()
    wait_reply_longer_than(page, 20)
    page.get_by_role("button", name="Stop").click()

    reply = page.locator(".message.assistant").last
    expect(reply).to_have_class(re.compile(r"\bstopped\b"))
    expect(reply.locator(".state")).to_have_text("Stopped. This partial reply is not saved.")
    expect(page.get_by_role("button", name="Retry")).to_be_visible()
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    expect(page.get_by_role("button", name="Stop")).to_be_disabled()

    # the generation stopped on the server: once the engine is idle, only the message is kept
    with api(web_server, token_of(page)) as client:
        wait_engine_idle(page, client)
        conversation = client.get("/conversations").json()[0]["id"]
        stored = client.get(f"/conversations/{conversation}/messages").json()
    assert [(m["role"], m["content"]) for m in stored] == [("user", "Talk dirty to me.")]
    # named after its first message now; reopening it shows the message alone
    page.get_by_role("button", name=re.compile("^Talk dirty to me")).click()
    expect(page.locator(".message")).to_have_count(1)
    expect(page.locator(".message.user .text")).to_have_text("Talk dirty to me.")

    # retry asks for a reply again, without sending the message a second time; stop it too
    page.get_by_role("button", name="Retry").click()
    wait_reply_longer_than(page, 0)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".message.assistant.stopped")).to_have_count(1)
    expect(page.locator(".message.user")).to_have_count(1)
    with api(web_server, token_of(page)) as client:
        wait_engine_idle(page, client)
        stored = client.get(f"/conversations/{conversation}/messages").json()
    assert [(m["role"], m["content"]) for m in stored] == [("user", "Talk dirty to me.")]

    verify = page.get_by_role("form", name="Age verification").last
    verify.get_by_label("Date of birth").fill("1990-04-02")
    verify.get_by_role("button", name="Verify my age").click()
    expect(page.locator(".verify [role=status]").last).to_have_text(
        re.compile("^Verified: adult conversations are open")
    )


class _NoEmbedding:
    dimensions = 384

    async def embed(self, texts: Sequence[str]) -> np.ndarray:
        raise AssertionError("the test passes its embeddings")


def remember(server: WebServer, user_id: str, facts: Sequence[str]) -> None:
    """Store memories for a user straight in the server's embedded PostgreSQL.

    The tiny model writes gibberish, so extraction would find no facts to remember.
    """
    from pgvector.asyncpg import register_vector

    from memory.embedded import EmbeddedPostgres
    from memory.longterm import LongTermMemory

    url = EmbeddedPostgres(server.data_dir).start()  # adopts the running server

    async def add() -> None:
        pool = await asyncpg.create_pool(url, min_size=1, max_size=1, init=register_vector)
        try:
            memories = LongTermMemory(pool, _NoEmbedding())
            rng = np.random.default_rng(0)
            for fact in facts:
                vector = rng.normal(size=384).astype(np.float32)
                vector /= np.linalg.norm(vector)
                await memories.add(uuid.UUID(user_id), "semantic", fact, 0.7, [], embedding=vector)
        finally:
            await pool.close()

    # Playwright's sync API runs an event loop in this thread: give asyncpg its own.
    with ThreadPoolExecutor(max_workers=1) as thread:
        thread.submit(asyncio.run, add()).result()


def test_memory_panel_search_forget_export_and_erase(
    desktop: Page, web_server: WebServer, tmp_path: Path, artifacts: Path
) -> None:
    page = desktop
    username = sign_up(page, web_server)
    token = token_of(page)
    with api(web_server, token) as client:
        user_id = client.get("/me").json()["id"]
    remember(web_server, user_id, ["Likes strong black coffee", "Has a dog called Biscuit"])

    page.get_by_role("button", name="Memories").click()
    memories = page.get_by_role("list", name="Memories")
    expect(memories.locator("li")).to_have_count(2)
    page.get_by_role("searchbox", name="Search memories").fill("coffee")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(memories.locator("li")).to_have_count(1)
    expect(memories).to_contain_text("Likes strong black coffee")
    page.get_by_role("searchbox", name="Search memories").fill("")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(memories.locator("li")).to_have_count(2)
    keep(page, artifacts, "desktop-memories")

    # Forget asks first (a second click), then offers Undo for a few seconds (item 5)
    forget = page.get_by_role("button", name="Forget: Has a dog called Biscuit")
    forget.click()
    expect(forget).to_have_text("Really forget?")
    expect(memories.locator("li")).to_have_count(2)  # nothing forgotten yet
    forget.click()
    expect(memories.locator("li")).to_have_count(1)
    expect(page.locator("#notice-text")).to_have_text("Forgotten.")
    page.get_by_role("button", name="Undo").click()
    expect(memories.locator("li")).to_have_count(2)
    expect(memories).to_contain_text("Has a dog called Biscuit")
    expect(page.locator("#notice-text")).to_have_text("Remembered again.")
    page.get_by_role("button", name="Dismiss the notice").click()
    expect(page.locator("#notice")).to_be_hidden()
    forget = page.get_by_role("button", name="Forget: Has a dog called Biscuit")
    forget.click()
    forget.click()
    expect(memories.locator("li")).to_have_count(1)
    expect(page.locator("#notice")).to_be_hidden(timeout=15_000)  # a notice goes by itself
    with api(web_server, token) as client:
        left = [m["content"] for m in client.get("/memories").json()]
    assert left == ["Likes strong black coffee"]

    with page.expect_download() as download:
        page.get_by_role("button", name="Export everything (JSON)").click()
    exported = tmp_path / download.value.suggested_filename
    download.value.save_as(exported)
    assert download.value.suggested_filename == f"companion-{username}.json"
    text = exported.read_text(encoding="utf-8")
    assert "Likes strong black coffee" in text and "Biscuit" not in text

    page.get_by_role("button", name="Erase my account").click()
    dialog = page.get_by_role("dialog", name="Erase your account?")
    erase = dialog.get_by_role("button", name="Erase everything")
    expect(erase).to_be_disabled()
    dialog.get_by_label("Type your username to confirm").fill(username)
    erase.click()
    expect(page.locator("#notice-text")).to_have_text(
        "Your account and everything stored about it were erased."
    )
    expect(page.get_by_role("button", name="Log in")).to_be_visible()
    login = httpx.post(
        f"{web_server.base_url}/api/v1/auth/login",
        json={"username": username, "password": PASSWORD},
    )
    assert login.status_code == 401


def test_phone_width_and_keyboard(phone: Page, web_server: WebServer, artifacts: Path) -> None:
    page = phone
    sign_up(page, web_server)
    # on a phone the conversation list is a drawer behind the "Chats" button
    chats = page.get_by_role("button", name="Chats")
    expect(page.get_by_role("button", name="New conversation")).to_be_hidden()
    chats.click()
    expect(chats).to_have_attribute("aria-expanded", "true")
    expect(page.get_by_role("button", name="New conversation")).to_be_visible()
    chats.click()
    expect(page.get_by_role("button", name="New conversation")).to_be_hidden()
    # with no conversation yet, the first message starts one

    box = page.get_by_label("Message", exact=True)
    box.fill("first line")
    box.press("Shift+Enter")
    box.press_sequentially("second line")
    expect(box).to_have_value("first line\nsecond line")
    expect(page.locator(".message")).to_have_count(0)
    box.press("Enter")
    expect(page.locator(".message.user .text")).to_have_text("first line\nsecond line")
    expect(box).to_have_value("")
    chats.click()
    expect(page.locator("#conversations li")).to_have_count(1)
    chats.click()
    wait_reply_longer_than(page, 0)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".message.assistant.stopped")).to_have_count(1)

    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= 375, "the page scrolls sideways at phone width"
    for control in ("Send", "Stop", "Memories", "Status", "Log out"):
        box_of = page.get_by_role("button", name=control, exact=True).bounding_box()
        assert box_of is not None and box_of["x"] + box_of["width"] <= 375, control
    keep(page, artifacts, "phone-chat")


def test_errors_are_shown_in_words(desktop: Page, web_server: WebServer, artifacts: Path) -> None:
    page = desktop
    username = sign_up(page, web_server)
    page.get_by_role("button", name="Log out").click()
    expect(page.locator("#notice-text")).to_have_text("You are signed out.")

    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill("not the password")
    page.get_by_role("button", name="Log in").click()
    expect(page.get_by_role("alert")).to_contain_text("wrong username or password")

    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign up").click()
    expect(page.get_by_role("alert")).to_contain_text(f"the username '{username}' is taken")
    keep(page, artifacts, "sign-in-error")

    # a forged token: the page says the session ended instead of showing nothing
    page.evaluate("sessionStorage.setItem('companion.token', 'forged')")
    page.reload()
    expect(page.locator("#notice-text")).to_have_text(
        "Your session has ended. Please sign in again."
    )
    expect(page.get_by_role("button", name="Log in")).to_be_visible()


def test_unknown_api_paths_stay_json(web_server: WebServer) -> None:
    page = httpx.get(web_server.base_url + "/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    missing = httpx.get(web_server.base_url + "/api/v1/nothing-here")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"


MARKDOWN_CASES = [
    (
        "**bold** and *it* and `x<y`",
        "<p><strong>bold</strong> and <em>it</em> and <code>x&lt;y</code></p>",
    ),
    ("a\nb\n\nc", "<p>a<br>b</p><p>c</p>"),
    (
        "- one\n- **two**\n\n1. first\n2. second",
        "<ul><li>one</li><li><strong>two</strong></li></ul><ol><li>first</li><li>second</li></ol>",
    ),
    ("```py\nprint('<b>')\n```", "<pre><code data-language=\"py\">print('&lt;b&gt;')</code></pre>"),
    (
        "# Title\n> quoted",
        '<p class="md-heading"><strong>Title</strong></p><blockquote><p>quoted</p></blockquote>',
    ),
    (
        "[site](https://example.org)",
        '<p><a href="https://example.org" rel="noopener noreferrer nofollow"'
        ' target="_blank">site</a></p>',
    ),
    # what must stay text: markup, script links, unclosed markers of a reply still streaming
    (
        "<img src=x onerror=alert(1)> <script>x</script>",
        "<p>&lt;img src=x onerror=alert(1)&gt; &lt;script&gt;x&lt;/script&gt;</p>",
    ),
    ("[click](javascript:alert(1))", "<p>[click](javascript:alert(1))</p>"),
    ("**not yet closed and 2*3*4", "<p>**not yet closed and 2*3*4</p>"),
    ("```\nstill streaming", "<pre><code>still streaming</code></pre>"),
]


FIRST = "Hi! My name is Alice and I just adopted a cat called Miso."


def test_markdown_copy_jump_theme_and_conversation_tools(
    desktop: Page, web_server: WebServer, artifacts: Path
) -> None:
    """Issue 25's expected features: Markdown replies (safe), Copy, Jump to latest, the
    theme switch, and conversations named after their first message, renamed, searched
    and deleted."""
    page = desktop
    page.context.grant_permissions(["clipboard-read", "clipboard-write"])
    sign_up(page, web_server)
    # the renderer, in this browser, on what models write and what must stay text
    rendered = page.evaluate(
        """async (cases) => {
          const { renderMarkdown } = await import('/ui/js/markdown.js');
          return cases.map(([source]) => {
            const box = document.createElement('div');
            renderMarkdown(box, source);
            return box.innerHTML;
          });
        }""",
        MARKDOWN_CASES,
    )
    assert rendered == [html for _, html in MARKDOWN_CASES]

    # a harmless first message brings no age prompt (issue 25, item 1: these words were
    # labelled fetish and opened the date-of-birth form)
    send(page, f"{FIRST}\nI work as a nurse, do you remember my cat's name?")
    expect(page.locator(".message.assistant.done")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator(".verify")).to_have_count(0)
    expect(page.locator(".message.assistant .about")).to_contain_text("route: normal")
    reply = page.locator(".message.assistant").last
    expect(reply.locator("div.text > p").first).to_be_visible()  # rendered, not raw text
    reply.get_by_role("button", name="Copy").click()
    expect(reply.get_by_role("button", name="Copied")).to_be_visible()
    with api(web_server, token_of(page)) as client:
        conversation = client.get("/conversations").json()[0]
        stored = client.get(f"/conversations/{conversation['id']}/messages").json()
    assert page.evaluate("navigator.clipboard.readText()") == stored[-1]["content"]
    # untitled: named after its first line
    assert conversation["title"] == FIRST

    # scrolled up, the list stops following and offers the way back
    jump = page.get_by_role("button", name="Jump to latest")
    expect(jump).to_be_hidden()
    page.locator("#messages").evaluate("list => { list.scrollTop = 0; }")
    expect(jump).to_be_visible()
    jump.click()
    expect(jump).to_be_hidden()
    assert page.locator("#messages").evaluate(
        "l => l.scrollHeight - l.scrollTop - l.clientHeight < 40"
    )

    # the theme: the system's by default, or chosen here and kept across a reload
    background = "getComputedStyle(document.body).backgroundColor"
    dark, light = "rgb(22, 24, 27)", "rgb(246, 245, 242)"
    page.emulate_media(color_scheme="dark")
    assert page.evaluate(background) == dark
    theme = page.get_by_label("Theme")
    theme.select_option("light")
    assert page.evaluate(background) == light
    page.emulate_media(color_scheme="light")
    theme.select_option("dark")
    assert page.evaluate("document.documentElement.dataset.theme") == "dark"
    assert page.evaluate(background) == dark
    keep(page, artifacts, "desktop-dark")
    page.reload()
    expect(page.locator(".message.done")).to_have_count(2)
    assert page.evaluate(background) == dark
    page.get_by_label("Theme").select_option("system")
    assert page.evaluate("document.documentElement.dataset.theme") is None
    assert page.evaluate(background) == light

    # a reload named the open conversation after its first message
    conversations = page.locator("#conversations li")
    expect(conversations.first).to_contain_text(FIRST)
    expect(page.locator("#chat-title")).to_contain_text(FIRST)
    page.get_by_role("button", name=f"Rename {FIRST}").click()
    title = page.get_by_label("New title")
    title.fill("Lisbon in May")
    title.press("Enter")
    expect(conversations.first).to_contain_text("Lisbon in May")
    expect(page.locator("#chat-title")).to_contain_text("Lisbon in May")
    new_conversation(page)
    send(page, "Recipes for a rainy day")
    expect(page.locator(".message.assistant.done")).to_have_count(1, timeout=WAIT_MS)
    page.reload()
    expect(conversations).to_have_count(2)
    search = page.get_by_role("searchbox", name="Search conversations")
    search.fill("lisbon")
    expect(conversations).to_have_count(1)
    expect(conversations.first).to_contain_text("Lisbon in May")
    search.fill("nothing like this")
    expect(page.locator("#no-conversations")).to_have_text("No conversation matches.")
    search.fill("")
    expect(conversations).to_have_count(2)
    conversations.filter(has_text="Lisbon in May").hover()  # its tools show on hover
    delete = page.get_by_role("button", name="Delete Lisbon in May")
    delete.click()
    expect(delete).to_have_text("Delete for good?")
    expect(conversations).to_have_count(2)
    delete.click()
    expect(conversations).to_have_count(1)
    expect(page.locator("#notice-text")).to_have_text('Deleted "Lisbon in May".')
    with api(web_server, token_of(page)) as client:
        assert [c["title"] for c in client.get("/conversations").json()] == [
            "Recipes for a rainy day"
        ]


def stored_messages(server: WebServer, page: Page) -> list[dict[str, Any]]:
    """The open conversation's stored messages, once the engine has nothing running."""
    with api(server, token_of(page)) as client:
        wait_engine_idle(page, client)
        conversation = client.get("/conversations").json()[0]["id"]
        messages: list[dict[str, Any]] = client.get(
            f"/conversations/{conversation}/messages"
        ).json()
    return messages


def test_regenerate_and_edit_the_last_exchange(desktop: Page, web_server: WebServer) -> None:
    """Issue 25's last expected features: Regenerate on the last reply (replacing it only
    once the new one is complete) and Edit on the user's last message."""
    page = desktop
    sign_up(page, web_server)
    new_conversation(page)
    for count, text in enumerate(("Tell me about owls.", "And about foxes?"), start=1):
        send(page, text)
        expect(page.locator(".message.assistant.done")).to_have_count(count, timeout=WAIT_MS)
    regenerate = page.get_by_role("button", name="Regenerate")
    edit = page.get_by_role("button", name="Edit")
    # only the last exchange can be redone
    expect(regenerate).to_have_count(1)
    expect(edit).to_have_count(1)
    replies, asked = page.locator(".message.assistant"), page.locator(".message.user")
    expect(replies.last.get_by_role("button", name="Regenerate")).to_be_visible()
    expect(asked.last.get_by_role("button", name="Edit")).to_be_visible()
    before = stored_messages(web_server, page)

    regenerate.click()
    expect(replies.last).to_have_attribute("aria-busy", "true")  # the old one, hidden
    expect(replies.last).to_have_class(re.compile(r"\bdone\b"), timeout=WAIT_MS)
    expect(replies).to_have_count(2)  # and gone
    after = stored_messages(web_server, page)
    assert [m["id"] for m in after[:3]] == [m["id"] for m in before[:3]]
    assert after[3]["id"] > before[3]["id"] and len(after) == 4
    assert replies.last.get_attribute("data-message-id") == str(after[3]["id"])

    # a regeneration stopped part way: the earlier reply stays, on the server and the page
    regenerate.click()
    wait_reply_longer_than(page, 0)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator("#notice-text")).to_have_text("Stopped. The earlier reply is kept.")
    expect(replies).to_have_count(2)
    expect(replies.last).to_be_visible()
    assert replies.last.get_attribute("data-message-id") == str(after[3]["id"])
    assert stored_messages(web_server, page) == after
    expect(regenerate).to_be_visible()

    # Edit: Escape leaves the message as it was; Save sends the change and a new reply
    edit.click()
    box = page.get_by_label("Edit your message")
    expect(box).to_have_value("And about foxes?")
    box.press("Escape")
    expect(asked.last.locator(".text")).to_have_text("And about foxes?")
    edit.click()
    box.fill("And about badgers?")
    page.get_by_role("button", name="Save and send").click()
    expect(asked.last.locator(".text")).to_have_text("And about badgers?")
    expect(replies.last).to_have_class(re.compile(r"\bdone\b"), timeout=WAIT_MS)
    expect(replies).to_have_count(2)
    edited = stored_messages(web_server, page)
    assert [(m["role"], m["content"]) for m in edited[:3]] == [
        ("user", "Tell me about owls."),
        ("assistant", after[1]["content"]),
        ("user", "And about badgers?"),
    ]
    assert edited[2]["id"] > after[3]["id"] and len(edited) == 4
    assert asked.last.get_attribute("data-message-id") == str(edited[2]["id"])

    # after a reload, the stored exchange can be redone as well
    page.reload()
    expect(page.locator(".message.done")).to_have_count(4)
    expect(asked.last.get_by_role("button", name="Edit")).to_be_visible()
    expect(replies.last.get_by_role("button", name="Regenerate")).to_be_visible()


def fits_the_phone(page: Page) -> None:
    """Nothing scrolls sideways, and the page is never taller than the window."""
    width, height = page.evaluate(
        "[document.documentElement.scrollWidth, document.documentElement.scrollHeight]"
    )
    assert width <= 375, "the page scrolls sideways at phone width"
    assert height <= page.evaluate("window.innerHeight"), "the page grew taller than the window"


def test_the_whole_walk_at_phone_width(phone: Page, web_server: WebServer, artifacts: Path) -> None:
    """Issue 25's first-time walk, on a phone: sign up, four messages with Stop and Retry,
    memories, status, a second conversation, reloads and bad input."""
    page = phone
    username = sign_up(page, web_server)
    fits_the_phone(page)
    chats = page.get_by_role("button", name="Chats")
    page.get_by_role("button", name="Send").click()  # bad input: nothing written
    expect(page.locator("#composer-status")).to_have_text("Write a message first.")
    send(page, "Hi! My name is Alice and I just adopted a cat called Miso.")
    expect(page.locator(".message.assistant.done")).to_have_count(1, timeout=WAIT_MS)
    expect(page.locator(".verify")).to_have_count(0)
    send(page, "I work as a nurse. Do you remember my cat's name?")
    expect(page.locator(".message.assistant.done")).to_have_count(2, timeout=WAIT_MS)
    send(page, "Tell me a long story about the sea.")
    wait_reply_longer_than(page, 0)
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".message.assistant.stopped")).to_have_count(1)
    page.get_by_role("button", name="Retry").click()
    expect(page.locator(".message.assistant.done")).to_have_count(3, timeout=WAIT_MS)
    send(page, "Thanks, that was lovely.")
    expect(page.locator(".message.assistant.done")).to_have_count(4, timeout=WAIT_MS)
    expect(page.locator(".message.user")).to_have_count(4)  # Retry sent nothing twice
    fits_the_phone(page)
    keep(page, artifacts, "phone-walk-chat")

    page.get_by_role("button", name="Status").click()
    expect(page.locator("#models")).to_contain_text("(chat, on llama.cpp)")
    fits_the_phone(page)
    page.get_by_role("button", name="Close the status panel").click()
    page.get_by_role("button", name="Memories").click()
    expect(page.get_by_role("button", name="Export everything (JSON)")).to_be_visible()
    fits_the_phone(page)
    page.get_by_role("button", name="Close the memory panel").click()

    chats.click()
    page.get_by_role("button", name="New conversation").click()
    expect(page.locator("#chat-title")).to_contain_text("started")
    send(page, "A second conversation, about gardening.")
    expect(page.locator(".message.assistant.done")).to_have_count(1, timeout=WAIT_MS)
    page.reload()  # the open conversation comes back, labelled as it was
    expect(page.locator(".message.done")).to_have_count(2)
    expect(page.locator(".message.user .text")).to_have_text(
        "A second conversation, about gardening."
    )
    chats.click()
    expect(page.locator("#conversations li")).to_have_count(2)
    page.locator("#conversations button.open").last.click()  # the first one, on a phone
    expect(page.locator(".message.user")).to_have_count(4)
    fits_the_phone(page)
    page.reload()
    expect(page.locator(".message.user")).to_have_count(4)
    keep(page, artifacts, "phone-walk-reloaded")
    page.get_by_role("button", name="Log out").click()
    expect(page.locator("#notice-text")).to_have_text("You are signed out.")
    page.get_by_label("Username", exact=True).fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page.locator("#chat-title")).to_contain_text("A second conversation")  # the newest
