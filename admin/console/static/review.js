// The review page: a grid of captured inputs, most uncertain first; label by click or keyboard.
// 1..9 = the labels in key order (the order they joined the set), s = skip, x = none of these classes,
// u (or Ctrl+Z) = undo the last decision, arrows = move. No page reloads.
"use strict";

(function () {
  const root = document.getElementById("review");
  if (!root) return;
  const labels = JSON.parse(root.dataset.labels || "[]");
  const strategy = root.dataset.strategy || "margin";
  const grid = document.getElementById("grid"), progress = document.getElementById("progress");
  const empty = document.getElementById("empty");
  let items = [], selected = 0, doneHere = 0, busy = false, stats = null;
  const decided = [];  // ids decided on this page, newest last: what "undo" takes back first

  function say(text) { progress.textContent = text; }
  function counter() {
    const q = stats ? stats.queued : "?";
    say(`${doneHere} decided on this page · ${q} waiting · ${stats ? stats.labelled : "?"} labelled in all`);
  }

  function card(item, i) {
    const li = document.createElement("li");
    li.tabIndex = 0;
    li.dataset.id = item.id;
    const img = document.createElement("img");
    img.src = item.image;
    img.alt = `captured input the model called ${item.predicted} (${Math.round(100 * item.score)}%)`;
    const answer = document.createElement("p");
    answer.className = "answer";
    answer.textContent = `${item.predicted} ${Math.round(100 * item.score)}% · margin ${item.margin.toFixed(2)}`;
    // One compact choice per card: a select (the model's answer preselected) and a submit, not a button per label.
    const form = document.createElement("form");
    form.className = "choice";
    const choice = document.createElement("select");
    choice.name = "label";
    choice.setAttribute("aria-label", "label for this image");
    labels.forEach((label, k) => {
      const option = new Option(k < 9 ? `${k + 1} ${label}` : label, label);
      option.selected = label === item.predicted;
      choice.add(option);
    });
    const submit = document.createElement("button");
    submit.type = "submit"; submit.className = "primary"; submit.textContent = "Label";
    form.addEventListener("submit", (e) => { e.preventDefault(); decide(item.id, { label: choice.value }); });
    form.append(choice, submit);
    for (const [text, body] of [["skip", { skip: true }], ["none", { reject: true }]]) {
      const b = document.createElement("button");
      b.type = "button"; b.textContent = text; b.addEventListener("click", () => decide(item.id, body));
      form.appendChild(b);
    }
    li.append(img, answer, form);
    li.addEventListener("focusin", () => select(items.findIndex((x) => x.id === item.id)));
    return li;
  }

  function select(i) {
    if (!items.length) return;
    selected = Math.max(0, Math.min(i, items.length - 1));
    grid.querySelectorAll("li").forEach((li, k) => li.classList.toggle("selected", k === selected));
  }

  function render() {
    grid.replaceChildren(...items.map(card));
    empty.hidden = items.length > 0;
    select(selected);
    counter();
  }

  async function load() {
    const r = await fetch(`/console/api/review?strategy=${encodeURIComponent(strategy)}&limit=24`, { headers: { Accept: "application/json" } });
    if (!r.ok) { say(`could not load the queue (${r.status})`); return; }
    const body = await r.json();
    stats = body.stats;
    items = body.items;
    render();
  }

  async function decide(id, body) {
    if (busy) return;
    busy = true;
    try {
      const r = await fetch(`/console/api/review/${encodeURIComponent(id)}`, {
        method: "POST", body: JSON.stringify(body),
        headers: { "Content-Type": "application/json", Accept: "application/json", "X-CSRF-Token": document.body.dataset.csrf },
      });
      const out = await r.json().catch(() => ({}));
      if (!r.ok) { say((out.error && out.error.message) || `refused (${r.status})`); return; }
      stats = out.stats;
      doneHere += 1;
      decided.push(id);
      items = items.filter((x) => x.id !== id);
      if (items.length < 6) await load(); else render();
      const next = grid.querySelectorAll("li")[selected];
      if (next) next.focus();
    } finally { busy = false; }
  }

  async function undo() {
    if (busy) return;
    busy = true;
    try {
      const id = decided.pop();  // none left on this page: the server undoes this token's latest decision
      const url = id ? `/console/api/review/${encodeURIComponent(id)}/undo` : "/console/api/review/undo";
      const r = await fetch(url, { method: "POST", headers: { Accept: "application/json", "X-CSRF-Token": document.body.dataset.csrf } });
      const out = await r.json().catch(() => ({}));
      if (!r.ok) { say((out.error && out.error.message) || `undo refused (${r.status})`); return; }
      stats = out.stats;
      doneHere = Math.max(0, doneHere - out.items.length);
      for (const item of out.items) { items = [item, ...items.filter((x) => x.id !== item.id)]; }
      selected = 0;
      render();
      const what = out.items.map((x) => x.undone + (x.label ? ` ${x.label}` : "")).join(", ");
      say(`undone: ${what} · ${stats.queued} waiting`);
      const first = grid.querySelector("li");
      if (first) first.focus();
    } finally { busy = false; }
  }
  document.getElementById("undo").addEventListener("click", undo);

  document.addEventListener("keydown", (e) => {
    if (e.target.closest && e.target.closest("input, textarea, select")) return;  // a select keeps its own keys
    const item = items[selected];
    if (e.key === "ArrowRight") { select(selected + 1); e.preventDefault(); return; }
    if (e.key === "ArrowLeft") { select(selected - 1); e.preventDefault(); return; }
    if (e.key === "u" || (e.key === "z" && (e.ctrlKey || e.metaKey))) { undo(); e.preventDefault(); return; }
    if (!item) return;
    if (/^[1-9]$/.test(e.key) && labels[Number(e.key) - 1] !== undefined) { decide(item.id, { label: labels[Number(e.key) - 1] }); e.preventDefault(); }
    else if (e.key === "s") { decide(item.id, { skip: true }); e.preventDefault(); }
    else if (e.key === "x") { decide(item.id, { reject: true }); e.preventDefault(); }
  });

  load();
})();
