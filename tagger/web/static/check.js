// Manual check: choose or drop images, see a preview and the model's top 3 for each.
// Images are sent to /api/classify one by one; nothing is stored on the server.
"use strict";
const form = document.getElementById("check-form");
const input = document.getElementById("check-files");
const drop = document.getElementById("drop");
const results = document.getElementById("check-results");
const resultTemplate = document.getElementById("result-template");
const barTemplate = document.getElementById("bar-template");

function percent(score) {
  const value = score * 100;
  return value < 99.5 ? `${value.toFixed(1)}%` : `${value.toFixed(0)}%`;
}

function bar(tag) {
  const node = barTemplate.content.firstElementChild.cloneNode(true);
  const link = node.querySelector("a");
  link.textContent = tag.label;
  link.href = `/?tag=${encodeURIComponent(tag.wnid)}`;
  node.querySelector(".zh").textContent = tag.label_zh;
  const meter = node.querySelector("meter");
  meter.value = tag.score;
  meter.textContent = percent(tag.score);
  node.querySelector(".bar-value").textContent = percent(tag.score);
  return node;
}

async function check(file) {
  const item = resultTemplate.content.firstElementChild.cloneNode(true);
  const preview = item.querySelector(".preview");
  const url = URL.createObjectURL(file);
  preview.src = url;
  preview.alt = `Preview of ${file.name}`;
  preview.addEventListener("load", () => URL.revokeObjectURL(url), { once: true });
  preview.addEventListener("error", () => { preview.hidden = true; URL.revokeObjectURL(url); }, { once: true });
  item.querySelector(".result-name").textContent = file.name;
  const status = item.querySelector(".status");
  results.prepend(item);
  const body = new FormData();
  body.append("file", file, file.name);
  const started = performance.now();
  try {
    const response = await fetch(form.dataset.api, { method: "POST", body, credentials: "same-origin" });
    const data = await response.json();
    const result = data.results ? data.results[0] : null;
    if (!result || result.error || !response.ok && response.status !== 422) {
      status.textContent = (result && result.error) || data.error || `The server answered ${response.status}.`;
      status.classList.add("error");
      return;
    }
    const bars = document.createElement("div");
    bars.className = "bars";
    for (const tag of result.tags) bars.append(bar(tag));
    status.before(bars);
    const seconds = ((performance.now() - started) / 1000).toFixed(2);
    status.textContent = `${result.width} × ${result.height} · ${data.model} · ${seconds} s`;
    status.className = "timing";
    item.classList.add("done");
  } catch (error) {
    status.textContent = "The server could not be reached.";
    status.classList.add("error");
  }
}

async function checkAll(files) {
  for (const file of files) await check(file);
}

input.addEventListener("change", () => {
  checkAll([...input.files]);
  input.value = "";
});
form.addEventListener("submit", (event) => {
  event.preventDefault();
  checkAll([...input.files]);
});
for (const name of ["dragenter", "dragover"]) {
  drop.addEventListener(name, (event) => { event.preventDefault(); drop.classList.add("dragging"); });
}
for (const name of ["dragleave", "drop"]) {
  drop.addEventListener(name, () => drop.classList.remove("dragging"));
}
drop.addEventListener("drop", (event) => {
  event.preventDefault();
  checkAll([...event.dataTransfer.files].filter((file) => file.type.startsWith("image/") || /\.(heic|heif)$/i.test(file.name)));
});
window.addEventListener("dragover", (event) => event.preventDefault());
window.addEventListener("drop", (event) => event.preventDefault());
