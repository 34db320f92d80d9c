// Start-up and the page frame: sign in / sign up, the panels, errors and notices.

import { Api } from "./api.js";
import { ChatView } from "./chat.js";
import { byId } from "./dom.js";
import { MemoryPanel } from "./memories.js";
import { StatusPanel } from "./status.js";

const PHONE = window.matchMedia("(max-width: 760px)");
const api = new Api();
let username = "";

function showError(error) {
  const message = error?.message || String(error);
  byId("error-text").textContent = message;
  byId("error").hidden = false;
}

function clearError() {
  byId("error").hidden = true;
  byId("error-text").textContent = "";
}

const NOTICE_S = 8;
let noticeTimer = null;

/** A short notice under the top bar: it goes by itself after a few seconds or with its close
 * button; `action` ({label, run}) adds a button, such as Undo, that also dismisses it. */
function notify(text, action = null) {
  clearTimeout(noticeTimer);
  byId("notice-text").textContent = text;
  const button = byId("notice-action");
  button.hidden = !action;
  button.textContent = action ? action.label : "";
  button.onclick = action
    ? () => {
        dismissNotice();
        action.run();
      }
    : null;
  byId("notice").hidden = false;
  noticeTimer = setTimeout(dismissNotice, NOTICE_S * 1000);
}

function dismissNotice() {
  clearTimeout(noticeTimer);
  byId("notice").hidden = true;
}

byId("notice-dismiss").addEventListener("click", dismissNotice);

// --- theme: the system's, or the one chosen here (kept in this browser)

const THEME_KEY = "companion.theme";

function applyTheme(theme) {
  if (theme === "light" || theme === "dark") document.documentElement.dataset.theme = theme;
  else delete document.documentElement.dataset.theme;
  byId("theme").value = theme === "light" || theme === "dark" ? theme : "system";
}

applyTheme(localStorage.getItem(THEME_KEY));
byId("theme").addEventListener("change", (event) => {
  const theme = event.target.value;
  if (theme === "system") localStorage.removeItem(THEME_KEY);
  else localStorage.setItem(THEME_KEY, theme);
  applyTheme(theme);
});

const status = new StatusPanel(api, { showError });
const chat = new ChatView(api, {
  showError,
  notify,
  onReply: (done, ttft) => status.showReply(done, ttft),
  onOpened: () => {
    if (PHONE.matches) setDrawer("chats", false);
  },
});
const memories = new MemoryPanel(api, {
  showError,
  notify,
  username: () => username,
  onErased: () => signOut("Your account and everything stored about it were erased."),
});

// --- panels

function setDrawer(name, open) {
  const node = byId(name);
  if (name === "chats") node.classList.toggle("open", open);
  else node.hidden = !open;
  byId(`toggle-${name}`).setAttribute("aria-expanded", String(open));
}

function togglePanel(name) {
  const open = byId(`toggle-${name}`).getAttribute("aria-expanded") !== "true";
  for (const other of ["chats", "memories", "status"]) {
    if (other !== name) setDrawer(other, false);
  }
  setDrawer(name, open);
  if (open && name === "memories") memories.refresh();
  if (open && name === "status") status.refresh();
}

for (const name of ["chats", "memories", "status"]) {
  byId(`toggle-${name}`).addEventListener("click", () => togglePanel(name));
}
for (const button of document.querySelectorAll("[data-close]")) {
  button.addEventListener("click", () => {
    setDrawer(button.dataset.close, false);
    byId(`toggle-${button.dataset.close}`).focus();
  });
}
document.addEventListener("keydown", (event) => {
  if (event.key !== "Escape") return;
  for (const name of ["memories", "status"]) setDrawer(name, false);
});

// --- signing in and out

async function signedIn() {
  const me = await api.request("GET", "/api/v1/me");
  username = me.username;
  byId("who").textContent = `Signed in as ${me.username}`;
  byId("auth").hidden = true;
  byId("app").hidden = false;
  byId("topnav").hidden = false;
  await chat.start();
}

function signOut(message) {
  api.setToken(null);
  username = "";
  chat.clear();
  memories.clear();
  status.clear();
  for (const name of ["chats", "memories", "status"]) setDrawer(name, false);
  byId("app").hidden = true;
  byId("topnav").hidden = true;
  byId("auth").hidden = false;
  byId("auth-password").value = "";
  if (message) notify(message);
  byId("auth-username").focus();
}

async function authenticate(register) {
  const form = byId("auth-form");
  if (!form.reportValidity()) return;
  const name = byId("auth-username").value.trim();
  const password = byId("auth-password").value;
  clearError();
  dismissNotice();
  try {
    if (register) await api.register(name, password);
    await api.login(name, password);
    await signedIn();
  } catch (error) {
    showError(error);
  }
}

byId("auth-form").addEventListener("submit", (event) => {
  event.preventDefault();
  authenticate(false);
});
byId("signup").addEventListener("click", () => authenticate(true));
byId("logout").addEventListener("click", () => signOut("You are signed out."));
byId("error-dismiss").addEventListener("click", clearError);

api.onUnauthorized = () => signOut("Your session has ended. Please sign in again.");

// Whatever goes wrong is said in words on the page, never a blank screen.
window.addEventListener("error", (event) => showError(`The page hit an error: ${event.message}`));
window.addEventListener("unhandledrejection", (event) => showError(event.reason));

async function boot() {
  if (!api.signedIn) {
    signOut();
    return;
  }
  try {
    await signedIn();
  } catch (error) {
    if (api.signedIn) showError(error);
    else signOut();
  }
}

boot();
