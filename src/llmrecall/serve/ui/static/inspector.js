// The inspector's one piece of script: post an event with the API key, then show the new
// answer in place. Plain fetch() and DOM calls: no library, no build step, no network
// beyond this service. Text goes into the page with textContent only; the new answer is
// the server's own HTML (escaped there).
"use strict";

function candidateIds() {
  return Array.from(document.querySelectorAll("#fused tr.candidate"), (row) => row.dataset.itemId);
}

async function addEvent(form, status) {
  const data = new FormData(form);
  const before = candidateIds();
  const event = { user_id: data.get("user_id"), item_id: String(data.get("item_id")).trim(),
                  type: String(data.get("type")).trim() || "interaction" };
  status.className = "";
  status.textContent = "sending…";
  const headers = { "content-type": "application/json" };
  if (data.get("key")) headers["x-api-key"] = data.get("key");
  const response = await fetch("/v1/events", { method: "POST", headers,
                                               body: JSON.stringify({ events: [event] }) });
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    status.className = "error";
    status.dataset.status = response.status;
    status.textContent = `refused (${response.status}): ${body.message || response.statusText}`;
    return;
  }
  // the same page again: the server answers from the API with the event counted
  const page = await fetch(window.location.href, { cache: "no-store" });
  const fresh = new DOMParser().parseFromString(await page.text(), "text/html")
    .getElementById("results");
  document.getElementById("results").replaceWith(document.adoptNode(fresh));
  const after = candidateIds();
  let added = 0;
  for (const row of document.querySelectorAll("#fused tr.candidate")) {
    if (!before.includes(row.dataset.itemId)) { row.classList.add("new"); added += 1; }
  }
  const moved = after.filter((id, i) => before[i] !== id).length;
  status.className = "ok";
  status.dataset.status = response.status;
  status.dataset.seq = body.last_seq;
  status.textContent = `event ${body.last_seq} stored: ${added} new candidates (highlighted), ` +
    `${moved} of ${after.length} positions changed`;
}

document.addEventListener("DOMContentLoaded", () => {
  const form = document.getElementById("add-event");
  if (!form) return;  // read-only: no key configured, or no user looked up
  const status = document.getElementById("event-status");
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    addEvent(form, status).catch((err) => {
      status.className = "error";
      status.textContent = `failed: ${err}`;
    });
  });
  // "event" buttons beside candidates put their item in the form
  document.addEventListener("click", (ev) => {
    const pick = ev.target.closest("button.pick");
    if (pick) document.getElementById("event-item").value = pick.dataset.itemId;
  });
});
