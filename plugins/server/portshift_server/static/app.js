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
let events = null;

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

function fillSelect(section, list) {
  const select = $(section + "-type");
  select.replaceChildren();
  for (const o of list) select.appendChild(el("option", { value: o.type }, o.label));
  const pick = () => renderFields(section, list.find((o) => o.type === select.value));
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
}

function follow(jobId) {
  if (events) events.close();
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
  clearSecrets();
  $("start-button").disabled = true;
  try {
    const job = await post("/api/jobs", body);
    currentJob = job.id;
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
  $("job-form").addEventListener("submit", startJob);
  $("cancel-button").addEventListener("click", cancelJob);
  $("resume-button").addEventListener("click", resumeJob);
  $("signup-form").addEventListener("submit", signup);
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", init);
