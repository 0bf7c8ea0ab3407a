// The duplicates page: "keep this" asks first, naming how many files and bytes go to the trash
// (without scripts the server asks instead, on a page of its own); while the groups are being
// computed, the page follows the progress and reloads itself once they are ready.
"use strict";

document.addEventListener("submit", (event) => {
  const form = event.target.closest("form.dup-keep");
  if (!form) return;
  const count = Number(form.dataset.count);
  const question = `Keep ${form.dataset.name} and move the other ${count} ${count === 1 ? "copy" : "copies"} ` +
    `(${form.dataset.bytes}) to tagger's trash folder?`;
  if (!window.confirm(question)) {
    event.preventDefault();
    return;
  }
  form.querySelector("input[name=confirmed]").value = "yes";
});

const waiting = document.querySelector("[data-poll]");
if (waiting) {
  const poll = async () => {
    try {
      const answer = await fetch(waiting.dataset.poll, { headers: { Accept: "application/json" } });
      if (answer.status === 200) {
        window.location.reload();
        return;
      }
      const state = await answer.json();
      const done = `${Math.floor(100 * (state.progress || 0))}`;
      const shown = waiting.querySelector(".dup-done");
      if (shown) shown.textContent = `${done}%`;
      const bar = waiting.querySelector("progress");
      if (bar) bar.value = Number(done);
      if (answer.status !== 202) return;
    } catch (error) {
      // the viewer restarting: try again
    }
    window.setTimeout(poll, 2000);
  };
  window.setTimeout(poll, 2000);
}
