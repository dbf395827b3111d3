// Headless Chromium for the browser tests: Debian's chromium, driven by playwright-core.

import { existsSync } from "node:fs";
import { chromium } from "playwright-core";

export const CHROMIUM = process.env.CHROMIUM || "/usr/bin/chromium";
const ARGS = [
  "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--disable-background-networking",
  "--disable-component-update", "--disable-sync", "--no-first-run",
];


/** Launch the browser, or say how to install it. */
export function launchChromium() {
  if (!existsSync(CHROMIUM)) throw new Error(`no Chromium at ${CHROMIUM}: apt-get install -y chromium (or set CHROMIUM)`);
  return chromium.launch({ executablePath: CHROMIUM, args: ARGS });
}

/**
 * A fresh page (its own context: no shared storage) at `url`, with console errors collected;
 * `ready`: a selector to wait for before returning.
 */
export async function openPage(browser, url, { ready } = {}) {
  const context = await browser.newContext();
  const page = await context.newPage();
  const errors = [];
  page.on("pageerror", (error) => errors.push(error.message));
  page.on("console", (message) => message.type() === "error" && errors.push(message.text()));
  await page.goto(url);
  if (ready) await page.waitForSelector(ready);
  return { page, errors, close: () => context.close() };
}
