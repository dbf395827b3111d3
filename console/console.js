/**
 * The admin console (/admin/): an admin account signs in with the page's client key (the admin
 * key never reaches a page), then browses collections page by page, runs live queries, and edits
 * documents through the ordinary JS client. No build step: plain modules, no inline script.
 * @module
 */

import { Montybase, doc } from "/montybase.js";
import { locateNearest, valuePointer } from "./pointer.js";

const $ = (id) => document.getElementById(id);
const MAX_COLUMNS = 12;
const HEALTH_POINTS = 40;
const HEALTH_SECONDS = 5;

/** What the console shows now. */
const state = {
  db: null,
  path: null, // the open collection's segments
  query: null, // the query bar's query on it, without cursors
  pages: [], // the first document of each page before this one, to go back
  cursor: null, // the last document of the previous page (startAfter), or null on the first page
  docs: [], // the current page's documents
  more: false, // whether documents follow them
  stop: null, // the current page's listener
  editing: null, // {path, opened value as JSON, stop} of the document in the editor
  health: [],
};

// Elements

function element(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (name === "class") node.className = value;
    else if (name.startsWith("on")) node.addEventListener(name.slice(2), value);
    else node.setAttribute(name, value);
  }
  node.append(...children);
  return node;
}

function show(view) {
  for (const id of ["collection-view", "editor-view", "rules-view", "empty-view"]) $(id).hidden = id !== view;
}

/** A cell's text: a value in brief (strings as they are, the rest as compact JSON). */
function brief(value) {
  if (value === undefined) return "";
  const text = typeof value === "string" ? value : JSON.stringify(value);
  return text.length > 60 ? `${text.slice(0, 59)}…` : text;
}

function errorText(error) {
  return error?.reason ? `${error.reason}: ${error.message}` : String(error?.message ?? error);
}

// Signing in

async function start() {
  const config = await (await fetch("/client-config.json")).json();
  $("project").textContent = config.projectName ?? "";
  state.db = new Montybase(config);
  $("signin-view").hidden = false;
  $("email").focus();
  document.body.dataset.ready = "true";
}

async function signIn(event) {
  event.preventDefault();
  const out = $("signin-error");
  out.textContent = "";
  try {
    const user = await state.db.signIn($("email").value, $("password").value);
    if (!user.admin) {
      await state.db.signOut();
      out.textContent = "This account is not an admin account: the console needs one (montybase admins add).";
      return;
    }
    $("password").value = "";
    $("who-email").textContent = user.email;
    $("who").hidden = false;
    $("signin-view").hidden = true;
    $("app").hidden = false;
    await loadCollections();
    startHealth();
    document.body.dataset.signedIn = "true";
  } catch (error) {
    out.textContent = error?.reason === "UNAUTHENTICATED" ? "Wrong email or password." : errorText(error);
  }
}

async function signOut() {
  closeCollection();
  closeEditor();
  stopHealth();
  await state.db.signOut().catch(() => {});
  location.reload();
}

// The collection tree

async function loadCollections() {
  const list = $("collections");
  try {
    const { collections } = await state.db._backend.call("collections", {});
    list.replaceChildren(...collections.map(({ id, count }) => element("li", {},
      element("button", { type: "button", class: "collection", "data-id": id, onclick: () => openCollection([id]) },
        element("span", {}, id), element("span", { class: "count" }, count.toLocaleString())))));
    if (!collections.length) list.replaceChildren(element("li", { class: "muted" }, "No data yet."));
  } catch (error) {
    list.replaceChildren(element("li", { class: "error" }, errorText(error)));
  }
}

function openPath(event) {
  event.preventDefault();
  const parts = $("path").value.split("/").map((part) => part.trim()).filter(Boolean);
  if (parts.length % 2 === 1) openCollection(parts);
  else if (parts.length) openEditor(parts);
}

// A collection's documents: one page, live

function openCollection(path) {
  closeEditor();
  state.path = path;
  $("collection-title").textContent = path.join(" / ");
  for (const button of document.querySelectorAll("button.collection")) {
    button.toggleAttribute("aria-current", path.length === 1 && button.dataset.id === path[0]);
  }
  for (const id of ["where-field", "where-value", "order-field"]) $(id).value = "";
  $("limit").value = "25";
  show("collection-view");
  runQuery();
}

