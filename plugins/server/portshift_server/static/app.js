// portshift service page: builds the form from /api/offers, starts a job, follows its events.
// Credentials are read from the form once, sent in the POST body, and the fields are cleared.
"use strict";

const SECRET_LABELS = {
  token: "API token",
  access_key_id: "Access key ID",
  secret_access_key: "Secret access key",
  session_token: "Session token (optional)",
  sas: "SAS token (sp must include c and w)",
  key: "Service-account key (JSON)",
};
const TERMINAL = ["complete", "partial", "failed", "cancelled"];

let offers = { sources: [], sinks: [] };
let currentJob = null;
let currentSealed = false; // the job is sealed with the customer's key: resuming needs its credentials again
let events = null;
let samples = []; // [time ms, bytes] of the running job, for the rate
let followedAt = Date.now();

function $(id) { return document.getElementById(id); }

function el(tag, attrs, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

function humanBytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i += 1; }
  return (i === 0 ? n.toFixed(0) : n.toFixed(1)) + " " + units[i];
}

function renderFields(section, offer) {
  const box = $(section + "-fields");
  box.replaceChildren();
  if (!offer) return;
  for (const f of offer.fields) {
    const type = f.kind === "integer" || f.kind === "number" ? "number" : (f.kind === "boolean" ? "checkbox" : "text");
    const input = el("input", { type, id: `${section}-${f.name}`, "data-field": f.name, "data-kind": f.kind, autocomplete: "off", spellcheck: "false" });
    if (f.required) input.required = true;
    const label = el("label", {}, f.label + (f.required ? "" : " (optional)") + " ");
    label.appendChild(input);
    box.appendChild(label);
  }
  for (const s of offer.secrets) {
    const input = el("input", {
      type: "password", id: `${section}-${s.name}`, "data-secret": s.name,
      autocomplete: "off", autocapitalize: "off", spellcheck: "false",
    });
    if (s.required) input.required = true;
    const label = el("label", {}, (SECRET_LABELS[s.name] || s.name) + " ");
    label.appendChild(input);
    box.appendChild(label);
  }
}

function renderPermissions(offer) {
  const p = offer && offer.permissions;
  $("permissions").hidden = !p;
  if (!p) return;
  $("policy-title").textContent = p.title;
  $("policy-text").textContent = p.text;
  $("policy-source").textContent = p.source;
  $("policy-copied").textContent = "";
}

async function copyPolicy() {
  try {
    await navigator.clipboard.writeText($("policy-text").textContent);
    $("policy-copied").textContent = "Copied.";
  } catch (e) {
    $("policy-copied").textContent = "Select the text and copy it.";
  }
}

function fillSelect(section, list) {
  const select = $(section + "-type");
  select.replaceChildren();
  for (const o of list) select.appendChild(el("option", { value: o.type }, o.label));
  const pick = () => {
    const offer = list.find((o) => o.type === select.value);
    renderFields(section, offer);
    if (section === "sink") renderPermissions(offer);
  };
  select.addEventListener("change", pick);
  pick();
}

function collect(section, secretsOnly) {
  const out = { type: $(section + "-type").value };
  for (const input of $(section + "-fields").querySelectorAll("input")) {
    if (input.dataset.secret) {
      if (input.value) out[input.dataset.secret] = input.value;
    } else if (!secretsOnly && input.dataset.field) {
      const kind = input.dataset.kind;
      if (kind === "boolean") out[input.dataset.field] = input.checked;
      else if (input.value === "") continue;
      else if (kind === "integer") out[input.dataset.field] = parseInt(input.value, 10);
      else if (kind === "number") out[input.dataset.field] = Number(input.value);
      else out[input.dataset.field] = input.value.trim();
    }
  }
  return out;
}

// the customer's own KMS key for the job's records (docs/byok.md); withKey: a new job names the key
function collectStateKey(withKey) {
  const arn = $("state-key-arn").value.trim();
  if (withKey && !arn) return null;
  const out = withKey ? { key: arn } : {};
  if ($("state-key-sink").checked) out.use_sink_credentials = true;
  for (const input of $("state-key").querySelectorAll("input[data-secret]")) {
    if (input.value) out[input.dataset.secret] = input.value;
  }
  return out;
}

