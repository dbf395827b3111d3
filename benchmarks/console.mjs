#!/usr/bin/env node
// The admin console's speed in headless Chromium, against a real server on a free port:
//
//   node benchmarks/console.mjs [--documents N] [--rate W] [--seconds S] [--runs R]
//
// 1. First page: the data view opens a collection of N documents (100,000) and shows its first
//    page; timed from the click on the collection to the page's rows in the table, R times
//    (each after opening another collection), and reported as median and worst.
// 2. Live table: with that page open, a Python client updates documents on it at W writes a
//    second (200) for S seconds (10); meanwhile the page records requestAnimationFrame deltas
//    (frame times: p50, p99, max) and how many times it redrew the table.
// Prints one JSON line. Needs /usr/bin/chromium (or CHROMIUM) and playwright-core (npm ci).
// Nothing is asserted: the numbers are for the README, measured on a shared machine or not.


import { Server, addAdmin, runAdminPython, tempDir, writeConfig } from "../tests/js/helpers.js";
import { launchChromium, openPage } from "../tests/browser/chromium.js";

const ADMIN = "bench@console.example";
const PASSWORD = "console benchmark 1";

function parseArgs(argv) {
  const options = { documents: 100_000, rate: 200, seconds: 10, runs: 5 };
  for (let i = 0; i < argv.length; i += 2) {
    const name = argv[i].replace(/^--/, "");
    const value = Number(argv[i + 1]);
    if (!(name in options) || !(value > 0)) throw new Error(`usage: node benchmarks/console.mjs [--documents N] [--rate W] [--seconds S] [--runs R]`);
    options[name] = value;
  }
  return options;
}

/** Python with an admin handle `db` on the server. */
function python(server, code, timeout = 600_000) {
  return runAdminPython(server, code, { timeout });
}

const percentile = (sorted, p) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))];
const round = (ms) => Math.round(ms * 10) / 10;

async function main() {
  const options = parseArgs(process.argv.slice(2));
  const dir = await tempDir("montybase-console-bench-");
  await writeConfig(dir, { rules: {}, projectName: "console-bench" });
  await addAdmin(dir, ADMIN, PASSWORD);
  const server = await Server.start({ dir });
  const browser = await launchChromium();
  try {
    const filled = performance.now();
    await python(server, `
for start in range(0, ${options.documents}, 500):
    batch = db.batch()
    for n in range(start, min(start + 500, ${options.documents})):
        batch.set(doc(db, "people", f"p{n:06d}"), {"name": f"Person {n}", "n": n, "team": ["red", "green", "blue"][n % 3], "score": n % 1000})
    batch.commit()
doc(db, "other", "one").set({"title": "One"})
`);
    const fillSeconds = (performance.now() - filled) / 1000;

    const { page, errors, close } = await openPage(browser, `${server.http}/admin/`, { ready: "body[data-ready=true]" });
    await page.fill("#email", ADMIN);
    await page.fill("#password", PASSWORD);
    await page.press("#password", "Enter");
    await page.waitForSelector("body[data-signed-in=true]");

    // 1. The first page of the big collection, from the click to its rows in the table.
    const firstPage = [];
    for (let run = 0; run < options.runs; run++) {
      await page.click('button.collection[data-id="other"]');
      await page.waitForFunction(() => document.querySelector("#docs tbody tr")?.dataset.id === "one");
      const ms = await page.evaluate(() => new Promise((resolve) => {
        const started = performance.now();
        document.querySelector('button.collection[data-id="people"]').click();
        const check = () => {
          const rows = document.querySelectorAll("#docs tbody tr");
          if (rows.length === 25 && rows[0].dataset.id === "p000000") requestAnimationFrame(() => resolve(performance.now() - started));
          else requestAnimationFrame(check);
        };
        check();
      }));
      firstPage.push(ms);
    }
    const firstSorted = [...firstPage].sort((a, b) => a - b);

    // 2. The live table under W writes a second to the documents it shows.
    await page.evaluate(() => {
      window.bench = { deltas: [], redraws: 0, stop: false };
      new MutationObserver(() => window.bench.redraws++).observe(document.querySelector("#docs tbody"), { childList: true });
      let last = performance.now();
      const frame = (now) => {
        window.bench.deltas.push(now - last);
        last = now;
        if (!window.bench.stop) requestAnimationFrame(frame);
      };
      requestAnimationFrame(frame);
    });
    const total = options.rate * options.seconds;
    const writer = await python(server, `
started = time.monotonic()
for i in range(${total}):  # bounded: W a second for S seconds, paced
    due = started + i / ${options.rate}
    pause = due - time.monotonic()
    if pause > 0:
        time.sleep(pause)
    doc(db, "people", f"p{i % 25:06d}").update({"score": i})
print(json.dumps({"writes": ${total}, "seconds": time.monotonic() - started}))
`);
    const written = JSON.parse(writer);
    await page.waitForFunction((last) => [...document.querySelectorAll("#docs tbody tr td")].some((cell) => cell.textContent === String(last)),
      total - 1, { timeout: 10_000 });
    const live = await page.evaluate(() => {
      window.bench.stop = true;
      return { deltas: window.bench.deltas.slice(1), redraws: window.bench.redraws };
    });
    const deltas = [...live.deltas].sort((a, b) => a - b);
    await close();
    console.log(JSON.stringify({
      documents: options.documents,
      fill_seconds: Math.round(fillSeconds * 10) / 10,
      first_page_ms: { median: round(percentile(firstSorted, 50)), max: round(firstSorted.at(-1)), runs: firstPage.map(round) },
      live: {
        writes_per_second: Math.round(written.writes / written.seconds),
        frames: deltas.length,
        frame_ms: { p50: round(percentile(deltas, 50)), p99: round(percentile(deltas, 99)), max: round(deltas.at(-1)) },
        table_redraws: live.redraws,
      },
      page_errors: errors,
    }));
  } finally {
    await browser.close();
    await server.cleanup();
  }
}

main().catch((error) => {
  console.error(error?.stack ?? error);
  process.exit(1);
});