function buildQuery() {
  let query = doc(state.db, ...state.path);
  const field = $("where-field").value.trim();
  if (field) {
    let value;
    try {
      value = JSON.parse($("where-value").value);
    } catch {
      value = $("where-value").value; // plain text is a string
    }
    query = query.where(field, $("where-op").value, value);
  }
  const order = $("order-field").value.trim();
  if (order) query = query.orderBy(order, $("order-dir").value);
  return query;
}

function runQuery(event) {
  event?.preventDefault();
  $("query-error").textContent = "";
  try {
    state.query = buildQuery();
  } catch (error) {
    $("query-error").textContent = errorText(error);
    return;
  }
  state.pages = [];
  state.cursor = null;
  listenPage();
}

function limit() {
  const n = Number.parseInt($("limit").value, 10);
  return Number.isSafeInteger(n) && n > 0 ? Math.min(n, 500) : 25;
}

/** Listen to the current page: the query after `state.cursor`, `limit()` documents. */
function listenPage() {
  state.stop?.();
  let query = state.query;
  try {
    if (state.cursor) query = query.startAfter(state.cursor);
    query = query.limit(limit() + 1); // one more than shown: whether a next page exists
  } catch (error) {
    $("query-error").textContent = errorText(error);
    return;
  }
  $("live").textContent = "loading…";
  $("live").className = "live";
  let first = true;
  state.stop = query.onSnapshot((snapshot) => {
    const changed = first ? new Set() : new Set(snapshot.changes.filter((c) => c.type !== "removed").map((c) => c.id));
    first = false;
    state.docs = snapshot.docs.slice(0, limit());
    state.more = snapshot.docs.length > state.docs.length;
    renderTable(changed);
    $("live").textContent = "live";
    $("live").className = "live on";
  }, (error) => {
    $("query-error").textContent = errorText(error);
    $("live").textContent = "stopped";
    $("live").className = "live";
  });
}

function renderTable(changed) {
  const fields = [];
  for (const { value } of state.docs) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const key of Object.keys(value)) if (!fields.includes(key) && fields.length < MAX_COLUMNS) fields.push(key);
    }
  }
  const table = $("docs");
  table.tHead.replaceChildren(element("tr", {}, element("th", { scope: "col" }, "id"),
    ...fields.map((field) => element("th", { scope: "col" }, field))));
  table.tBodies[0].replaceChildren(...state.docs.map(({ id, value }) => {
    const object = value && typeof value === "object" && !Array.isArray(value) ? value : {};
    const row = element("tr", { "data-id": id, class: changed.has(id) ? "changed" : "" },
      element("th", { scope: "row" }, element("button", { type: "button", class: "link", onclick: () => openEditor([...state.path, id]) }, id)),
      ...fields.map((field) => element("td", typeof object[field] === "number" ? { class: "num" } : {}, brief(object[field]))));
    return row;
  }));
  const start = state.pages.length * limit();
  $("page-info").textContent = state.docs.length
    ? `documents ${(start + 1).toLocaleString()}–${(start + state.docs.length).toLocaleString()}`
    : "no documents here";
  $("prev-page").disabled = $("first-page").disabled = state.pages.length === 0;
  $("next-page").disabled = !state.more;
}

function nextPage() {
  if (!state.docs.length) return;
  state.pages.push(state.cursor);
  state.cursor = state.docs[state.docs.length - 1];
  listenPage();
}

function previousPage() {
  if (!state.pages.length) return;
  state.cursor = state.pages.pop();
  listenPage();
}

function firstPage() {
  state.pages = [];
  state.cursor = null;
  listenPage();
}

function closeCollection() {
  state.stop?.();
  state.stop = null;
}

// The editor

