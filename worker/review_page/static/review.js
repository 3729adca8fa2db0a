// The review page's behaviour: keyboard moves, accept / reject / add through POST /api/feedback.
// The server renders every piece of product data (escaped); this script only sets textContent.
(() => {
  "use strict";
  const byId = (id) => document.getElementById(id);
  const status = byId("status");
  const reviewer = byId("reviewer");
  const detail = byId("detail");
  const list = byId("rows");
  const addForm = byId("add-form");
  const addInput = byId("add-tag");
  const STATE = { accept: "accepted", reject: "rejected", add: "added" };

  const stored = window.localStorage.getItem("tagger.reviewer");
  if (stored && !reviewer.value) reviewer.value = stored;
  reviewer.addEventListener("change", () => window.localStorage.setItem("tagger.reviewer", reviewer.value.trim()));

  const say = (text, kind) => { status.textContent = text; status.dataset.kind = kind; };
  const rows = () => (list ? Array.from(list.querySelectorAll(".row")) : []);
  const current = () => (document.activeElement ? document.activeElement.closest(".row") : null);

  function lightUp(row) {
    document.querySelectorAll("mark.ev").forEach((m) => {
      m.classList.toggle("hl", !!row && m.dataset.tags.split(" ").includes("t" + row.dataset.i));
    });
  }

  function focusRow(row) {
    if (!row) return;
    rows().forEach((r) => { r.tabIndex = r === row ? 0 : -1; });
    row.focus();
    lightUp(row);
  }

  function move(step) {
    const all = rows();
    if (!all.length) return;
    const at = all.indexOf(current() || all.find((r) => r.tabIndex === 0) || all[0]);
    focusRow(all[Math.min(all.length - 1, Math.max(0, at + (current() ? step : 0)))]);
  }

  function mark(row, action, who) {
    row.dataset.state = action;
    row.querySelector(".state").textContent = STATE[action] + " by " + who;
  }

  function addedRow(tag) {
    const li = document.createElement("li");
    li.className = "row added";
    li.tabIndex = -1;
    li.dataset.i = String(rows().length);
    li.dataset.tag = tag;
    li.dataset.kind = "added";
    const name = document.createElement("span");
    name.className = "name";
    name.textContent = tag;
    const state = document.createElement("span");
    state.className = "state";
    li.append(name, state);
    li.setAttribute("aria-label", tag + ", added by a reviewer");
    list.append(li);
    return li;
  }

  async function send(action, tag) {
    const who = reviewer.value.trim();
    if (!who) { say("Enter a reviewer name first.", "error"); reviewer.focus(); return false; }
    say("Sending: " + action + " " + tag + " …", "busy");
    let res, body;
    try {
      res = await fetch("/api/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json", Accept: "application/json" },
        body: JSON.stringify({ product_id: detail.dataset.product, action, tag, reviewer: who }),
      });
      body = await res.json();
    } catch (err) {
      say("Not saved (no answer from the server): " + err, "error");
      return false;
    }
    if (!res.ok) { say("Not saved: " + (body.error || res.statusText), "error"); return false; }
    window.localStorage.setItem("tagger.reviewer", who);
    say("Saved: " + STATE[action] + " " + body.tag + " (" + who + ")", "ok");
    return body;
  }

  async function act(row, action) {
    if (!row) return;
    const kind = row.dataset.kind;
    const real = action === "accept" && kind === "candidate" ? "add" : action;
    const done = await send(real, row.dataset.tag);
    if (done) mark(row, real, reviewer.value.trim());
  }

  if (list) {
    list.addEventListener("click", (e) => {
      const btn = e.target.closest("button[data-action]");
      if (btn) act(btn.closest(".row"), btn.dataset.action === "add" ? "accept" : btn.dataset.action);
    });
    list.addEventListener("focusin", (e) => { if (e.target.classList.contains("row")) lightUp(e.target); });
  }

  if (addForm) {
    addForm.addEventListener("submit", async (e) => {
      e.preventDefault();
      const tag = addInput.value.trim();
      if (!tag) return;
      const done = await send("add", tag);
      if (!done) return;
      const existing = rows().find((r) => r.dataset.tag === done.tag);
      const row = existing || addedRow(done.tag);
      mark(row, "add", reviewer.value.trim());
      addInput.value = "";
      focusRow(row);
    });
  }

  function goItem(step) {
    const links = Array.from(document.querySelectorAll("#queue a"));
    if (!links.length) return;
    const at = links.findIndex((a) => a.getAttribute("aria-current") === "page");
    const next = links[at < 0 ? 0 : Math.min(links.length - 1, Math.max(0, at + step))];
    if (next && next.getAttribute("aria-current") !== "page") window.location.assign(next.href);
  }

  document.addEventListener("keydown", (e) => {
    if (e.ctrlKey || e.metaKey || e.altKey) return;
    const typing = e.target instanceof HTMLInputElement || e.target instanceof HTMLTextAreaElement;
    if (typing) {
      if (e.key === "Escape") { e.target.blur(); move(0); }
      return;
    }
    const handlers = {
      j: () => move(1), ArrowDown: () => move(1),
      k: () => move(-1), ArrowUp: () => move(-1),
      a: () => act(current(), "accept"),
      r: () => act(current(), "reject"),
      i: () => addInput && addInput.focus(),
      n: () => goItem(1),
      p: () => goItem(-1),
    };
    const handler = handlers[e.key];
    if (!handler) return;
    e.preventDefault();
    handler();
  });

  const first = rows()[0];
  if (first) focusRow(first);
})();
