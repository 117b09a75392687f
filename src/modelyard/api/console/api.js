/* The console's calls to the server (docs/console.md): the key from this tab's session storage
   as the Authorization header, the API's {"error": {code, message}} as an ApiError. */

export const KEY_ITEM = "modelyard.key";

/** The signed-in key's role and id (from /api/v1/whoami). */
export const session = { role: null, keyId: null, tenant: null };

export class ApiError extends Error {
  constructor(status, code, message) {
    super(message);
    this.status = status;
    this.code = code;
  }
}

let unauthorized = () => {};

/** What to do when the server no longer accepts the key (the console signs out). */
export function onUnauthorized(handler) {
  unauthorized = handler;
}

export async function failure(response) {
  let code = `http_${response.status}`, message = response.statusText || "the request failed";
  try {
    const body = await response.json();
    if (body && body.error) ({ code, message } = body.error);
  } catch (_) { /* not JSON: keep the status line */ }
  return new ApiError(response.status, code, message);
}

export async function call(path, { signal, accept = "application/json", method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY_ITEM)}`, Accept: accept };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const response = await fetch(path, {
    method, headers, signal, cache: "no-store", body: body === undefined ? undefined : JSON.stringify(body),
  });
  if (response.ok) return response;
  const error = await failure(response);
  if (response.status === 401) unauthorized(`The server no longer accepts this key: ${error.message}`);
  throw error;
}

export async function api(path, signal) {
  return (await call(path, { signal })).json();
}

/** Server-sent events from ``path`` (fetch, so the key travels as a header), to ``onEvent``. */
export async function stream(path, signal, onEvent) {
  const response = await call(path, { signal, accept: "text/event-stream" });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      let kind = "message", data = "";
      for (const line of block.split("\n")) {
        const colon = line.indexOf(":");
        if (colon === 0) continue; // a comment (keep-alive)
        const field = colon < 0 ? line : line.slice(0, colon);
        const text = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
        if (field === "event") kind = text;
        else if (field === "data") data += (data ? "\n" : "") + text;
      }
      if (data) onEvent(kind, JSON.parse(data));
    }
  }
}

/** ``promise``'s value, or the refusal a key's role may meet (403) so that the rest of a page
    still shows; anything else is thrown. */
export async function readable(promise) {
  try {
    return { value: await promise };
  } catch (error) {
    if (error.status === 403) return { error };
    throw error;
  }
}

/** Whether the signed-in key's role may make changes (what the server enforces; this only hides
    buttons that would be refused). */
export function mayChange() {
  return ["admin", "owner", "developer"].includes(session.role);
}