function openEditor(path, { fresh = false } = {}) {
  closeEditor();
  const title = fresh ? `New document in ${path.join(" / ")}` : path.join(" / ");
  $("editor-title").textContent = title;
  $("new-id-label").hidden = !fresh;
  $("delete").hidden = fresh;
  $("editor-error").textContent = "";
  $("json").removeAttribute("aria-invalid");
  $("stale").hidden = true;
  $("new-id").value = "";
  const editing = state.editing = { path, fresh, opened: null, current: null, stop: null, saving: false };
  show("editor-view");
  if (fresh) {
    $("json").value = "{\n  \n}";
    $("json").focus();
    return;
  }
  $("json").value = "";
  editing.stop = doc(state.db, ...path).onSnapshot((snapshot) => {
    const text = JSON.stringify(snapshot.value, null, 2);
    editing.current = snapshot.exists ? text : null;
    if (editing.opened === null && !editing.saving) { // the first snapshot fills the editor
      editing.opened = editing.current ?? "";
      $("json").value = snapshot.exists ? text : "{\n  \n}";
      $("json").focus();
      if (!snapshot.exists) $("editor-error").textContent = "No document here yet: Save creates it.";
      return;
    }
    if (editing.saving) return; // our own write coming back
    $("stale").hidden = editing.current === editing.opened;
    $("stale").firstChild.textContent = editing.current === null
      ? "Someone else deleted this document since you opened it. "
      : "Someone else changed this document since you opened it. ";
  }, (error) => {
    $("editor-error").textContent = errorText(error);
  });
}

function closeEditor() {
  state.editing?.stop?.();
  state.editing = null;
}

function backToTable() {
  closeEditor();
  show(state.path ? "collection-view" : "empty-view");
}

function reloadDocument() {
  const editing = state.editing;
  if (!editing) return;
  editing.opened = editing.current ?? "";
  $("json").value = editing.current ?? "{\n  \n}";
  $("stale").hidden = true;
}

/** Show an error at the field it names: the message, and the field selected in the editor. */
function showEditorError(error, text) {
  const pointer = valuePointer(error?.data?.path);
  const found = pointer === null ? null : locateNearest(text, pointer);
  const where = found ? ` (line ${found.line}, at ${pointer || "the document"})` : "";
  $("editor-error").textContent = `${errorText(error)}${where}`;
  $("editor-error").dataset.pointer = pointer ?? "";
  $("json").setAttribute("aria-invalid", "true");
  const box = $("json");
  box.focus();
  if (found) box.setSelectionRange(found.start, found.end);
}

async function save() {
  const editing = state.editing;
  if (!editing) return;
  const text = $("json").value;
  $("editor-error").textContent = "";
  $("json").removeAttribute("aria-invalid");
  let value;
  try {
    value = JSON.parse(text);
  } catch (error) {
    const at = /position (\d+)/.exec(error.message);
    $("editor-error").textContent = `Not valid JSON: ${error.message}`;
    $("json").setAttribute("aria-invalid", "true");
    if (at) $("json").setSelectionRange(Number(at[1]), Number(at[1]) + 1);
    return;
  }
  editing.saving = true;
  try {
    if (editing.fresh) {
      const id = $("new-id").value.trim();
      const collection = doc(state.db, ...editing.path);
      const made = id ? (await collection.append(id).set(value), id) : await collection.add(value);
      openEditor([...editing.path, made]);
      return;
    }
    await doc(state.db, ...editing.path).set(value);
    editing.opened = editing.current = JSON.stringify(value, null, 2);
    $("stale").hidden = true;
    $("editor-error").textContent = "Saved.";
  } catch (error) {
    showEditorError(error, text);
  } finally {
    editing.saving = false;
  }
}

async function confirmDelete() {
  const editing = state.editing;
  if (!editing) return;
  const dialog = $("confirm");
  $("confirm-text").textContent = `Delete ${editing.path.join(" / ")}? This cannot be undone.`;
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  if (dialog.returnValue !== "ok") return;
  try {
    editing.saving = true;
    await doc(state.db, ...editing.path).delete();
    backToTable();
  } catch (error) {
    showEditorError(error, $("json").value);
  } finally {
    editing.saving = false;
  }
}

// The rules dry run

function openRules() {
  closeEditor();
  show("rules-view");
  $("rules-path").value ||= state.path ? state.path.join("/") : "";
  $("rules-as").focus();
}

