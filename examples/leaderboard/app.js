// The leaderboard page: click as often as you can, post the score, see the top 10 live.
// The client comes from the server that serves this page, and so does its config.

import { Montybase, doc } from "/montybase.js";

const params = new URLSearchParams(location.search);
const SECONDS = Math.max(1, Math.min(60, Number(params.get("seconds")) || 5));
const COLLECTION = params.get("collection") || "scores";

const $ = (id) => document.getElementById(id);
const status = (text, isError = false) => {
  $("status").textContent = text;
  $("status").className = isError ? "error" : "";
};

const config = await (await fetch("/client-config.json")).json();
const db = new Montybase(config);
const scores = doc(db, COLLECTION);
const top10 = scores.orderBy("score", "desc").limit(10);

let score = 0;
let lastId = null;
let shown = []; // the top 10 as the last snapshot gave it

function render() {
  const items = shown.map(({ id, value }) => {
    const item = document.createElement("li");
    item.textContent = `${value.name} — ${value.score}`; // textContent: names are data, never markup
    item.dataset.id = id;
    if (id === lastId) item.className = "mine";
    return item;
  });
  $("top").replaceChildren(...items);
}

/** The badge beside "Top 10": "live" while the server answers, "offline" while it cannot be reached. */
function connection(online) {
  $("connection").textContent = online ? "live" : "offline, reconnecting…";
  $("connection").className = online ? "small live" : "small live offline";
  document.body.dataset.connection = online ? "live" : "offline";
}
const unreachable = (error) => error.reason === "CONNECTION_LOST" || error.reason === "UNAVAILABLE";

// A lost connection sends no snapshot, so ask the server something small every few seconds; any
// answer, even a refusal, means it is there.
setInterval(() => {
  scores.limit(1).exists().then(
    () => connection(true),
    (error) => connection(!unreachable(error)),
  );
}, 3000);

// The top 10, live: the first snapshot is the current state, then one per change (a score that
// enters the top 10 pushes the last one out). The client reconnects and resubscribes by itself.
status("Connecting…");
const ready = new Promise((resolve) => {
  top10.onSnapshot(
    ({ docs }) => {
      shown = docs;
      render();
      connection(true);
      const said = $("status").textContent;
      if (!docs.length) status("No scores yet: be the first.");
      else if (said === "Connecting…" || said.startsWith("No scores")) status("");
      resolve();
    },
    (error) => {
      const why = error.reason === "PERMISSION_DENIED" ? "this leaderboard is closed to this page" : error.message;
      status(`The scores cannot be shown: ${why}`, true);
      resolve();
    },
  );
});

/** What to tell a player whose score was refused. */
function refusal(error) {
  switch (error.reason) {
    case "VALIDATION_FAILED":
      return `That score does not fit: ${(error.data.errors ?? []).map((e) => `${e.path} ${e.message}`).join("; ")}`;
    case "RATE_LIMITED":
      return `Too many scores: try again in ${Math.ceil((error.data.retryAfterMs ?? 1000) / 1000)} s.`;
    case "PERMISSION_DENIED":
      return "The server does not accept scores here.";
    case "CONNECTION_LOST":
    case "UNAVAILABLE":
      return "The server cannot be reached right now, so your score was not posted: try again in a moment.";
    default:
      return `Your score was not posted: ${error.message}`;
  }
}

function play() {
  score = 0;
  $("score").value = "0";
  $("post").hidden = true;
  $("start").disabled = true;
  $("target").disabled = false;
  $("target").focus();
  const end = performance.now() + SECONDS * 1000;
  const showTime = () => {
    $("time-left").textContent = (Math.max(0, end - performance.now()) / 1000).toFixed(1);
  };
  showTime();
  const ticker = setInterval(showTime, 100);
  setTimeout(() => {
    clearInterval(ticker);
    showTime();
    $("target").disabled = true;
    $("start").disabled = false;
    $("start").textContent = "Play again";
    $("post").hidden = false;
    $("name").focus();
    status(`Time! You scored ${score}.`);
  }, SECONDS * 1000);
}

$("seconds").textContent = SECONDS === 1 ? "1 second" : `${SECONDS} seconds`;
$("start").addEventListener("click", play);
$("target").addEventListener("click", () => {
  score += 1;
  $("score").value = String(score);
});
$("post").addEventListener("submit", async (event) => {
  event.preventDefault();
  const name = $("name").value.trim();
  if (!name) return;
  $("submit").disabled = true;
  try {
    lastId = await scores.add({ name, score }); // the listener shows it (if it made the top 10)
    render();
    $("post").hidden = true;
    status(`Posted ${score} for ${name}.`);
  } catch (error) {
    if (unreachable(error)) connection(false);
    status(refusal(error), true);
  } finally {
    $("submit").disabled = false;
  }
});

await ready;
document.body.dataset.ready = "true";
