// graft console: live job progress and drag-and-drop upload. No framework; nothing inline (strict CSP).
"use strict";

function csrf() { return document.body.dataset.csrf || ""; }

async function pollJob(el) {
  const id = el.dataset.job;
  while (true) {
    await new Promise((r) => setTimeout(r, 2000));
    let job;
    try {
      const r = await fetch(`/console/api/jobs/${encodeURIComponent(id)}`, { headers: { Accept: "application/json" } });
      if (!r.ok) return;
      job = await r.json();
    } catch (e) { continue; }
    for (const f of el.querySelectorAll("[data-field]")) {
      const key = f.dataset.field;
      if (key === "seconds" && job.seconds != null) f.textContent = `${Math.round(job.seconds)} s`;
      else if (key in job && job[key] != null && key !== "seconds") f.textContent = job[key];
    }
    const log = document.querySelector('pre[data-field="log"]');
    if (log && job.log) log.textContent = job.log;
    const bar = el.querySelector("progress");
    if (bar) bar.value = job.progress;
    if (!job.active) { el.classList.remove("live-job"); el.dataset.finished = job.status; window.location.reload(); return; }
  }
}

function setupUpload() {
  const form = document.getElementById("upload");
  if (!form) return;
  const drop = document.getElementById("drop"), input = document.getElementById("file");
  const status = document.getElementById("upload-status");
  for (const ev of ["dragenter", "dragover"]) drop.addEventListener(ev, (e) => { e.preventDefault(); drop.classList.add("over"); });
  for (const ev of ["dragleave", "drop"]) drop.addEventListener(ev, () => drop.classList.remove("over"));
  drop.addEventListener("drop", (e) => { e.preventDefault(); input.files = e.dataTransfer.files; status.textContent = `${input.files.length} image(s) ready`; });
  form.addEventListener("submit", async (e) => {
    e.preventDefault();
    status.textContent = "Uploading…";
    const r = await fetch(form.action, { method: "POST", body: new FormData(form),
                                         headers: { Accept: "application/json", "X-CSRF-Token": csrf() } });
    const body = await r.json().catch(() => ({}));
    if (r.ok) { window.location.href = `/console/samples?stored=${body.stored}&duplicates=${body.duplicates}`; }
    else {
      const why = (body.error && body.error.message) || r.statusText || "no reason given";
      status.textContent = `upload failed (${r.status}): ${why}`; status.className = "error";
    }
  });
}

document.addEventListener("DOMContentLoaded", () => {
  for (const el of document.querySelectorAll(".live-job[data-job]")) pollJob(el);
  setupUpload();
});
