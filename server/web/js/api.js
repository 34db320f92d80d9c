// The companion API as the page uses it: JSON requests with the access token, the streamed
// chat turn, and errors turned into words from the server's {"error": {code, message}} body.

import { readEvents } from "./sse.js";

const TOKEN_KEY = "companion.token";

/** An HTTP or network failure with a message fit to show the user. */
export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

export class Api {
  constructor() {
    // sessionStorage: the token survives a reload of this tab and is gone when the tab closes.
    this.token = sessionStorage.getItem(TOKEN_KEY);
    this.onUnauthorized = () => {};
  }

  get signedIn() {
    return Boolean(this.token);
  }

  setToken(token) {
    this.token = token;
    if (token) sessionStorage.setItem(TOKEN_KEY, token);
    else sessionStorage.removeItem(TOKEN_KEY);
  }

  async register(username, password) {
    return this.request("POST", "/api/v1/auth/register", { username, password });
  }

  async login(username, password) {
    const body = await this.request("POST", "/api/v1/auth/login", { username, password });
    this.setToken(body.access_token);
    return body;
  }

  /** A JSON request; resolves to the parsed body (null for 204), rejects with an ApiError. */
  async request(method, path, body) {
    const response = await this.fetch(path, { method, body });
    return response.status === 204 ? null : response.json();
  }

  /** A file the server sends as an attachment, with the name it suggests. */
  async download(path) {
    const response = await this.fetch(path, { method: "GET" });
    const disposition = response.headers.get("content-disposition") || "";
    const match = /filename="([^"]+)"/.exec(disposition);
    return { blob: await response.blob(), filename: match ? match[1] : "companion-export.json" };
  }

  /**
   * One chat turn as a stream of {type, data} events: "meta", "token"..., then "done"
   * (or "error"). Aborting `signal` closes the connection, which stops the generation.
   */
  turn(conversationId, content, signal) {
    return this.events(`${conversationPath(conversationId)}/messages`, { content }, signal);
  }

  /** A new reply to the conversation's last message (replacing its reply, once complete,
   * when it has one): the same events. */
  regenerate(conversationId, signal) {
    return this.events(`${conversationPath(conversationId)}/regenerate`, undefined, signal);
  }

  /** The user's last message changed and answered anew (the old one and its reply are
   * replaced): the same events, with the edited message's new id in "done". */
  edit(conversationId, messageId, content, signal) {
    const path = `${conversationPath(conversationId)}/messages/${messageId}`;
    return this.events(path, { content }, signal, "PATCH");
  }

  async *events(path, body, signal, method = "POST") {
    const response = await this.fetch(path, {
      method,
      body,
      signal,
      accept: "text/event-stream",
    });
    for await (const event of readEvents(response.body)) {
      yield { type: event.type, data: JSON.parse(event.data) };
    }
  }

  async fetch(path, { method, body, signal, accept = "application/json" }) {
    const headers = { Accept: accept };
    if (this.token) headers.Authorization = `Bearer ${this.token}`;
    if (body !== undefined) headers["Content-Type"] = "application/json";
    let response;
    try {
      response = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        signal,
      });
    } catch (error) {
      if (error.name === "AbortError") throw error;
      throw new ApiError(0, "network", "The server cannot be reached. Is it running?");
    }
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401 && this.token) this.onUnauthorized(error);
      throw error;
    }
    return response;
  }
}

function conversationPath(conversationId) {
  return `/api/v1/conversations/${encodeURIComponent(conversationId)}`;
}

async function errorOf(response) {
  let code = `http_${response.status}`;
  let message = `The server answered ${response.status} ${response.statusText}.`.trim();
  try {
    const { error } = await response.json();
    if (error && error.message) {
      code = error.code || code;
      message = withDetails(error.message, error.details);
    }
  } catch {
    // not JSON (a proxy's error page, say): keep the status line
  }
  return new ApiError(response.status, code, message);
}

function withDetails(message, details) {
  if (!Array.isArray(details) || details.length === 0) return message;
  const parts = details.map((d) => (d.key ? `${d.key}: ${d.message}` : d.message)).filter(Boolean);
  return parts.length ? `${message} (${parts.join("; ")})` : message;
}
