/**
 * The admin console (/admin/): an admin account signs in with the page's client key (the admin
 * key never reaches a page), then browses collections page by page, runs live queries, and edits
 * documents through the ordinary JS client. No build step: plain modules, no inline script.
 * @module
 */

import { Montybase, doc } from "/montybase.js";
import { locateNearest, segments, valuePointer } from "./pointer.js";

const $ = (id) => document.getElementById(id);
const MAX_COLUMNS = 12;
const STATUS_SECONDS = 2; // the Server view asks for the numbers this often…
const STATUS_POINTS = 150; // …and charts this many of them: the last 5 minutes
const ACCOUNTS_PAGE = 50;

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
  listening: null, // its identity, which a drawing it scheduled checks
  editing: null, // {path, opened value as JSON, stop} of the document in the editor
  collections: [], // the top-level collections, as the tree shows them
  rules: null, // the rules as the server runs them: {pattern: rule}
  rulesEdited: false, // whether the cards differ from them
  accounts: { search: "", pages: [], after: null, next: null },
  samples: [], // the Server view's numbers, oldest first: {time, documents, …, requests, writes}
  status: null, // the newest serverStatus answer
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
  for (const id of ["collection-view", "editor-view", "empty-view"]) $(id).hidden = id !== view;
}

const PAGES = { data: "app", rules: "rules-page", accounts: "accounts-page", server: "server-page" };

/** Show one of the four views (Data, Rules, Accounts, Server). */
function openTab(name) {
  for (const [tab, id] of Object.entries(PAGES)) {
    $(id).hidden = tab !== name;
    if (tab === name) $(`tab-${tab}`).setAttribute("aria-current", "page");
    else $(`tab-${tab}`).removeAttribute("aria-current");
  }
  document.body.dataset.view = name;
  if (name === "rules" && !state.rulesEdited) loadRules();
  if (name === "accounts") loadAccounts();
  if (name === "server") renderServer();
}

/** Ask before something that cannot be undone: true if the admin said `ok`. */
async function confirmed(text, ok = "Delete") {
  const dialog = $("confirm");
  $("confirm-text").textContent = text;
  $("confirm-ok").textContent = ok;
  dialog.returnValue = "";
  dialog.showModal();
  await new Promise((resolve) => dialog.addEventListener("close", resolve, { once: true }));
  return dialog.returnValue === "ok";
}

/** A time (ms since 1970) for a table: the local date and time, or a dash. */
function when(ms) {
  return ms == null ? "—" : new Date(ms).toLocaleString(undefined, { dateStyle: "short", timeStyle: "medium" });
}

/** How long ago, in brief: "12 s ago", "5 min ago", "3 h ago", "2 d ago". */
function ago(ms, now = Date.now()) {
  if (ms == null) return "never";
  const seconds = Math.max(0, Math.round((now - ms) / 1000));
  if (seconds < 90) return `${seconds} s ago`;
  if (seconds < 90 * 60) return `${Math.round(seconds / 60)} min ago`;
  if (seconds < 36 * 3600) return `${Math.round(seconds / 3600)} h ago`;
  return `${Math.round(seconds / 86400)} d ago`;
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
    $("tabs").hidden = false;
    $("signin-view").hidden = true;
    openTab("data");
    await loadCollections();
    startStatus();
    document.body.dataset.signedIn = "true";
  } catch (error) {
    out.textContent = error?.reason === "UNAUTHENTICATED" ? "Wrong email or password." : errorText(error);
  }
}

async function signOut() {
  closeCollection();
  closeEditor();
  stopStatus();
  await state.db.signOut().catch(() => {});
  location.reload();
}

// The collection tree