async function testRules(event) {
  event.preventDefault();
  const out = $("rules-result");
  out.className = "verdict";
  out.textContent = "";
  const who = $("rules-as").value === "user" ? `user:${$("rules-uid").value.trim()}` : $("rules-as").value;
  const params = { as: who, op: $("rules-op").value, path: $("rules-path").value.split("/").filter(Boolean) };
  if ($("rules-value").value.trim()) {
    try {
      params.value = JSON.parse($("rules-value").value);
    } catch (error) {
      out.textContent = `The value is not valid JSON: ${error.message}`;
      out.classList.add("error");
      return;
    }
  }
  try {
    const { allow, said } = await state.db._backend.call("rulesTest", params);
    out.textContent = said;
    out.classList.add(allow ? "allow" : "deny");
  } catch (error) {
    out.textContent = errorText(error);
    out.classList.add("error");
  }
}

// Server numbers (/healthz) as small live charts

let healthTimer = null;

async function pollHealth() {
  try {
    const health = await (await fetch("/healthz", { cache: "no-store" })).json();
    state.health.push({ documents: health.documents, connections: health.connections?.authenticated ?? 0 });
    state.health = state.health.slice(-HEALTH_POINTS);
    renderHealth(health);
  } catch {
    $("health").textContent = "unreachable";
  }
}

function sparkline(values) {
  if (values.length === 1) values = [values[0], values[0]]; // a flat line from the first poll on
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("viewBox", `0 0 ${HEALTH_POINTS - 1} 20`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  const low = Math.min(...values), high = Math.max(...values);
  const y = (v) => (high === low ? 10 : 18 - ((v - low) / (high - low)) * 16);
  const line = document.createElementNS(ns, "polyline");
  const offset = HEALTH_POINTS - values.length;
  line.setAttribute("points", values.map((v, i) => `${i + offset},${y(v).toFixed(2)}`).join(" "));
  svg.append(line);
  return svg;
}

function renderHealth(health) {
  const rows = [["documents", "documents"], ["connections", "connections"]].map(([key, label]) => {
    const values = state.health.map((point) => point[key]);
    return element("div", { class: "metric" },
      element("span", { class: "label" }, label),
      element("span", { class: "value" }, values[values.length - 1].toLocaleString()),
      sparkline(values));
  });
  const status = element("p", { class: health.status === "ok" ? "ok" : "error" },
    `${health.status} · storage ${health.storage} · up ${Math.round(health.uptimeSeconds / 60)} min`);
  $("health").replaceChildren(status, ...rows);
}

function startHealth() {
  pollHealth();
  healthTimer = setInterval(pollHealth, HEALTH_SECONDS * 1000);
}

function stopHealth() {
  clearInterval(healthTimer);
}

// Wiring

$("signin").addEventListener("submit", signIn);
$("signout").addEventListener("click", signOut);
$("refresh").addEventListener("click", loadCollections);
$("open-path").addEventListener("submit", openPath);
$("query").addEventListener("submit", runQuery);
$("new-doc").addEventListener("click", () => openEditor(state.path, { fresh: true }));
$("next-page").addEventListener("click", nextPage);
$("prev-page").addEventListener("click", previousPage);
$("first-page").addEventListener("click", firstPage);
$("save").addEventListener("click", save);
$("delete").addEventListener("click", confirmDelete);
$("close-editor").addEventListener("click", backToTable);
$("reload-doc").addEventListener("click", reloadDocument);
$("open-rules").addEventListener("click", openRules);
$("rules-form").addEventListener("submit", testRules);
$("rules-as").addEventListener("change", () => ($("rules-uid-label").hidden = $("rules-as").value !== "user"));
document.addEventListener("keydown", (event) => {
  if ((event.ctrlKey || event.metaKey) && event.key === "s" && state.editing) {
    event.preventDefault();
    save();
  } else if (event.key === "Escape" && state.editing && !$("confirm").open) {
    backToTable();
  }
});

start().catch((error) => {
  $("signin-view").hidden = false;
  $("signin-error").textContent = `The console could not start: ${errorText(error)}`;
  document.body.dataset.ready = "true";
});
