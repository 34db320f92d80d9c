// Conversations and the chat view: the list (searched by title, renamed, deleted after a
// confirming second click), a new conversation with a persona, the history, and a turn
// streamed token by token with Stop (aborts the request, which stops generation on the
// server) and Retry (asks for a reply to the last message again, without sending it twice).
// The last exchange can be redone: Regenerate on the last reply (the new reply replaces it
// once complete; a stopped or failed one leaves it), Edit on the user's last message (the
// edited message replaces it and is answered anew).
// The view follows a streaming reply only while it is scrolled to the end; scrolled up, a
// "Jump to latest" button brings it back.

import { byId, el, percent, when } from "./dom.js";
import { renderMarkdown } from "./markdown.js";

const PAGE = 50;

export class ChatView {
  constructor(api, { showError, notify, onReply, onOpened }) {
    this.api = api;
    this.showError = showError;
    this.notify = notify;
    this.conversations = [];
    this.onReply = onReply;
    this.onOpened = onOpened;
    this.personas = new Map();
    this.conversation = null;
    this.oldestId = null;
    this.controller = null;
    this.creating = null;
    this.lastSent = null;
    this.wire();
  }

  wire() {
    byId("new-conversation").addEventListener("submit", (event) => {
      event.preventDefault();
      this.create(byId("persona").value);
    });
    byId("persona").addEventListener("change", () => this.describePersona());
    byId("composer").addEventListener("submit", (event) => {
      event.preventDefault();
      this.sendFromComposer();
    });
    byId("composer-input").addEventListener("input", () => countCharacters());
    byId("composer-input").addEventListener("keydown", (event) => {
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.sendFromComposer();
      }
    });
    byId("stop").addEventListener("click", () => this.controller?.abort());
    byId("retry").addEventListener("click", () => this.retry());
    byId("load-earlier").addEventListener("click", () => this.loadEarlier());
    byId("conversation-filter").addEventListener("input", () => this.renderConversations());
    byId("messages").addEventListener("scroll", () => {
      // The page's own scrolling fires this too, after more text may have arrived: only
      // a move up from where the page last scrolled to is the user's, and stops following.
      const list = byId("messages");
      if (atEnd()) following = true;
      else if (list.scrollTop < scrolledTo - 4) following = false;
      byId("jump-latest").hidden = following;
    });
    byId("jump-latest").addEventListener("click", () => scrollToEnd(true));
    byId("messages").addEventListener("click", (event) => {
      const button = event.target.closest("button[data-action]");
      if (!button || this.controller) return;
      const node = button.closest(".message");
      if (button.dataset.action === "regenerate") this.regenerate(node);
      else if (button.dataset.action === "edit") this.startEdit(node);
    });
  }

  async start() {
    const [personas, conversations] = await Promise.all([
      this.api.request("GET", "/api/v1/personas"),
      this.api.request("GET", "/api/v1/conversations"),
    ]);
    this.personas = new Map(personas.map((p) => [p.id, p]));
    byId("persona").replaceChildren(
      ...personas.map((p) => el("option", { value: p.id, text: p.name })),
    );
    this.describePersona();
    this.renderConversations(conversations);
    if (conversations.length) {
      // the conversation open before a reload (named in the address), else the newest
      const wanted = decodeURIComponent(location.hash.slice(1));
      await this.open(conversations.find((c) => c.id === wanted) ?? conversations[0]);
    } else {
      // nothing yet: the first message starts a conversation with the chosen persona
      byId("chat-title").textContent = "Say hello to start a conversation";
      this.setComposer({ enabled: true, streaming: false });
    }
  }

  describePersona() {
    const persona = this.personas.get(byId("persona").value);
    byId("persona-description").textContent = persona ? persona.description : "";
  }

  personaName(id) {
    return this.personas.get(id)?.name ?? id;
  }

  async refreshConversations() {
    try {
      this.renderConversations(await this.api.request("GET", "/api/v1/conversations"));
    } catch (error) {
      this.showError(error);
    }
  }

  renderConversations(conversations = this.conversations) {
    this.conversations = conversations;
    const query = byId("conversation-filter").value.trim().toLowerCase();
    const label = (c) => c.title || this.personaName(c.persona);
    const shown = conversations.filter((c) => !query || label(c).toLowerCase().includes(query));
    const items = shown.map((c) => {
      const current = c.id === this.conversation?.id;
      const button = el(
        "button",
        {
          type: "button",
          class: "open",
          "data-conversation-id": c.id,
          "aria-current": current ? "true" : "false",
          onclick: () => this.open(c),
        },
        label(c),
        el("small", { text: `${this.personaName(c.persona)} · ${when(c.updated_at)}` }),
      );
      const item = el("li", { class: current ? "current" : "" }, button);
      item.append(this.conversationTools(c, item, label(c)));
      return item;
    });
    byId("conversations").replaceChildren(...items);
    const empty = byId("no-conversations");
    empty.textContent = query && conversations.length ? "No conversation matches." : "No conversations yet.";
    empty.hidden = shown.length > 0;
  }

  /** Rename (in place) and Delete (a second click confirms) for one conversation. */
  conversationTools(conversation, item, label) {
    const rename = el("button", {
      type: "button",
      text: "Rename",
      "aria-label": `Rename ${label}`,
      onclick: () => this.startRename(conversation, item),
    });
    const remove = el("button", {
      type: "button",
      class: "danger",
      text: "Delete",
      "aria-label": `Delete ${label}`,
    });
    remove.addEventListener("click", () => {
      if (remove.dataset.armed === "true") {
        this.remove(conversation);
        return;
      }
      remove.dataset.armed = "true";
      remove.textContent = "Delete for good?";
      setTimeout(() => {
        remove.dataset.armed = "false";
        remove.textContent = "Delete";
      }, 5000);
    });
    return el("div", { class: "tools" }, rename, remove);
  }

  startRename(conversation, item) {
    const input = el("input", {
      type: "text",
      maxlength: "200",
      "aria-label": "New title",
      value: conversation.title || this.personaName(conversation.persona),
    });
    const form = el(
      "form",
      { class: "rename" },
      input,
      el("button", { type: "submit", class: "primary", text: "Save" }),
    );
    form.addEventListener("submit", async (event) => {
      event.preventDefault();
      const title = input.value.trim();
      if (!title) return;
      try {
        const path = `/api/v1/conversations/${conversation.id}`;
        const renamed = await this.api.request("PATCH", path, { title });
        if (this.conversation?.id === renamed.id) {
          this.conversation = renamed;
          this.showTitle();
        }
      } catch (error) {
        this.showError(error);
      }
      await this.refreshConversations();
    });
    input.addEventListener("keydown", (event) => {
      if (event.key === "Escape") this.renderConversations();
    });
    item.replaceChildren(form);
    input.focus();
    input.select();
  }

  async remove(conversation) {
    try {
      await this.api.request("DELETE", `/api/v1/conversations/${conversation.id}`);
    } catch (error) {
      this.showError(error);
      return;
    }
    const label = conversation.title || this.personaName(conversation.persona);
    this.notify(`Deleted "${label}".`);
    const rest = this.conversations.filter((c) => c.id !== conversation.id);
    if (this.conversation?.id === conversation.id) {
      this.controller?.abort();
      this.conversation = null;
      byId("messages").replaceChildren();
      if (rest.length) await this.open(rest[0]);
      else {
        history.replaceState(null, "", location.pathname);
        byId("chat-title").textContent = "Say hello to start a conversation";
      }
    }
    await this.refreshConversations();
  }

  showTitle() {
    const conversation = this.conversation;
    const persona = this.personaName(conversation.persona);
    byId("chat-title").textContent = conversation.title
      ? `${conversation.title} · ${persona}`
      : `${persona} · started ${when(conversation.created_at)}`;
  }

  /** Start a conversation and open it; a second call while one is being made shares it. */
  create(persona) {
    this.creating ??= this.createNow(persona).finally(() => {
      this.creating = null;
    });
    return this.creating;
  }

  async createNow(persona) {
    try {
      const conversation = await this.api.request("POST", "/api/v1/conversations", { persona });
      this.conversation = conversation;
      await this.refreshConversations();
      await this.open(conversation);
    } catch (error) {
      this.showError(error);
    }
  }

  async open(conversation) {
    if (this.controller) this.controller.abort();
    this.conversation = conversation;
    history.replaceState(null, "", `#${encodeURIComponent(conversation.id)}`);
    this.lastSent = null;
    byId("retry").hidden = true;
    for (const button of byId("conversations").querySelectorAll("button.open")) {
      const current = button.dataset.conversationId === conversation.id;
      button.setAttribute("aria-current", String(current));
      button.parentElement.classList.toggle("current", current);
    }
    this.showTitle();
    byId("messages").replaceChildren();
    this.setComposer({ enabled: true, streaming: false });
    this.onOpened();
    await this.loadPage(null);
    byId("composer-input").focus();
  }

  async loadEarlier() {
    await this.loadPage(this.oldestId);
  }

  async loadPage(before) {
    const conversation = this.conversation;
    const params = new URLSearchParams({ limit: String(PAGE) });
    if (before) params.set("before", String(before));
    try {
      const path = `/api/v1/conversations/${conversation.id}/messages?${params}`;
      const messages = await this.api.request("GET", path);
      if (conversation !== this.conversation) return; // another conversation was opened meanwhile
      const name = (id) => this.personaName(id);
      byId("messages").prepend(...messages.map((m) => storedBubble(m, name)));
      if (messages.length) this.oldestId = messages[0].id;
      byId("load-earlier").hidden = messages.length < PAGE;
      if (!before) this.offerRetry(messages);
      markLastExchange();
      if (!before) scrollToEnd(true);
    } catch (error) {
      this.showError(error);
    }
  }

  /** A conversation that ends with an unanswered message (stopped, failed) offers Retry. */
  offerRetry(messages) {
    const last = messages[messages.length - 1];
    const unanswered = last?.role === "user";
    this.lastSent = unanswered ? last.content : null;
    byId("retry").hidden = !unanswered;
  }

  async sendFromComposer() {
    const input = byId("composer-input");
    const text = input.value.trim();
    if (this.controller) return;
    if (!text) {
      composerStatus("Write a message first.");
      input.focus();
      return;
    }
    if (this.creating) await this.creating;
    if (!this.conversation) await this.create(byId("persona").value);
    if (!this.conversation) return; // creating it failed; the error is shown
    input.value = "";
    composerStatus("");
    this.send(text);
  }

  /** The last message is stored but unanswered: the server answers it again. */
  retry() {
    if (!this.lastSent || this.controller) return;
    const shown = byId("messages").querySelectorAll(".message");
    const last = shown[shown.length - 1];
    if (last?.matches(".assistant.stopped, .assistant.failed")) last.remove();
    const asked = [...byId("messages").querySelectorAll(".message.user")].pop();
    const user = asked ? bubbleOf(asked) : bubble("user", this.lastSent);
    const conversationId = this.conversation.id;
    this.answer(user, (signal) => this.api.regenerate(conversationId, signal));
  }

  /** A new reply in place of the last one; the old one stays until the new one is done. */
  regenerate(replyNode) {
    const asked = [...byId("messages").querySelectorAll(".message.user")].pop();
    if (!asked) return;
    const old = repliesAfter(asked);
    for (const node of old) node.hidden = true;
    const conversationId = this.conversation.id;
    this.answer(bubbleOf(asked), (signal) => this.api.regenerate(conversationId, signal), old);
  }

  /** The user's last message becomes a box to change it in; Save sends the change. */
  startEdit(node) {
    const text = node.querySelector(".text");
    const box = el("textarea", {
      class: "edit-box",
      rows: "3",
      maxlength: String(byId("composer-input").maxLength),
      "aria-label": "Edit your message",
    });
    box.value = text.textContent;
    const cancel = el("button", { type: "button", text: "Cancel" });
    const form = el(
      "form",
      { class: "edit" },
      box,
      el("div", { class: "actions" }, el("button", { type: "submit", class: "primary", text: "Save and send" }), cancel),
    );
    const close = () => {
      form.remove();
      text.hidden = false;
      markLastExchange();
    };
    cancel.addEventListener("click", close);
    box.addEventListener("keydown", (event) => {
      if (event.key === "Escape") close();
    });
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      const changed = box.value.trim();
      if (!changed || this.controller) return;
      close();
      this.edit(node, changed);
    });
    text.hidden = true;
    text.after(form);
    for (const button of byId("messages").querySelectorAll("button[data-action]")) button.hidden = true;
    box.focus();
  }

  edit(node, text) {
    const messageId = node.dataset.messageId;
    delete node.dataset.messageId; // replaced: "done" gives the new id (until then, Retry)
    for (const reply of repliesAfter(node)) reply.remove();
    for (const verify of byId("messages").querySelectorAll(".verify")) {
      if (node.compareDocumentPosition(verify) & Node.DOCUMENT_POSITION_FOLLOWING) verify.remove();
    }
    const user = bubbleOf(node);
    user.text.textContent = text;
    user.about.hidden = true;
    this.lastSent = text;
    const conversationId = this.conversation.id;
    return this.answer(user, (signal) => this.api.edit(conversationId, messageId, text, signal));
  }

  send(text) {
    this.lastSent = text;
    const user = bubble("user", text);
    byId("messages").append(user.node);
    const conversationId = this.conversation.id;
    return this.answer(user, (signal) => this.api.turn(conversationId, text, signal));
  }

  /** A reply bubble filled from `open(signal)`'s events; `replaced`: the hidden bubbles of
   * the reply it regenerates, removed when it is done and shown again otherwise. */
  async answer(user, open, replaced = []) {
    byId("retry").hidden = true;
    for (const button of byId("messages").querySelectorAll("button[data-action]")) button.hidden = true;
    const reply = bubble("assistant", "");
    reply.node.setAttribute("aria-busy", "true");
    byId("messages").append(reply.node);
    scrollToEnd(true);
    this.controller = new AbortController();
    this.setComposer({ enabled: true, streaming: true });
    const outcome = await this.stream(open(this.controller.signal), user, reply);
    reply.node.removeAttribute("aria-busy");
    this.controller = null;
    this.setComposer({ enabled: true, streaming: false });
    if (replaced.length && outcome.ended !== "done") this.keepEarlier(outcome, reply, replaced);
    else {
      for (const node of replaced) node.remove();
      this.finish(outcome, reply);
    }
    markLastExchange();
    scrollToEnd(); // the reply's last lines (its actions, a cut note) while following
    this.refreshConversations();
  }

  /** A regeneration that stopped or failed: the server kept the earlier reply; so does the
   * page, and says so. */
  keepEarlier(outcome, reply, replaced) {
    reply.node.remove();
    for (const node of replaced) node.hidden = false;
    if (outcome.ended === "error") this.showError(outcome.error ?? new Error(outcome.message));
    this.notify(`${outcome.ended === "stopped" ? "Stopped" : "Failed"}. The earlier reply is kept.`);
  }

  /** Relay one turn into the page; resolves to what ended it. */
  async stream(events, user, reply) {
    const started = performance.now();
    let firstToken = null;
    try {
      for await (const { type, data } of events) {
        if (type === "meta") this.showMeta(data, user, reply);
        else if (type === "token") {
          firstToken ??= (performance.now() - started) / 1000;
          reply.grow(data.text);
          scrollToEnd();
        } else if (type === "done") {
          reply.node.dataset.messageId = String(data.assistant_message_id);
          user.node.dataset.messageId = String(data.user_message_id);
          this.onReply(data, firstToken);
          return { ended: "done", cut: data.finish_reason === "length" };
        } else if (type === "error") return { ended: "error", message: data.message };
      }
      return { ended: "error", message: "The reply ended before it was complete." };
    } catch (error) {
      if (error.name === "AbortError") return { ended: "stopped" };
      return { ended: "error", message: error.message, error };
    }
  }

  showMeta(meta, user, reply) {
    user.about.textContent = feelingLine(meta);
    user.about.hidden = false;
    reply.about.textContent = routeLine(meta, this.personaName(meta.persona));
    reply.about.hidden = false;
    if (meta.needs_verification) byId("messages").append(this.verification());
  }

  finish(outcome, reply) {
    reply.settle();
    if (outcome.ended === "done") {
      reply.node.classList.add("done");
      if (outcome.cut) showCut(reply.state);
      return;
    }
    byId("retry").hidden = false;
    if (outcome.ended === "stopped") {
      reply.node.classList.add("stopped");
      reply.state.textContent = "Stopped. This partial reply is not saved.";
    } else {
      reply.node.classList.add("failed");
      reply.state.textContent = `Failed: ${outcome.message}`;
      this.showError(outcome.error ?? new Error(outcome.message));
    }
    reply.state.hidden = false;
  }

  setComposer({ enabled, streaming }) {
    byId("composer-input").disabled = !enabled;
    byId("send").disabled = !enabled || streaming;
    byId("stop").disabled = !streaming;
  }

  /** The age-verification prompt, shown when the server says this request needs it. */
  verification() {
    const id = `dob-${Date.now()}`;
    const status = el("p", { role: "status" });
    const form = el(
      "form",
      { "aria-label": "Age verification" },
      el("div", {}, el("label", { for: id, text: "Date of birth" }),
        el("input", { id, name: "date_of_birth", type: "date", required: true })),
      el("button", { type: "submit", class: "primary", text: "Verify my age" }),
    );
    const conversationId = this.conversation.id;
    form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.verify(conversationId, form, status);
    });
    const explain = "Adult content needs age verification. Your date of birth is used only to "
      + "check that you are 18 or older; under 18, adult content stays closed for good.";
    return el("li", { class: "verify" }, el("p", { text: explain }), form, status);
  }

  async verify(conversationId, form, status) {
    const dateOfBirth = form.elements.date_of_birth.value;
    try {
      const path = `/api/v1/conversations/${conversationId}/verify-age`;
      const { verified } = await this.api.request("POST", path, { date_of_birth: dateOfBirth });
      status.textContent = verified
        ? "Verified: adult conversations are open in this conversation."
        : "Not verified: adult content stays closed on this account.";
      form.remove();
    } catch (error) {
      status.textContent = error.message;
    }
  }

  clear() {
    this.controller?.abort();
    this.conversation = null;
    history.replaceState(null, "", location.pathname);
    this.lastSent = null;
    byId("messages").replaceChildren();
    byId("conversations").replaceChildren();
    byId("conversation-filter").value = "";
    this.conversations = [];
    byId("chat-title").textContent = "Start a conversation";
    byId("retry").hidden = true;
    byId("load-earlier").hidden = true;
    this.setComposer({ enabled: false, streaming: false });
  }
}

