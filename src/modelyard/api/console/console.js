/* ModelYard console (docs/console.md): a page over the REST API, with no build step and no
   framework. The API key stays in this tab's sessionStorage and leaves it only as the
   Authorization header of same-origin calls. Every value from the server enters the page as
   text (textContent or a text node), never as markup. This module signs in and shows the page
   the address names (pages.js); api.js talks to the server, dom.js and charts.js draw. */

import { KEY_ITEM, failure, onUnauthorized, session } from "./api.js";
import { el, errorBox, link } from "./dom.js";
import { PAGES } from "./pages.js";

const main = document.getElementById("main");

/** The page shown: navigating away aborts its calls and stops its timers. */
let view = null;

function signIn(message) {
  document.getElementById("nav").hidden = true;
  document.getElementById("sign-out").hidden = true;
  document.getElementById("who").textContent = "";
  const input = el("input", { id: "key", type: "password", autocomplete: "off", required: true, placeholder: "my_..." });
  const note = el("div");
  if (message) note.append(el("div", { class: "error", role: "alert", text: message }));
  const form = el("form", { class: "sign-in" }, el("h1", { text: "Sign in" }), note,
    el("label", { for: "key", text: "API key" }), input,
    el("p", { text: "Any key of yours works; what you see is what its role may read. The key stays in this browser tab (session storage) until you sign out or close it." }),
    el("button", { type: "submit", text: "Sign in" }));
  form.addEventListener("submit", async (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_ITEM, input.value.trim());
    try {
      await whoami();
      show();
    } catch (error) {
      sessionStorage.removeItem(KEY_ITEM);
      note.replaceChildren(el("div", { class: "error", role: "alert", text: `That key was refused: ${error.message}` }));
    }
  });
  main.replaceChildren(form);
  input.focus();
}

function signOut(message) {
  sessionStorage.removeItem(KEY_ITEM);
  session.role = null;
  session.keyId = null;
  session.tenant = null;
  stop();
  view = null;
  signIn(message);
}

async function whoami() {
  const response = await fetch("/api/v1/whoami", { headers: { Authorization: `Bearer ${sessionStorage.getItem(KEY_ITEM)}` }, cache: "no-store" });
  if (!response.ok) throw await failure(response);
  const me = await response.json();
  session.role = me.role;
  session.keyId = me.key_id;
  session.tenant = me.tenant;
  for (const id of ["nav-keys", "nav-audit"]) document.getElementById(id).hidden = !["admin", "owner"].includes(me.role);
  document.getElementById("nav-tenants").hidden = me.role !== "admin";
  document.getElementById("who").textContent = `${me.tenant} · ${me.role} · ModelYard ${me.server_version}`;
  document.getElementById("nav").hidden = false;
  document.getElementById("sign-out").hidden = false;
  return me;
}

function stop() {
  if (!view) return;
  view.controller.abort();
  view.timers.forEach(clearInterval);
}

async function show() {
  stop();
  if (!sessionStorage.getItem(KEY_ITEM)) {
    view = null;
    signIn();
    return;
  }
  const hash = window.location.hash || "#/";
  const controller = new AbortController();
  const page = { controller, signal: controller.signal, timers: [], active: () => page === view, reload: show };
  page.render = (nodes) => { if (page === view) main.replaceChildren(...nodes.flat().filter(Boolean)); };
  view = page;
  for (const a of document.querySelectorAll("#nav a")) {
    const target = a.getAttribute("href");
    a.classList.toggle("current", target === "#/" ? hash === "#/" : hash.startsWith(target));
  }
  const match = PAGES.map(([pattern, render]) => [pattern.exec(hash), render]).find(([m]) => m);
  if (!match) {
    page.render([el("h1", { text: "Not found" }), el("p", {}, "No page here. ", link("#/", "Back to the overview"), ".")]);
    return;
  }
  const [found, render] = match;
  main.replaceChildren(el("p", { class: "muted", text: "Loading…" }));
  try {
    if (!document.getElementById("who").textContent) await whoami();
    const nodes = await render(page, ...found.slice(1).map(decodeURIComponent));
    if (nodes) page.render(nodes);
  } catch (error) {
    if (page !== view || error.name === "AbortError") return;
    if (error.status === 401) signOut(`The server no longer accepts this key: ${error.message}`);
    else page.render([errorBox(error)]);
  }
}

onUnauthorized(signOut);
document.getElementById("sign-out").addEventListener("click", () => signOut());
window.addEventListener("hashchange", show);
show();
