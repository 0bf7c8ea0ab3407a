// Keywords, in place: on the image page a removal redraws the keywords and offers "Undo" for a
// while; on the tag browser the filter shows the matching tags with the categories above them.
// Without this script the same forms post and the page comes back; "Removed by you" then
// offers "restore", and the tag browser is a tree of <details> that opens by hand.
"use strict";
(() => {
  const UNDO_SECONDS = 15;

  // -- the image page ------------------------------------------------------------------------
  const box = () => document.getElementById("keywords");
  const toast = document.getElementById("keyword-toast");
  let toastTimer = null;

  function hideToast() {
    if (!toast || toast.hidden) return;
    const hadFocus = toast.contains(document.activeElement);
    toast.hidden = true;
    toast.replaceChildren();
    if (hadFocus && box()) document.getElementById("keywords-title").focus();
  }

  function showToast(message, action, onAction) {
    window.clearTimeout(toastTimer);
    const text = document.createElement("span");
    text.textContent = message;
    toast.replaceChildren(text);
    if (action) {
      const button = document.createElement("button");
      button.type = "button";
      button.textContent = action;
      button.addEventListener("click", () => { window.clearTimeout(toastTimer); onAction(); });
      toast.append(button);
    }
    toast.hidden = false;
    if (action) toast.querySelector("button").focus();
    toastTimer = window.setTimeout(hideToast, UNDO_SECONDS * 1000);
  }

  // Post a form of the keywords box and put the page's new keywords box in place of the old one.
  async function send(form) {
    const response = await fetch(form.action, { method: "POST", body: new FormData(form), credentials: "same-origin" });
    if (!response.ok) throw new Error(`the server answered ${response.status}`);
    const page = new DOMParser().parseFromString(await response.text(), "text/html");
    const fresh = page.getElementById("keywords");
    if (!fresh) throw new Error("the page came back without its keywords");
    box().replaceWith(document.adoptNode(fresh));
  }

  function restoreForm(word) {
    return [...box().querySelectorAll("form.restore-keyword")].find((f) => f.dataset.keyword === word);
  }

  async function undo(word) {
    const form = restoreForm(word);
    if (!form) { hideToast(); return; }
    try {
      await send(form);
      document.getElementById("keywords-title").focus();  // the Undo button is gone: keep the keyboard here
      showToast(`“${word}” is back.`);
    } catch (error) {
      form.submit();
    }
  }

  if (toast) {
    document.addEventListener("submit", async (event) => {
      const form = event.target;
      if (!box() || !box().contains(form)) return;
      const word = form.dataset.keyword;
      const removing = form.classList.contains("remove-keyword");
      if (!removing && !form.classList.contains("restore-keyword")) return;  // adding reloads the page
      event.preventDefault();
      try {
        await send(form);
        if (removing) showToast(`Removed “${word}”.`, "Undo", () => undo(word));
        else showToast(`“${word}” is back.`);
      } catch (error) {
        form.submit();  // the ordinary way: the page comes back
      }
    });
    document.addEventListener("keydown", (event) => { if (event.key === "Escape" && !toast.hidden) hideToast(); });
  }

  // -- the tag browser -------------------------------------------------------------------------
  const filter = document.getElementById("tag-filter");
  const browser = document.getElementById("tag-browser");
  if (!filter || !browser) return;
  const status = document.getElementById("tag-filter-status");
  const items = [...browser.querySelectorAll(".tb-item")];
  const chips = [...browser.querySelectorAll("#all-tags .chip")];

  function matches(node, needle) {
    return (node.dataset.words || node.textContent).toLowerCase().includes(needle);
  }

  filter.addEventListener("input", () => {
    const needle = filter.value.trim().toLowerCase();
    const self = new Map(items.map((item) => [item, needle === "" || matches(item, needle)]));
    const below = new Map();  // something under it matches: deepest first
    for (const item of [...items].reverse()) {
      const list = item.querySelector(":scope > details > .tb-list");
      below.set(item, list ? [...list.children].some((child) => self.get(child) || below.get(child)) : false);
    }
    const above = new Map();  // something over it matches: shown with it, in full
    let shown = 0;
    for (const item of items) {
      const parent = item.parentElement.closest(".tb-item");
      above.set(item, parent ? self.get(parent) || above.get(parent) : false);
      item.hidden = !(self.get(item) || below.get(item) || above.get(item));
      const details = item.querySelector(":scope > details");
      if (details) details.open = needle !== "" && below.get(item);
      if (needle !== "" && self.get(item)) shown += 1;
    }
    for (const chip of chips) {
      chip.hidden = needle !== "" && !chip.textContent.toLowerCase().includes(needle);
      if (needle !== "" && !chip.hidden) shown += 1;
    }
    const classes = browser.querySelector(".tb-classes");
    if (classes) classes.open = needle !== "" && chips.some((chip) => !chip.hidden);
    status.textContent = needle === "" ? "" : `${shown} matching`;
  });
})();