/** Says something about the message box, below it, to screen readers too. */
function composerStatus(text) {
  byId("composer-status").textContent = text;
}

/** Near the limit, how many characters are left: the box takes no more than its maxlength,
 * and a longer paste is cut there, so "0 left" says why. */
function countCharacters() {
  const input = byId("composer-input");
  const left = input.maxLength - input.value.length;
  composerStatus(left <= 500 ? `${left} of ${input.maxLength} characters left.` : "");
}

/** A message in the list. The user's text is shown as typed; a reply is Markdown
 * (markdown.js), rendered again as its tokens arrive (at most once a frame). */
function bubble(role, content) {
  const reply = role === "assistant";
  const text = el(reply ? "div" : "p", { class: "text" });
  const about = el("p", { class: "about", hidden: true });
  const state = el("p", { class: "state", hidden: true });
  const who = el("span", { class: "visually-hidden", text: reply ? "Reply: " : "You: " });
  const node = el("li", { class: `message ${role}`, "data-role": role }, who, text, about, state);
  const parts = { node, text, about, state, source: content, grow: null, settle: () => {} };
  if (!reply) {
    text.textContent = content;
    node.append(el("div", { class: "actions" }, actionButton("edit", "Edit")));
    return parts;
  }
  let pending = false;
  const render = () => {
    pending = false;
    renderMarkdown(text, parts.source);
    if (node.isConnected) scrollToEnd();
  };
  parts.grow = (more) => {
    parts.source += more;
    if (!pending) {
      pending = true;
      requestAnimationFrame(render);
    }
  };
  // when the turn ends, what arrived is on the page before it is marked done or stopped
  parts.settle = () => {
    if (pending) render();
  };
  render();
  node.append(el("div", { class: "actions" }, copyButton(() => parts.source), actionButton("regenerate", "Regenerate")));
  return parts;
}

