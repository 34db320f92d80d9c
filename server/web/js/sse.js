// Server-sent events read from a fetch() body. EventSource cannot POST a message or send an
// Authorization header, so the chat stream is parsed here: events are separated by a blank
// line; "event:" names one, "data:" lines carry its payload, lines starting ":" are comments.
// The server ends lines with "\n" (a "\r\n" is accepted too; a lone "\r" is not).

/**
 * Yield {type, data} for every complete event of a byte stream.
 * @param {ReadableStream<Uint8Array>} body
 */
export async function* readEvents(body) {
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let pending = "";
  let event = newEvent();
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      const lines = (pending + value).split(/\r?\n/);
      pending = lines.pop();
      for (const line of lines) {
        if (line === "") {
          if (event.data.length) yield { type: event.type, data: event.data.join("\n") };
          event = newEvent();
        } else {
          addField(event, line);
        }
      }
    }
  } finally {
    reader.cancel().catch(() => {});
  }
}

function newEvent() {
  return { type: "message", data: [] };
}

function addField(event, line) {
  if (line.startsWith(":")) return;
  const colon = line.indexOf(":");
  const field = colon < 0 ? line : line.slice(0, colon);
  let value = colon < 0 ? "" : line.slice(colon + 1);
  if (value.startsWith(" ")) value = value.slice(1);
  if (field === "event") event.type = value;
  else if (field === "data") event.data.push(value);
}
