// The status page's live part: follow /v1/events, redraw the table and the budget bar.
const $ = (s) => document.querySelector(s);
const fmt = (n) => (!n ? "-" : n >= 2 ** 30 ? (n / 2 ** 30).toFixed(1) + " GiB" : (n / 2 ** 20).toFixed(0) + " MiB");
const RESIDENT = ["ready", "loading", "parked", "unloading"];

async function act(model, what) {
  await fetch(`/v1/admin/models/${encodeURIComponent(model)}/${what}`, { method: "POST" });
}

function state(c) {
  let text = c.state + (c.pinned ? " (pinned)" : "");
  if (c.loading_s != null) text += ` ${Math.round(c.loading_s)}s` + (c.last_load_s ? ` of ~${Math.round(c.last_load_s)}s` : "");
  return text;
}

function row(c) {
  const mem = c.memory_measured_bytes ? fmt(c.memory_measured_bytes) : "~" + fmt(c.memory_estimated_bytes);
  const tr = document.createElement("tr");
  tr.dataset.model = c.id;
  const cells = [
    [c.id], [c.type], [state(c), "state " + c.state], [c.placement || "-"],
    [c.engine || "-"], [mem], [c.in_flight], [c.queued], [c.error || ""],
  ];
  for (const [value, cls] of cells) {
    const td = document.createElement("td");
    td.textContent = value ?? "";
    if (cls) td.className = cls;
    tr.append(td);
  }
  const loaded = RESIDENT.includes(c.state);
  const button = document.createElement("button");
  button.textContent = loaded ? "unload" : "load";
  button.onclick = () => act(c.id, loaded ? "unload" : "load");
  const td = document.createElement("td");
  td.append(button);
  tr.append(td);
  return tr;
}

async function refresh() {
  const [models, health] = await Promise.all([
    fetch("/v1/models").then((r) => r.json()),
    fetch("/v1/health").then((r) => r.json()),
  ]);
  const cards = models.data;
  $("#models").replaceChildren(...cards.map(row));
  const total = health.budget_bytes || 0;
  const planned = health.planned_bytes || 0;
  const measured = cards
    .filter((c) => ["ready", "unloading"].includes(c.state))
    .reduce((sum, c) => sum + (c.memory_measured_bytes || 0), 0);
  if (total) {
    $("#planned").style.width = Math.min(100, (100 * planned) / total) + "%";
    $("#measured").style.width = Math.min(100, (100 * measured) / total) + "%";
  }
  $("#budget").textContent = `planned ${fmt(planned)} · measured ${fmt(measured)} · budget ${fmt(total)}`;
  $("#empty").hidden = cards.length > 0;
}

function log(e) {
  const li = document.createElement("li");
  li.textContent = `${new Date(e.time * 1000).toLocaleTimeString()} ${e.model}: ${e.kind} ${e.detail || ""}`;
  $("#events").prepend(li);
  while ($("#events").children.length > 30) $("#events").lastChild.remove();
}

new EventSource("/v1/events").onmessage = (message) => {
  const event = JSON.parse(message.data);
  if (event.kind !== "snapshot") log(event);
  refresh();
};