/** A button that redoes the last exchange; shown only on it (`markLastExchange`). */
function actionButton(action, text) {
  return el("button", { type: "button", "data-action": action, text, hidden: true });
}

/** The reply bubbles after a user message (one, or a panel's several). */
function repliesAfter(node) {
  const after = [];
  for (let next = node.nextElementSibling; next; next = next.nextElementSibling) {
    if (next.matches(".message.assistant")) after.push(next);
  }
  return after;
}

/** Edit on the user's last message and Regenerate on its stored reply, and nowhere else:
 * only the last exchange can be redone. */
function markLastExchange() {
  const list = byId("messages");
  for (const button of list.querySelectorAll("button[data-action]")) button.hidden = true;
  const asked = [...list.querySelectorAll(".message.user")].pop();
  if (!asked?.dataset.messageId || asked.querySelector("form.edit")) return;
  asked.querySelector('button[data-action="edit"]').hidden = false;
  const reply = repliesAfter(asked).filter((n) => n.matches(".done") && !n.hidden).pop();
  if (reply) reply.querySelector('button[data-action="regenerate"]').hidden = false;
}

/** Copies a reply's text (its Markdown source) and says so on the button for a moment. */
function copyButton(source) {
  const button = el("button", { type: "button", class: "copy", text: "Copy" });
  button.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(source());
      button.textContent = "Copied";
    } catch {
      button.textContent = "Copy failed";
    }
    setTimeout(() => {
      button.textContent = "Copy";
    }, 2000);
  });
  return button;
}