function clearSecrets() {
  for (const input of document.querySelectorAll("input[data-secret]")) input.value = "";
}

function showFormError(text) {
  const p = $("form-error");
  p.textContent = text || "";
  p.hidden = !text;
}

async function post(url, body) {
  const resp = await fetch(url, {
    method: "POST",
    headers: { "Content-Type": "application/json" },
    body: JSON.stringify(body),
    credentials: "same-origin",
    cache: "no-store",
  });
  let doc = {};
  try { doc = await resp.json(); } catch (e) { doc = {}; }
  if (!resp.ok) {
    let msg = doc.error || `the service answered ${resp.status}`;
    const retry = resp.headers.get("Retry-After");
    if (resp.status === 429 && retry) msg += ` (retry in ${retry} s)`;
    throw new Error(msg);
  }
  return doc;
}

function humanDuration(s) {
  if (!isFinite(s) || s < 0) return "–";
  if (s < 90) return `about ${Math.max(1, Math.round(s))} s`;
  if (s < 5400) return `about ${Math.round(s / 60)} min`;
  return `about ${(s / 3600).toFixed(1)} h`;
}

function renderRate(job) {
  const now = Date.now();
  samples.push([now, job.bytes]);
  samples = samples.filter(([t]) => now - t <= 10000);
  const [t0, b0] = samples[0];
  const rate = now > t0 ? ((job.bytes - b0) * 1000) / (now - t0) : 0;
  const running = job.status === "running";
  $("job-rate").textContent = running && rate > 0 ? humanBytes(rate) + "/s" : "–";
  const bar = $("job-bar");
  const total = job.recordings_total;
  const r = job.recordings || { done: 0, failed: 0, skipped: 0 };
  const finished = r.done + r.failed + r.skipped;
  let percent = null;
  if (job.status === "complete") percent = 100;
  else if (total) percent = Math.min(99, Math.floor((100 * finished) / total));
  if (percent === null) {
    bar.removeAttribute("value"); // indeterminate: the source has not said how many recordings there are
    $("job-percent").textContent = "";
    $("job-eta").textContent = running ? "when the source has listed its recordings" : "–";
  } else {
    bar.value = percent;
    $("job-percent").textContent = `${percent} %`;
    const left = total && finished && running ? ((total - finished) * (now - followedAt)) / 1000 / finished : NaN;
    $("job-eta").textContent = job.status === "complete" ? "done" : humanDuration(left);
  }
  bar.dataset.percent = percent === null ? "" : String(percent);
}

