// Drives the job form's "your own key" fields in Debian's Chromium with playwright-core: a job
// sealed with an enabled KMS key, then one with a disabled key (refused at submission: the form shows why). Settings as JSON on stdin (the
// canary token and key credentials), what it saw as JSON on stdout.
"use strict";

const fs = require("fs");

async function runJob(page, cfg, arn) {
  await page.selectOption("#source-type", "canary");
  await page.selectOption("#sink-type", "local");
  await page.fill("#source-count", "2");
  await page.fill("#source-token", cfg.token);
  await page.fill("#state-key-arn", arn);
  await page.fill("#state-key-access_key_id", cfg.accessKeyId);
  await page.fill("#state-key-secret_access_key", cfg.secretAccessKey);
  await page.click("#start-button");
  // this job's document is shown (the panel may still show the previous job until then)
  await page.waitForFunction(
    (key) => document.querySelector("#job-key").textContent === key || !document.querySelector("#form-error").hidden,
    "kms:" + arn, { timeout: 15000 });
  const seen = { secretAfterSubmit: await page.inputValue("#state-key-secret_access_key") };
  const deadline = Date.now() + 60000;
  while (Date.now() < deadline) {
    seen.status = (await page.textContent("#job-status")) || "";
    if (["complete", "failed", "cancelled", "partial"].includes(seen.status)) break;
    await page.waitForTimeout(100);
  }
  seen.key = await page.textContent("#job-key");
  seen.sealed = await page.$eval("#job-sealed", (e) => (e.hidden ? null : e.textContent));
  seen.manifest = await page.textContent("#job-manifest");
  seen.formError = await page.$eval("#form-error", (e) => (e.hidden ? null : e.textContent));
  return seen;
}

async function main() {
  const cfg = JSON.parse(fs.readFileSync(0, "utf8"));
  const { chromium } = require(cfg.playwright);
  const ctx = await chromium.launchPersistentContext(cfg.profile, {
    executablePath: "/usr/bin/chromium",
    headless: true,
    args: [
      "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync",
      `--ignore-certificate-errors-spki-list=${cfg.spki}`,
    ],
  });
  const out = { console: [] };
  try {
    const page = await ctx.newPage();
    page.on("console", (m) => { if (m.type() === "error" || m.type() === "warning") out.console.push(m.text()); });
    page.on("pageerror", (e) => out.console.push("pageerror: " + e.message));
    await page.goto(cfg.url);
    await page.waitForSelector('body[data-ready="1"]', { timeout: 15000 });
    out.fieldsetShown = !(await page.$eval("#state-key", (e) => e.hidden));
    out.enabled = await runJob(page, cfg, cfg.arn);
    out.disabled = await runJob(page, cfg, cfg.disabledArn);
  } finally {
    await ctx.close();
  }
  process.stdout.write(JSON.stringify(out));
}

main().catch((e) => { process.stderr.write(String(e && e.stack || e)); process.exit(1); });