/** The parts of a bubble already on the page. */
function bubbleOf(node) {
  const part = (name) => node.querySelector(`.${name}`);
  return { node, text: part("text"), about: part("about"), state: part("state") };
}

/** A stored message, labelled as it was live: who answered with which model, or how the
 * user's message was understood. */
function storedBubble(message, personaName) {
  const { node, about, state } = bubble(message.role, message.content);
  node.dataset.messageId = String(message.id);
  node.classList.add("done");
  const meta = message.metadata || {};
  if (message.role === "assistant" && meta.route) {
    about.textContent = routeLine(meta, personaName(meta.persona));
    about.hidden = false;
    if (meta.finish_reason === "length") showCut(state);
  } else if (message.role === "user" && meta.emotion) {
    about.textContent = feelingLine(meta);
    about.hidden = false;
  }
  return node;
}

/** A reply that stopped at its length limit says so, instead of ending mid-word. */
function showCut(state) {
  state.textContent = "This reply reached its length limit and was cut short.";
  state.hidden = false;
}

function feelingLine(meta) {
  return `feeling: ${meta.emotion} (${percent(meta.emotion_confidence)})`;
}

function routeLine(meta, personaName) {
  const parts = [`route: ${meta.route}`, personaName];
  if (meta.model) parts.push(meta.model);
  return parts.join(" · ");
}

// Whether the list follows new text: true until the user scrolls up (a scroll event), true
// again when they scroll back to the end or jump. Growing content fires no scroll event.
let following = true;
let scrolledTo = 0; // where the page itself last scrolled the list to

/** Whether the message list shows its end (within a few pixels). */
function atEnd() {
  const list = byId("messages");
  return list.scrollHeight - list.scrollTop - list.clientHeight < 40;
}

/** Scroll to the newest message: always when `force` (the user sent, opened or jumped),
 * else only while following, so reading back is not interrupted. */
function scrollToEnd(force = false) {
  const list = byId("messages");
  if (force || following) {
    list.scrollTop = list.scrollHeight;
    scrolledTo = list.scrollTop;
    following = true;
  }
  byId("jump-latest").hidden = following;
}
