// The caught-mail page: the list refreshes itself (polling), one message opens beside it.
"use strict";

const POLL_MS = 1000;
let selected = null;
let lastList = "";

const $ = (selector) => document.querySelector(selector);

function el(tag, text, className) {
  const node = document.createElement(tag);
  if (text !== undefined && text !== null) node.textContent = String(text);
  if (className) node.className = className;
  return node;
}

function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return isNaN(date) ? iso : date.toLocaleString();
}

async function getJson(url) {
  const response = await fetch(url, { cache: "no-store" });
  if (!response.ok) throw new Error(`${url}: ${response.status}`);
  return response.json();
}

function renderList(rows) {
  const body = $("#messages tbody");
  body.replaceChildren();
  for (const row of rows) {
    const tr = el("tr");
    tr.dataset.id = row.id;
    if (row.id === selected) tr.classList.add("selected");
    tr.append(el("td", when(row.received)), el("td", row.from), el("td", row.to.join(", ")), el("td", row.subject));
    const marks = el("td");
    if (row.attachments) marks.append(el("span", `${row.attachments} attachment(s)`, "badge"));
    if (row.defects) marks.append(el("span", `${row.defects} defect(s)`, "badge defect"));
    tr.append(marks);
    tr.addEventListener("click", () => openMessage(row.id));
    body.append(tr);
  }
  $("#empty").hidden = rows.length > 0;
  $("#count").textContent = `${rows.length} message(s)`;
}

async function refresh() {
  try {
    const rows = await getJson("/api/messages");
    const text = JSON.stringify(rows);
    if (text !== lastList) {
      lastList = text;
      renderList(rows);
    }
    $("#status").textContent = "";
  } catch (error) {
    $("#status").textContent = "viewer unreachable, retrying…";
  }
  setTimeout(refresh, POLL_MS);
}

function showTab(name) {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.classList.toggle("active", button.dataset.tab === name);
  }
  for (const tab of document.querySelectorAll(".tab")) {
    tab.classList.toggle("active", tab.id === `tab-${name}`);
  }
}

async function openMessage(id) {
  selected = id;
  location.hash = id;
  for (const tr of document.querySelectorAll("#messages tbody tr")) {
    tr.classList.toggle("selected", tr.dataset.id === id);
  }
  const message = await getJson(`/api/messages/${id}`);
  $("#message").hidden = false;
  $("#subject").textContent = message.subject || "(no subject)";

  const envelope = $("#envelope");
  envelope.replaceChildren();
  const facts = [
    ["Received", when(message.envelope.received)],
    ["Envelope from", message.envelope.mail_from],
    ["Envelope to", (message.envelope.rcpt_tos || []).join(", ")],
  ];
  for (const [name, value] of facts) envelope.append(el("dt", name), el("dd", value || ""));

  const defects = $("#defects");
  defects.hidden = message.defects.length === 0;
  defects.querySelector("ul").replaceChildren(...message.defects.map((d) => el("li", d)));

  const frame = $("#html-frame");
  frame.hidden = !message.has_html;
  frame.nextElementSibling.hidden = message.has_html;
  frame.src = message.has_html ? `/messages/${id}/html` : "about:blank";

  $("#text").textContent = message.text === null ? "(no text part)" : message.text;
  $("#headers tbody").replaceChildren(
    ...message.headers.map(([name, value]) => {
      const tr = el("tr");
      tr.append(el("th", name), el("td", value));
      return tr;
    }),
  );
  $("#raw-link").href = `/messages/${id}/raw`;
  $("#raw").textContent = await (await fetch(`/messages/${id}/raw`, { cache: "no-store" })).text();

  const list = $("#attachments");
  list.replaceChildren();
  for (const part of message.attachments) {
    const item = el("li");
    const link = el("a", part.filename || `attachment-${part.index}`);
    link.href = `/messages/${id}/attachments/${part.index}`;
    link.setAttribute("download", part.filename || "");
    item.append(link, el("span", ` ${part.content_type}, ${part.size} bytes`, "muted"));
    list.append(item);
  }
  if (!message.attachments.length) list.append(el("li", "No attachments.", "muted"));
  showTab(message.has_html ? "html" : "text");
}

document.addEventListener("DOMContentLoaded", () => {
  for (const button of document.querySelectorAll("#tabs button")) {
    button.addEventListener("click", () => showTab(button.dataset.tab));
  }
  const wanted = location.hash.slice(1);
  if (/^\d{6}$/.test(wanted)) openMessage(wanted).catch(() => {});
  refresh();
});
