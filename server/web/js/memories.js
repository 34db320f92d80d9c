// The memory panel: what the companion remembers about the user (list, search, forget one,
// after a second click that confirms, with Undo for a few seconds), export of everything
// stored, and erasing the account after a typed confirmation.

import { byId, el, when } from "./dom.js";

const LIMIT = 50;
const CONFIRM_S = 5;

export class MemoryPanel {
  constructor(api, { showError, notify, onErased, username }) {
    this.api = api;
    this.showError = showError;
    this.notify = notify;
    this.onErased = onErased;
    this.username = username;
    byId("memory-search").addEventListener("submit", (event) => {
      event.preventDefault();
      this.refresh();
    });
    byId("export").addEventListener("click", () => this.exportAll());
    byId("erase").addEventListener("click", () => this.askErase());
    byId("erase-confirm").addEventListener("input", (event) => {
      byId("erase-confirmed").disabled = event.target.value !== this.username();
    });
    byId("erase-dialog").addEventListener("close", () => this.closedErase());
  }

  async refresh() {
    const query = byId("memory-query").value.trim();
    const params = new URLSearchParams({ limit: String(LIMIT) });
    if (query) params.set("query", query);
    try {
      const memories = await this.api.request("GET", `/api/v1/memories?${params}`);
      this.render(memories, query);
    } catch (error) {
      this.showError(error);
    }
  }

  render(memories, query) {
    byId("memory-list").replaceChildren(...memories.map((m) => this.item(m)));
    const empty = byId("no-memories");
    empty.textContent = query ? "No memory matches that search." : "Nothing remembered yet.";
    empty.hidden = memories.length > 0;
  }

  item(memory) {
    const forget = el("button", {
      type: "button",
      class: "danger",
      text: "Forget",
      "aria-label": `Forget: ${memory.content}`,
      onclick: () => this.confirmForget(forget, memory, item),
    });
    const about = `${memory.kind} · importance ${memory.importance.toFixed(1)} · ${when(memory.created_at)}`;
    const item = el(
      "li",
      { "data-memory-id": memory.id },
      el("div", {}, el("p", { text: memory.content }), el("small", { text: about })),
      forget,
    );
    return item;
  }

  /** The first click asks; a second one within a few seconds forgets. */
  confirmForget(button, memory, item) {
    if (button.dataset.armed !== "true") {
      button.dataset.armed = "true";
      button.textContent = "Really forget?";
      setTimeout(() => {
        button.dataset.armed = "false";
        button.textContent = "Forget";
      }, CONFIRM_S * 1000);
      return;
    }
    this.forget(memory, item);
  }

  async forget(memory, item) {
    try {
      await this.api.request("DELETE", `/api/v1/memories/${memory.id}`);
      item.remove();
      byId("no-memories").hidden = byId("memory-list").children.length > 0;
      this.notify("Forgotten.", { label: "Undo", run: () => this.restore(memory) });
    } catch (error) {
      this.showError(error);
    }
  }

  /** Undo: the memory is saved again (a new id; its links to source messages are gone). */
  async restore(memory) {
    try {
      const { content, kind, importance } = memory;
      await this.api.request("POST", "/api/v1/memories", { content, kind, importance });
      this.notify("Remembered again.");
      await this.refresh();
    } catch (error) {
      this.showError(error);
    }
  }

  async exportAll() {
    try {
      const { blob, filename } = await this.api.download("/api/v1/me/export");
      const url = URL.createObjectURL(blob);
      const link = el("a", { href: url, download: filename, hidden: true });
      document.body.append(link);
      link.click();
      link.remove();
      setTimeout(() => URL.revokeObjectURL(url), 10_000);
      this.notify(`Exported to ${filename}.`);
    } catch (error) {
      this.showError(error);
    }
  }

  askErase() {
    byId("erase-confirm").value = "";
    byId("erase-confirmed").disabled = true;
    byId("erase-dialog").showModal();
  }

  async closedErase() {
    const dialog = byId("erase-dialog");
    if (dialog.returnValue !== "erase" || byId("erase-confirm").value !== this.username()) return;
    dialog.returnValue = "";
    try {
      await this.api.request("DELETE", "/api/v1/me");
      this.onErased();
    } catch (error) {
      this.showError(error);
    }
  }

  clear() {
    byId("memory-query").value = "";
    byId("memory-list").replaceChildren();
    byId("no-memories").hidden = true;
  }
}
