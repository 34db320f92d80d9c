// Small DOM helpers. Text always goes in through textContent, never as HTML, so nothing a
// user or the model writes can become markup.

export const byId = (id) => document.getElementById(id);

/** Create an element: `el("li", {class: "x", text: "hi", "aria-label": "y"}, child, ...)`. */
export function el(tag, props = {}, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(props)) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  node.append(...children);
  return node;
}

const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: "medium", timeStyle: "short" });

export function when(iso) {
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? "" : dateTime.format(date);
}

export function percent(fraction) {
  return `${Math.round(fraction * 100)}%`;
}

/** Seconds as "0.42 s" or "12 ms". */
export function seconds(value) {
  if (!Number.isFinite(value)) return "–";
  return value < 1 ? `${Math.round(value * 1000)} ms` : `${value.toFixed(2)} s`;
}