function shellQuote(s) { return "'" + String(s).replace(/'/g, "'\\''") + "'"; }

function renderVerify(job) {
  const show = job.status === "complete" && !!job.manifest_sha256;
  $("verify").hidden = !show;
  if (!show) return;
  $("verify-root").textContent = job.export_root;
  const lines = [
    `cd ${shellQuote(job.export_root)}`,
    "sha256sum -c portshift-manifest.txt",
    `sha256sum portshift-manifest.txt    # must print ${job.manifest_sha256}`,
  ];
  if (offers.signing) {
    lines.push(
      `curl -fsS -o manifest-signing.pub.pem ${location.origin}${offers.signing.public_key}`,
      "openssl pkeyutl -verify -pubin -inkey manifest-signing.pub.pem -rawin \\",
      "  -in portshift-manifest.txt -sigfile portshift-manifest.txt.sig",
    );
  }
  $("verify-commands").textContent = lines.join("\n");
}

function render(job) {
  $("progress").hidden = false;
  const status = $("job-status");
  status.textContent = job.status;
  status.className = "status " + job.status;
  $("job-files").textContent = String(job.files);
  $("job-bytes").textContent = humanBytes(job.bytes);
  const r = job.recordings || { done: 0, failed: 0, skipped: 0 };
  $("job-recordings").textContent = `${r.done} done, ${r.failed} failed, ${r.skipped} skipped`;
  $("job-root").textContent = job.export_root || "–";
  $("job-manifest").textContent = job.manifest_sha256 || "–";
  currentSealed = Boolean(job.state_key);
  $("job-key").textContent = job.state_key || "–";
  $("job-sealed").textContent = job.sealed || "";
  $("job-sealed").hidden = !job.sealed;
  const list = $("job-messages");
  list.replaceChildren(...(job.messages || []).map((m) => el("li", {}, m)));
  const err = $("job-error");
  err.textContent = job.error || "";
  err.hidden = !job.error || job.status === "complete";
  const done = TERMINAL.includes(job.status);
  $("cancel-button").hidden = done;
  const resumable = ["failed", "partial", "cancelled"].includes(job.status);
  $("resume-button").hidden = !resumable;
  $("resume-help").hidden = !resumable;
  $("start-button").disabled = !done;
  renderRate(job);
  renderVerify(job);
}

function follow(jobId) {
  if (events) events.close();
  followedAt = Date.now();
  events = new EventSource(`/api/jobs/${encodeURIComponent(jobId)}/events`);
  events.addEventListener("status", (ev) => render(JSON.parse(ev.data)));
  events.addEventListener("end", () => { events.close(); events = null; });
  events.onerror = () => {
    // the stream ended or broke: one plain read so the page shows the last state
    if (events) { events.close(); events = null; }
    fetch(`/api/jobs/${encodeURIComponent(jobId)}`, { cache: "no-store" })
      .then((r) => (r.ok ? r.json() : null)).then((job) => { if (job) render(job); }).catch(() => {});
  };
}

async function startJob(ev) {
  ev.preventDefault();
  showFormError("");
  const body = { source: collect("source", false), sink: collect("sink", false) };
  if ($("since").value) body.since = $("since").value;
  if ($("until").value) body.until = $("until").value;
  const key = $("state-key").hidden ? null : collectStateKey(true);
  if (key) body.state_key = key;
  clearSecrets();
  $("start-button").disabled = true;
  try {
    const job = await post("/api/jobs", body);
    currentJob = job.id;
    samples = [];
    render(job);
    follow(job.id);
  } catch (e) {
    showFormError(e.message);
    $("start-button").disabled = false;
  }
}

async function cancelJob() {
  if (!currentJob) return;
  try { render(await post(`/api/jobs/${encodeURIComponent(currentJob)}/cancel`, {})); } catch (e) { showFormError(e.message); }
}

async function resumeJob() {
  if (!currentJob) return;
  showFormError("");
  const body = { source: collect("source", true), sink: collect("sink", true) };
  if (currentSealed) body.state_key = collectStateKey(false);
  clearSecrets();
  try {
    render(await post(`/api/jobs/${encodeURIComponent(currentJob)}/resume`, body));
    follow(currentJob);
  } catch (e) { showFormError(e.message); }
}

async function signup(ev) {
  ev.preventDefault();
  const out = $("signup-result");
  try {
    await post("/api/signups", {
      name: $("signup-name").value, email: $("signup-email").value, company: $("signup-company").value,
    });
    out.textContent = "Thank you, we will be in touch.";
    out.className = "";
    $("signup-form").reset();
  } catch (e) {
    out.textContent = e.message;
    out.className = "error";
  }
  out.hidden = false;
}

async function init() {
  try {
    const resp = await fetch("/api/offers", { cache: "no-store" });
    offers = await resp.json();
  } catch (e) {
    showFormError("the service could not be reached");
    return;
  }
  fillSelect("source", offers.sources);
  fillSelect("sink", offers.sinks);
  $("state-key").hidden = !((offers.state_key || {}).providers || []).includes("kms");
  $("job-form").addEventListener("submit", startJob);
  $("cancel-button").addEventListener("click", cancelJob);
  $("resume-button").addEventListener("click", resumeJob);
  $("signup-form").addEventListener("submit", signup);
  $("policy-copy").addEventListener("click", copyPolicy);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
