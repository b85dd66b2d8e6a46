// The REST API, as the page calls it: the session cookie goes along (same origin), and every change carries the
// header that tells the service it comes from this page (a page of another site cannot send it here).

export class ApiError extends Error {
  constructor(status, error) {
    super(error.message + (error.hint ? " (" + error.hint + ")" : ""));
    this.status = status;
    this.type = error.type;
    this.details = error.details || {};  // what the error says beyond words: a specfile error's line
  }
}

let onLoggedOut = () => {};
export function whenLoggedOut(callback) { onLoggedOut = callback; }

export async function api(method, path, body) {
  const headers = {"X-Minivisor-CSRF": "1"};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {method, headers, credentials: "same-origin", cache: "no-store",
                                      body: body === undefined ? undefined : JSON.stringify(body)});
  let data = null;
  try { data = await response.json(); } catch { /* no JSON: described below */ }
  if (response.ok) return data;
  if (response.status === 401 && path !== "/v1/session") onLoggedOut();
  throw new ApiError(response.status, data && data.error ? data.error
    : {message: "the service answered " + response.status + " " + response.statusText});
}

export const vmPath = (name, rest = "") => "/v1/vms/" + encodeURIComponent(name) + rest;

// Server-sent events read with fetch (EventSource hands over only the event types it is told of).
// The service writes a keep-alive every 15 s: a stream silent for longer than this has stalled (the network went
// away under it: a laptop's sleep, a lost route), and is given up, so that the caller reconnects.
const STALLED_MS = 40_000;

export async function follow(onEvent) {
  const stop = new AbortController();
  let stalled = setTimeout(() => stop.abort(), STALLED_MS);
  try {
    const response = await fetch("/v1/events", {credentials: "same-origin", cache: "no-store", signal: stop.signal});
    if (!response.ok) throw new ApiError(response.status, {message: "the event stream was refused"});
    await readEvents(response.body.getReader(), onEvent, () => {
      clearTimeout(stalled);
      stalled = setTimeout(() => stop.abort(), STALLED_MS);
    });
  } finally {
    clearTimeout(stalled);
  }
}

async function readEvents(reader, onEvent, heard) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const {value, done} = await reader.read();
    if (done) return;
    heard();
    buffer += decoder.decode(value, {stream: true});
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const chunk = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      const data = chunk.split("\n").filter((l) => l.startsWith("data: ")).map((l) => l.slice(6)).join("");
      if (data) onEvent(JSON.parse(data));
    }
  }
}
