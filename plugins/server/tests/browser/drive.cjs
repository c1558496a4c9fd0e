// Drives the service page in Debian's Chromium with playwright-core (no downloaded browser).
// Reads its settings (including the canary token) as JSON on stdin, prints what it saw as JSON.
"use strict";

const fs = require("fs");

async function main() {
  const cfg = JSON.parse(fs.readFileSync(0, "utf8"));
  const { chromium } = require(cfg.playwright);
  const ctx = await chromium.launchPersistentContext(cfg.profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      // trust exactly the test server's key (the trustme leaf), nothing else
      `--ignore-certificate-errors-spki-list=${cfg.spki}`,
    ],
  });
  const out = { console: [], progress: [] };
  try {
    const page = await ctx.newPage();
    page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") out.console.push(m.text()); });
    page.on("pageerror", (e) => out.console.push("pageerror: " + e.message));
    const resp = await page.goto(cfg.url);
    out.pageHeaders = resp.headers();
    await page.waitForSelector('body[data-ready="1"]', { timeout: 15000 });

    // the least-privilege policy of the chosen storage, then none for a local folder
    await page.selectOption("#sink-type", "s3");
    out.policyShown = !(await page.$eval("#permissions", (e) => e.hidden));
    out.policy = await page.textContent("#policy-text");
    out.policySource = await page.textContent("#policy-source");
    await page.selectOption("#sink-type", "local");
    out.policyHiddenForLocal = await page.$eval("#permissions", (e) => e.hidden);
    out.securityHref = await page.getAttribute("#security-link", "href");

    // a missing credential: a clear error, nothing started
    await page.selectOption("#source-type", "canary");
    await page.selectOption("#sink-type", "local");
    await page.click("#start-button");
    await page.waitForSelector("#form-error:not([hidden])", { timeout: 10000 });
    out.missingError = await page.textContent("#form-error");

    await page.fill("#source-count", "6");
    await page.fill("#source-media_size", "30000");
    await page.fill("#source-delay", "0.4");
    await page.fill("#source-token", cfg.token);
    out.secretInputs = await page.$$eval("input[data-secret]", (els) =>
      els.map((e) => ({ id: e.id, type: e.type, autocomplete: e.getAttribute("autocomplete") })));
    await page.click("#start-button");
    await page.waitForSelector("#progress:not([hidden])", { timeout: 15000 });
    out.tokenAfterSubmit = await page.inputValue("#source-token");
    const deadline = Date.now() + 60000;
    let status = "";
    while (Date.now() < deadline) {
      status = (await page.textContent("#job-status")) || "";
      out.progress.push([status, await page.textContent("#job-files"),
        await page.getAttribute("#job-bar", "data-percent"), await page.textContent("#job-rate")]);
      if (["complete", "failed", "cancelled", "partial"].includes(status)) break;
      await page.waitForTimeout(100);
    }
    out.status = status;
    out.manifest = await page.textContent("#job-manifest");
    out.exportRoot = await page.textContent("#job-root");
    out.jobError = await page.textContent("#job-error");
    await page.waitForSelector("#verify:not([hidden])", { timeout: 10000 });
    out.percent = await page.getAttribute("#job-bar", "data-percent");
    out.barValue = await page.$eval("#job-bar", (e) => e.value);
    out.verifyCommands = await page.textContent("#verify-commands");
    await page.screenshot({ path: cfg.screenshot, fullPage: true });
    await page.locator("#job-bar").screenshot({ path: cfg.screenshot + ".bar.png" });

    await page.fill("#signup-name", "Browser Tester");
    await page.fill("#signup-email", "tester@example.com");
    await page.fill("#signup-company", "Headless Inc");
    await page.click("#signup-button");
    await page.waitForSelector("#signup-result:not([hidden])", { timeout: 10000 });
    out.signup = await page.textContent("#signup-result");

    const sec = await page.goto(cfg.url + "security");
    out.securityStatus = sec.status();
    await page.waitForSelector('body[data-ready="1"]', { timeout: 15000 });
    out.advisories = await page.textContent("#advisories");
    await page.screenshot({ path: cfg.screenshot + ".security.png", fullPage: true });
  } finally {
    await ctx.close();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
