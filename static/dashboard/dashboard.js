// The dashboard: reads /overview and /jobs every few seconds, and a job's history (/jobs/{id}) on click.
// Every value is put in the page as text, never as HTML.
"use strict";

const REFRESH_MS = 2000;
let selected = null;

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (className) td.className = className;
  return td;
}

function bar(used, total) {
  const td = document.createElement("td");
  const outer = document.createElement("span");
  outer.className = "bar";
  const inner = document.createElement("span");
  inner.style.width = total ? `${Math.min(100, (100 * used) / total)}%` : "0";
  outer.appendChild(inner);
  td.append(outer, `${used} / ${total ?? "–"}`);
  return td;
}

function status(name) {
  return cell(name, `status ${name}`);
}

function when(seconds) {
  return seconds ? new Date(seconds * 1000).toLocaleString() : "–";
}

function fill(table, rows, makeRow, empty) {
  const body = document.querySelector(`#${table} tbody`);
  const trs = rows.map(makeRow);
  if (!trs.length) {
    const tr = document.createElement("tr");
    const td = cell(empty, "muted");
    td.colSpan = document.querySelectorAll(`#${table} thead th`).length;
    tr.appendChild(td);
    trs.push(tr);
  }
  body.replaceChildren(...trs);
}

function row(cells, job) {
  const tr = document.createElement("tr");
  tr.append(...cells);
  if (job !== undefined) {
    tr.className = job === selected ? "job selected" : "job";
    tr.dataset.job = job;
    tr.addEventListener("click", () => showJob(job));
  }
  return tr;
}

// A server with API_TOKEN answers 401 without one: the token typed in the form is kept for the tab's life.
function token() {
  return sessionStorage.getItem("token");
}

async function getJSON(path) {
  const headers = { Accept: "application/json" };
  if (token()) headers.Authorization = `Bearer ${token()}`;
  const response = await fetch(path, { headers });
  const body = await response.json();
  document.getElementById("login").hidden = response.status !== 401;
  if (!response.ok) throw new Error(`${path}: ${body.message || response.status}`);
  return body;
}

document.getElementById("login").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("token", document.getElementById("token").value);
  refresh();
});

function show(overview, latest) {
  fill("services", overview.services, (s) =>
    row([cell(s.name), cell(s.queued, "number"), cell(s.running, "number"), bar(s.active, s.max_runs), cell(s.runs_per_user, "number")]),
    "no service configured");
  fill("clients", overview.clients, (c) => {
    const state = cell(c.up ? "up" : `down ${Math.round(c.down_for)} s: ${c.reason}`, c.up ? "up" : "down");
    const load = c.load === null ? "–" : `${c.load.toFixed(0)} %`;
    return row([cell(c.address), cell(c.services.join(", ")), state, cell(c.jobs, "number"), cell(c.running, "number"), cell(load, "number")]);
  }, "no client");
  const perUser = Object.fromEntries(overview.services.map((s) => [s.name, s.runs_per_user]));
  fill("users", overview.users, (u) =>
    row([cell(u.service), cell(u.user_id), cell(u.queued, "number"), cell(u.running, "number"), bar(u.active, perUser[u.service])]),
    "nobody is waiting");
  fill("failures", overview.failures, (j) =>
    row([cell(j.id), cell(j.service), cell(j.user_id), status(j.status), cell(when(j.finished_at)), cell(j.message)], j.id),
    "no failure");
  fill("jobs", latest.jobs, (j) =>
    row([cell(j.id), cell(j.service), cell(j.user_id), status(j.status), cell(when(j.created_at)), cell(j.message)], j.id),
    "no job yet");
  document.getElementById("updated").textContent = `updated ${new Date(overview.at * 1000).toLocaleTimeString()}`;
}

async function showJob(id) {
  selected = id;
  const job = await getJSON(`/jobs/${id}`);
  document.getElementById("job").hidden = false;
  const badge = document.createElement("span");
  badge.className = `status ${job.status}`;
  badge.textContent = job.status;
  const title = document.getElementById("job-title");
  title.replaceChildren(`Job ${job.id}: `, badge);
  title.dataset.status = job.status;
  const size = job.result_size === null ? "none" : `${job.result_size} bytes`;
  document.getElementById("job-facts").textContent =
    `service ${job.service}, user ${job.user_id}, client ${job.client || "–"}, attempts ${job.attempts}, result ${size}` +
    (job.message ? `: ${job.message}` : "");
  fill("history", job.history, (e) => row([cell(when(e.at)), cell(e.from || "new"), status(e.to), cell(e.reason)]), "");
  document.querySelectorAll("tr.job").forEach((tr) => tr.classList.toggle("selected", Number(tr.dataset.job) === id));
}

async function refresh() {
  const problem = document.getElementById("problem");
  try {
    const [overview, latest] = await Promise.all([getJSON("/overview"), getJSON("/jobs?limit=20")]);
    show(overview, latest);
    if (selected !== null) await showJob(selected);
    problem.hidden = true;
  } catch (error) {
    problem.textContent = `Cannot refresh: ${error.message}`;
    problem.hidden = false;
  }
}

// The next refresh is set once this one has its answer: a slow server never gets a pile of requests.
async function keepRefreshing() {
  await refresh();
  setTimeout(keepRefreshing, REFRESH_MS);
}

keepRefreshing();
