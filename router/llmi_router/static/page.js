// The status page's live part: follow /v1/events, redraw the table and the budget bar.
const $ = (s) => document.querySelector(s);
const fmt = (n) => (!n ? "-" : n >= 2 ** 30 ? (n / 2 ** 30).toFixed(1) + " GiB" : (n / 2 ** 20).toFixed(0) + " MiB");
const RESIDENT = ["ready", "loading", "parked", "unloading"];

// With API keys on, the key the reader typed is kept for this tab only and sent as OpenAI's SDK does.
const auth = () => {
  const key = sessionStorage.getItem("llmi-key");
  return key ? { Authorization: `Bearer ${key}` } : {};
};
const get = (path) => fetch(path, { headers: auth() }).then((r) => (r.ok ? r.json() : Promise.reject(r.status)));

async function act(model, what) {
  await fetch(`/v1/admin/models/${encodeURIComponent(model)}/${what}`, { method: "POST", headers: auth() });
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
  const [models, health] = await Promise.all([get("/v1/models"), get("/v1/health")]);
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

function handle(event) {
  if (event.kind !== "snapshot") log(event);
  refresh().catch(() => {});
}

// Server-sent events read with fetch (EventSource cannot send a key); reconnects after a break.
async function follow() {
  const response = await fetch("/v1/events", { headers: auth() }).catch(() => null);
  if (response && response.status === 401) {
    $("#key").hidden = false;
    return;
  }
  if (response && response.ok) {
    $("#key").hidden = true;
    const reader = response.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read().catch(() => ({ done: true }));
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        for (const line of buffer.slice(0, end).split("\n")) {
          if (line.startsWith("data: ")) handle(JSON.parse(line.slice(6)));
        }
        buffer = buffer.slice(end + 2);
      }
    }
  }
  setTimeout(follow, 2000);
}

$("#key").onsubmit = (e) => {
  e.preventDefault();
  sessionStorage.setItem("llmi-key", e.target.key.value);
  follow();
};
follow();