async function loadCollections() {
  const list = $("collections");
  try {
    const { collections } = await state.db._backend.call("collections", {});
    state.collections = collections.map(({ id }) => id);
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
  let pending = null; // the newest snapshot not yet drawn, and the ids changed since the last drawing
  const listening = (state.listening = {}); // a drawing due after the page changed is dropped
  const draw = (snapshot, changed) => {
    state.docs = snapshot.docs.slice(0, limit());
    state.more = snapshot.docs.length > state.docs.length;
    renderTable(changed);
    $("live").textContent = "live";
    $("live").className = "live on";
  };
  state.stop = query.onSnapshot((snapshot) => {
    if (first) { // the page's first state: drawn at once
      first = false;
      draw(snapshot, new Set());
      return;
    }
    const changed = pending?.changed ?? new Set();
    for (const change of snapshot.changes) if (change.type !== "removed") changed.add(change.id);
    // Then at most one drawing a frame: under a stream of writes the page draws what is newest, never falls behind.
    if (pending === null) requestAnimationFrame(() => {
      const due = pending;
      pending = null;
      if (state.listening === listening) draw(due.snapshot, due.changed);
    });
    pending = { snapshot, changed };
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
  if (!await confirmed(`Delete ${editing.path.join(" / ")}? This cannot be undone.`)) return;
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

// The rules: shown and edited per collection pattern, applied to the config file

/** The rule cards, in the order shown. */
function ruleCards() {
  return [...$("rules-list").querySelectorAll(".rule")];
}

/** Note that the rules shown differ from the running ones (true) or not; a view switch keeps edits. */
function rulesEdited(edited) {
  state.rulesEdited = edited;
  $("rules-status").textContent = edited ? "Not applied yet." : "";
  $("rules-status").className = "muted";
}

async function loadRules() {
  $("rules-error").textContent = "";
  try {
    const { rules, file } = await state.db._backend.call("rulesGet", {});
    state.rules = rules ?? {};
    $("rules-file").textContent = `in ${file}`;
    $("rules-previous").textContent = `${file}.previous`;
    renderRules(state.rules);
  } catch (error) {
    $("rules-error").textContent = errorText(error);
  }
}

function renderRules(rules) {
  $("rules-list").replaceChildren(...Object.entries(rules).map(([pattern, rule]) => ruleCard(pattern, rule)));
  const uncovered = state.collections.filter((id) => !Object.keys(rules).some((pattern) => covers(pattern, id)));
  $("rules-list").append(element("p", { class: "muted uncovered" }, ...(uncovered.length
    ? ["No rule (client keys may do nothing there): ",
      ...uncovered.map((id) => element("button", { type: "button", class: "chip", "data-id": id, title: `add a rule for ${id}`, onclick: () => addRule(id) }, `+ ${id}`))]
    : ["Every top-level collection has a rule."])));
}

/** Whether a rule's pattern matches the top-level collection `id`. */
function covers(pattern, id) {
  return pattern === "**" || pattern === "*" || pattern === id;
}

function ruleCard(pattern, rule, changed = false) {
  const text = JSON.stringify(rule, null, 2);
  const box = element("textarea", { class: "rule-json", spellcheck: "false", "aria-label": `rule for ${pattern} (JSON)`,
    rows: String(Math.min(Math.max(text.split("\n").length, 3), 18)) });
  box.value = text;
  const card = element("section", { class: "rule", "data-pattern": pattern },
    element("header", {},
      element("h3", {}, element("code", {}, pattern)),
      element("button", { type: "button", class: "quiet", "aria-label": `remove the rule for ${pattern}`,
        onclick: () => { card.remove(); rulesEdited(true); } }, "Remove")),
    box,
    element("p", { class: "error", role: "alert" }));
  card.dataset.changed = String(changed);
  box.addEventListener("input", () => {
    card.dataset.changed = "true";
    rulesEdited(true);
  });
  return card;
}

function addRule(pattern) {
  if (!pattern) return;
  const existing = ruleCards().find((card) => card.dataset.pattern === pattern);
  if (existing) {
    existing.querySelector("textarea").focus();
    return;
  }
  const card = ruleCard(pattern, { read: "none", write: "none" }, true);
  for (const chip of $("rules-list").querySelectorAll("button.chip")) if (chip.dataset.id === pattern) chip.remove();
  $("rules-list").insertBefore(card, $("rules-list").querySelector(".uncovered"));
  $("rule-pattern").value = "";
  rulesEdited(true);
  card.querySelector("textarea").focus();
}

/** Show an error at its rule and field: the message under the card, the field selected. */
function showRuleError(card, message, pointer, after = "") {
  const box = card.querySelector("textarea");
  const found = pointer === null ? null : locateNearest(box.value, pointer);
  card.querySelector(".error").textContent = `${message}${found && pointer ? ` (line ${found.line})` : ""}${after}`;
  box.setAttribute("aria-invalid", "true");
  box.focus();
  if (found) box.setSelectionRange(found.start, found.end);
}

async function applyRules() {
  $("rules-error").textContent = $("rules-status").textContent = "";
  const rules = {};
  for (const card of ruleCards()) {
    card.querySelector(".error").textContent = "";
    card.querySelector("textarea").removeAttribute("aria-invalid");
  }
  for (const card of ruleCards()) {
    try {
      rules[card.dataset.pattern] = JSON.parse(card.querySelector("textarea").value);
    } catch (error) {
      showRuleError(card, `Not valid JSON: ${error.message}`, null);
      return;
    }
  }
  $("rules-apply").disabled = true;
  try {
    const { previous } = await state.db._backend.call("rulesApply", { rules });
    await loadRules();
    rulesEdited(false);
    $("rules-status").className = "ok";
    $("rules-status").textContent = `Applied at ${new Date().toLocaleTimeString()}; the file before is kept as ${previous}.`;
    document.body.dataset.rulesApplied = String(Number(document.body.dataset.rulesApplied ?? 0) + 1);
  } catch (error) {
    const parts = typeof error?.data?.path === "string" ? segments(error.data.path) : [];
    const card = parts[0] === "rules" && parts.length > 1 ? ruleCards().find((c) => c.dataset.pattern === parts[1]) : null;
    const pointer = parts.slice(2).map((part) => `/${part.replaceAll("~", "~0").replaceAll("/", "~1")}`).join("");
    if (card) showRuleError(card, errorText(error), pointer, " — nothing was applied");
    else $("rules-error").textContent = `${errorText(error)} — nothing was applied`;
  } finally {
    $("rules-apply").disabled = false;
  }
}

// The rules dry run

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

// Accounts: search, sessions, disable, delete

async function loadAccounts() {
  const view = state.accounts;
  $("accounts-error").textContent = "";
  try {
    const params = { limit: ACCOUNTS_PAGE, search: view.search };
    if (view.after !== null) params.after = view.after;
    const { accounts, next } = await state.db._backend.call("accountsList", params);
    view.next = next;
    renderAccounts(accounts);
  } catch (error) {
    $("accounts-error").textContent = errorText(error);
  }
}

function renderAccounts(accounts) {
  const view = state.accounts;
  $("accounts").tBodies[0].replaceChildren(...accounts.map((account) => {
    const act = (label, method, attributes = {}) => element("button", { type: "button", ...attributes,
      onclick: () => accountAction(account, method) }, label);
    const admin = account.admin ? { disabled: "", title: "an admin account: montybase admins remove it first" } : {};
    return element("tr", { "data-email": account.email, class: account.disabled ? "disabled" : "" },
      element("th", { scope: "row" }, account.email),
      element("td", { "data-label": "Signed up", title: account.created ? new Date(account.created).toISOString() : "" }, when(account.created)),
      element("td", { "data-label": "Last sign-in", title: account.lastSignIn ? new Date(account.lastSignIn).toISOString() : "" }, when(account.lastSignIn)),
      element("td", { "data-label": "Sessions", class: "num" }, String(account.sessions)),
      element("td", { "data-label": "State" }, account.admin ? "admin" : account.disabled ? "disabled" : "active"),
      element("td", { class: "actions-cell" }, element("div", { class: "row-actions" },
        act("Sign out everywhere", "accountsSignOut", account.sessions ? {} : { disabled: "" }),
        account.disabled ? act("Enable", "accountsEnable") : act("Disable", "accountsDisable", admin),
        act("Delete…", "accountsDelete", { class: "danger", ...admin }))));
  }));
  if (!accounts.length) {
    $("accounts").tBodies[0].replaceChildren(element("tr", {}, element("td", { colspan: "6", class: "muted" },
      view.search ? `No account's email contains “${view.search}”.` : "No accounts yet.")));
  }
  $("accounts-info").textContent = accounts.length
    ? `${(view.pages.length * ACCOUNTS_PAGE + 1).toLocaleString()}–${(view.pages.length * ACCOUNTS_PAGE + accounts.length).toLocaleString()}`
    : "";
  $("accounts-first").disabled = view.pages.length === 0;
  $("accounts-more").disabled = view.next === null;
}

async function accountAction(account, method) {
  if (method === "accountsDelete"
    && !await confirmed(`Delete the account ${account.email} and end its ${account.sessions} sessions? This cannot be undone.`)) return;
  if (method === "accountsDisable"
    && !await confirmed(`Disable ${account.email}? Its connections close and it cannot sign in until enabled.`, "Disable")) return;
  try {
    const result = await state.db._backend.call(method, { email: account.email });
    const done = { accountsSignOut: "signed out everywhere", accountsDisable: "disabled", accountsEnable: "enabled", accountsDelete: "deleted" };
    const ended = result.sessions ? ` (${result.sessions} session${result.sessions === 1 ? "" : "s"} ended)` : "";
    await loadAccounts();
    $("accounts-info").textContent = `${account.email} ${done[method]}${ended}.`;
  } catch (error) {
    $("accounts-error").textContent = errorText(error);
  }
}

function searchAccounts(event) {
  event.preventDefault();
  Object.assign(state.accounts, { search: $("accounts-query").value.trim(), pages: [], after: null });
  loadAccounts();
}

// Server: numbers over the last minutes, as small charts. Plain SVG, a polyline per metric: six
// charts of 150 points redraw in about 0.6 ms in Chromium (measured), which no charting library
// would better, and the console stays free of a dependency to vendor and keep up (no build step).

let statusTimer = null;

async function pollStatus() {
  try {
    const status = await state.db._backend.call("serverStatus", {});
    state.status = status;
    state.samples.push(status);
    if (state.samples.length > STATUS_POINTS + 1) state.samples.shift();
    if (!$("server-page").hidden) renderServer();
  } catch (error) {
    $("server-state").textContent = errorText(error);
  }
}

/** Per second between consecutive samples of a counter. */
function rates(key) {
  const out = [];
  for (let i = 1; i < state.samples.length; i++) {
    const [a, b] = [state.samples[i - 1], state.samples[i]];
    out.push(Math.max(0, (b[key] - a[key]) / Math.max((b.time - a.time) / 1000, 0.001)));
  }
  return out;
}

/** A small chart of `values` (oldest first), its newest at the right edge; a step per sample, so
 * that a few samples already span part of the width and STATUS_POINTS of them all of it. */
function chart(values, { fromZero = false } = {}) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  const width = STATUS_POINTS;
  svg.setAttribute("viewBox", `0 0 ${width} 40`);
  svg.setAttribute("preserveAspectRatio", "none");
  svg.setAttribute("aria-hidden", "true");
  if (!values.length) return svg;
  const shown = values.length === 1 ? [values[0], values[0]] : values;
  const low = fromZero ? 0 : Math.min(...shown);
  const high = Math.max(...shown);
  const y = (v) => (high === low ? (fromZero && high === 0 ? 38 : 20) : 38 - ((v - low) / (high - low)) * 34);
  const step = width / Math.max(shown.length - 1, 30);
  const x = (i) => width - (shown.length - 1 - i) * step;
  const points = shown.map((v, i) => `${x(i).toFixed(2)},${y(v).toFixed(2)}`).join(" ");
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("points", `${x(0).toFixed(2)},40 ${points} ${width},40`);
  area.setAttribute("class", "area");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points);
  svg.append(area, line);
  return svg;
}

function number(value, digits = 0) {
  return value == null ? "—" : value.toLocaleString(undefined, { maximumFractionDigits: digits });
}

function duration(seconds) {
  const s = Math.floor(seconds);
  if (s < 120) return `${s} s`;
  if (s < 7200) return `${Math.floor(s / 60)} min`;
  if (s < 172800) return `${Math.floor(s / 3600)} h ${Math.floor((s % 3600) / 60)} min`;
  return `${Math.floor(s / 86400)} d ${Math.floor((s % 86400) / 3600)} h`;
}

function renderServer() {
  const status = state.status;
  if (!status) return;
  const gauge = (key) => state.samples.map((sample) => sample[key]);
  const mb = gauge("rssBytes").map((bytes) => (bytes ?? 0) / 1048576);
  const metric = (id, label, value, values, options, unit = "") => element("div", { class: "metric", "data-metric": id },
    element("span", { class: "label" }, label),
    element("span", { class: "value" }, value, unit ? element("small", {}, ` ${unit}`) : ""),
    chart(values, options));
  const fact = (id, label, value, detail) => element("div", { class: "metric fact", "data-metric": id },
    element("span", { class: "label" }, label), element("span", { class: "value" }, value),
    element("span", { class: "detail" }, detail));
  const requests = rates("requests"), writes = rates("writes");
  $("metrics").replaceChildren(
    fact("uptime", "Uptime", duration(status.uptimeSeconds), `since ${when(status.time - status.uptimeSeconds * 1000)}`),
    metric("documents", "Documents", number(status.documents), gauge("documents")),
    metric("connections", "Connections", number(status.connections), gauge("connections"), { fromZero: true }),
    metric("listeners", "Listeners", number(status.listeners), gauge("listeners"), { fromZero: true }),
    metric("requests", "Requests", number(requests.at(-1) ?? 0, 1), requests, { fromZero: true }, "/s"),
    metric("writes", "Writes", number(writes.at(-1) ?? 0, 1), writes, { fromZero: true }, "/s"),
    metric("memory", "Memory (RSS)", number(mb.at(-1), 1), mb, {}, "MB"),
    fact("snapshot", "Last snapshot", ago(status.lastSnapshot, status.time), when(status.lastSnapshot)),
    fact("backup", "Last backup", ago(status.lastBackup, status.time),
      status.lastBackup ? when(status.lastBackup) : "montybase backup FILE makes one"));
  const minutes = Math.round((state.samples.length * STATUS_SECONDS) / 60);
  $("server-state").textContent = `· every ${STATUS_SECONDS} s, the last ${minutes || "<1"} min`;
  $("warnings").replaceChildren(...[...status.warnings].reverse().map((line) => element("li", { class: `level-${line.level.toLowerCase()}` },
    element("time", { datetime: new Date(line.time).toISOString() }, when(line.time)), " ",
    element("span", { class: "level" }, line.level), " ", element("span", { class: "message" }, line.message))));
  if (!status.warnings.length) $("warnings").replaceChildren(element("li", { class: "muted" }, "None since the server started."));
  document.body.dataset.samples = String(state.samples.length);
}

function startStatus() {
  pollStatus();
  statusTimer = setInterval(pollStatus, STATUS_SECONDS * 1000);
}

function stopStatus() {
  clearInterval(statusTimer);
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
for (const tab of Object.keys(PAGES)) $(`tab-${tab}`).addEventListener("click", () => openTab(tab));
$("rules-form").addEventListener("submit", testRules);
$("rule-add").addEventListener("submit", (event) => {
  event.preventDefault();
  addRule($("rule-pattern").value.trim());
});
$("rules-apply").addEventListener("click", applyRules);
$("rules-reset").addEventListener("click", () => {
  renderRules(state.rules ?? {});
  rulesEdited(false);
});
$("accounts-search").addEventListener("submit", searchAccounts);
$("accounts-more").addEventListener("click", () => {
  const view = state.accounts;
  if (view.next === null) return;
  view.pages.push(view.after);
  view.after = view.next;
  loadAccounts();
});
$("accounts-first").addEventListener("click", () => Object.assign(state.accounts, { pages: [], after: null }) && loadAccounts());
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
