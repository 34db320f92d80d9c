// Markdown for replies: the subset chat models write, built as DOM nodes.
//
// Why our own: the page has no build step and its CSP allows scripts from this origin only,
// so a library would be vendored here; the maintained ones (marked, markdown-it) produce an
// HTML string that must then go through a sanitizer (DOMPurify) before innerHTML. Building
// elements directly never parses model text as HTML, so there is nothing to sanitize: every
// piece of text enters through a text node. What is covered:
//
// - blocks: paragraphs (a single newline is a line break), fenced code (``` with an
//   optional language), headings (#..######, shown as bold lines: a reply is not a
//   document with its own outline), bullet lists (-, *, +), numbered lists (1. or 1)),
//   block quotes (>), horizontal rules (---);
// - inline: `code`, **bold** / __bold__, *italic* / _italic_, ~~struck~~, and links
//   [text](url) for http(s) and mailto addresses only (others stay text), opened in a
//   new tab without a referrer.
//
// Unclosed markers stay as typed, so a reply being streamed renders sensibly at every token.

const FENCE = /^\s*(```|~~~)\s*([\w+-]*)\s*$/;
const HEADING = /^\s{0,3}(#{1,6})\s+(.*?)\s*#*\s*$/;
const BULLET = /^\s{0,3}[-*+]\s+(.*)$/;
const NUMBERED = /^\s{0,3}(\d{1,9})[.)]\s+(.*)$/;
const QUOTE = /^\s{0,3}>\s?(.*)$/;
const RULE = /^\s{0,3}([-*_])(\s*\1){2,}\s*$/;
const SAFE_LINK = /^(https?:\/\/|mailto:)/i;

/** Render `source` into `target`, replacing what it held. */
export function renderMarkdown(target, source) {
  target.replaceChildren(...blocks(source.replace(/\r\n?/g, "\n").split("\n")));
}

function blocks(lines) {
  const out = [];
  let i = 0;
  while (i < lines.length) {
    const line = lines[i];
    const fence = line.match(FENCE);
    if (fence) {
      const body = [];
      i += 1;
      while (i < lines.length && !lines[i].trim().startsWith(fence[1])) body.push(lines[i++]);
      i += 1; // the closing fence (or the end of a reply still streaming)
      out.push(codeBlock(body.join("\n"), fence[2]));
    } else if (!line.trim()) {
      i += 1;
    } else if (RULE.test(line)) {
      out.push(document.createElement("hr"));
      i += 1;
    } else if (HEADING.test(line)) {
      const [, , text] = line.match(HEADING);
      const node = element("p", "md-heading");
      node.append(element("strong", null, ...inline(text)));
      out.push(node);
      i += 1;
    } else if (QUOTE.test(line)) {
      const quoted = [];
      while (i < lines.length && QUOTE.test(lines[i])) quoted.push(lines[i++].match(QUOTE)[1]);
      out.push(element("blockquote", null, ...blocks(quoted)));
    } else if (BULLET.test(line) || NUMBERED.test(line)) {
      const numbered = !BULLET.test(line);
      const pattern = numbered ? NUMBERED : BULLET;
      const list = element(numbered ? "ol" : "ul");
      if (numbered) {
        const first = Number(line.match(NUMBERED)[1]);
        if (first !== 1) list.setAttribute("start", String(first));
      }
      while (i < lines.length && pattern.test(lines[i])) {
        const match = lines[i++].match(pattern);
        list.append(element("li", null, ...inline(numbered ? match[2] : match[1])));
      }
      out.push(list);
    } else {
      const paragraph = [];
      while (i < lines.length && lines[i].trim() && !startsBlock(lines[i])) paragraph.push(lines[i++]);
      const node = element("p");
      paragraph.forEach((text, n) => {
        if (n > 0) node.append(document.createElement("br"));
        node.append(...inline(text));
      });
      out.push(node);
    }
  }
  return out;
}

function startsBlock(line) {
  return [FENCE, HEADING, BULLET, NUMBERED, QUOTE, RULE].some((pattern) => pattern.test(line));
}

function codeBlock(text, language) {
  const code = element("code");
  code.textContent = text;
  if (language) code.dataset.language = language;
  return element("pre", null, code);
}

// Inline spans, outermost first: code (whose content is literal), links, then emphasis.
const SPANS = [
  { pattern: /`([^`\n]+)`/, make: (m) => literal("code", m[1]) },
  { pattern: /\[([^\]\n]+)\]\(([^)\s]+)\)/, make: (m) => link(m[1], m[2]) },
  { pattern: /\*\*(?=\S)(.+?)(?<=\S)\*\*|__(?=\S)(.+?)(?<=\S)__/, make: (m) => wrap("strong", m[1] ?? m[2]) },
  { pattern: /~~(?=\S)(.+?)(?<=\S)~~/, make: (m) => wrap("del", m[1]) },
  {
    pattern: /(?<![\w*])\*(?=[^\s*])(.+?)(?<=[^\s*])\*(?![\w*])|(?<![\w_])_(?=[^\s_])(.+?)(?<=[^\s_])_(?![\w_])/,
    make: (m) => wrap("em", m[1] ?? m[2]),
  },
];

/** The nodes of one line of text: the earliest span found is built, the rest recursed on. */
function inline(text) {
  let best = null;
  for (const span of SPANS) {
    const match = span.pattern.exec(text);
    if (match && (best === null || match.index < best.match.index)) best = { span, match };
  }
  if (best === null) return text ? [document.createTextNode(text)] : [];
  const { span, match } = best;
  const before = text.slice(0, match.index);
  const after = text.slice(match.index + match[0].length);
  return [...inline(before), span.make(match), ...inline(after)];
}

function wrap(tag, text) {
  return element(tag, null, ...inline(text));
}

function literal(tag, text) {
  const node = element(tag);
  node.textContent = text;
  return node;
}

function link(text, href) {
  if (!SAFE_LINK.test(href)) return document.createTextNode(`[${text}](${href})`);
  const node = element("a", null, ...inline(text));
  node.href = href;
  node.rel = "noopener noreferrer nofollow";
  node.target = "_blank";
  return node;
}

function element(tag, className = null, ...children) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  node.append(...children);
  return node;
}
