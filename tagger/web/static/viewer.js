// tagger grid: keyboard moves, selection with a bar of bulk actions, and the full-screen photo viewer.
// Progressive enhancement: without this script each tile is a link to the image's page, the
// checkboxes belong to the bulk form, and its buttons post it.
"use strict";
(() => {
  const grid = document.getElementById("grid");
  if (!grid) return;
  const cards = () => Array.from(grid.querySelectorAll(".card"));
  const linkOf = (card) => card.querySelector(":scope > a");
  const boxOf = (card) => card.querySelector(".select input");

  // ---- the grid is one tab stop: arrows move between tiles, Space selects, Enter opens ----
  function makeFocusable(card) {
    for (const link of grid.querySelectorAll('.card > a[tabindex="0"]')) link.tabIndex = -1;
    linkOf(card).tabIndex = 0;
  }
  function adopt(nodes) {
    for (const card of nodes) {
      linkOf(card).tabIndex = -1;
      boxOf(card).tabIndex = -1;
    }
    if (!grid.querySelector('.card > a[tabindex="0"]') && cards().length) makeFocusable(cards()[0]);
  }
  adopt(cards());
  new MutationObserver((changes) => {
    const added = [];
    for (const change of changes) for (const node of change.addedNodes) if (node.classList && node.classList.contains("card")) added.push(node);
    if (added.length) { adopt(added); updateSelection(); }
  }).observe(grid, { childList: true });

  function moveTo(card) {
    if (!card) return;
    makeFocusable(card);
    linkOf(card).focus();
  }
  function step(card, by) {
    const all = cards();
    return all[Math.min(all.length - 1, Math.max(0, all.indexOf(card) + by))];
  }
  function vertical(card, down) {
    // The tile in the next (or previous) row nearest in x: rows may start after a month heading.
    const here = card.getBoundingClientRect();
    let best = null, bestRow = null, bestDx = Infinity;
    for (const other of cards()) {
      const box = other.getBoundingClientRect();
      const beyond = down ? box.top > here.top + 2 : box.top < here.top - 2;
      if (!beyond) continue;
      const row = box.top;
      const closerRow = bestRow === null || (down ? row < bestRow - 2 : row > bestRow + 2);
      const sameRow = bestRow !== null && Math.abs(row - bestRow) <= 2;
      const dx = Math.abs(box.left - here.left);
      if (closerRow || (sameRow && dx < bestDx)) { best = other; bestRow = row; bestDx = dx; }
    }
    return best;
  }
  grid.addEventListener("keydown", (event) => {
    const card = event.target.closest(".card");
    if (!card || event.altKey || event.ctrlKey || event.metaKey) return;
    const moves = {
      ArrowRight: () => step(card, 1), ArrowLeft: () => step(card, -1),
      ArrowDown: () => vertical(card, true), ArrowUp: () => vertical(card, false),
      Home: () => cards()[0], End: () => cards()[cards().length - 1],
    };
    if (moves[event.key]) {
      event.preventDefault();
      moveTo(moves[event.key]());
    } else if (event.key === " " || event.key === "x") {
      event.preventDefault();
      const box = boxOf(card);
      box.checked = !box.checked;
      selectRange(card, box.checked, event.shiftKey);
    }
  });

  // ---- selection: a tile's corner, shift for a range, all shown; a bar with the count and actions ----
  const form = document.getElementById("bulk");
  const fold = form && form.querySelector(".selection-fold");
  const count = document.getElementById("selected-count");
  const message = document.getElementById("bar-message");
  let anchor = null;
  let shiftHeld = false;
  grid.addEventListener("click", (event) => { shiftHeld = event.shiftKey; }, true);
  grid.addEventListener("change", (event) => {
    const box = event.target.closest(".select input");
    if (box) selectRange(box.closest(".card"), box.checked, shiftHeld);
    shiftHeld = false;
  });
  function selectRange(card, checked, range) {
    if (range && anchor && anchor.isConnected) {
      const all = cards();
      const [from, to] = [all.indexOf(anchor), all.indexOf(card)].sort((a, b) => a - b);
      for (const other of all.slice(from, to + 1)) boxOf(other).checked = checked;
    }
    anchor = card;
    updateSelection();
  }
  function selected() { return cards().filter((card) => boxOf(card).checked); }
  function updateSelection() {
    const chosen = selected();
    for (const card of cards()) card.classList.toggle("selected", boxOf(card).checked);
    document.body.classList.toggle("selecting", chosen.length > 0);
    if (fold) fold.open = chosen.length > 0;
    if (count) count.textContent = chosen.length === 1 ? "1 image selected" : `${chosen.length} images selected`;
  }
  const setAll = (checked) => { for (const card of cards()) boxOf(card).checked = checked; updateSelection(); };
  const all = document.getElementById("select-all");
  if (all) all.addEventListener("click", () => setAll(true));
  const none = document.getElementById("select-none");
  if (none) none.addEventListener("click", () => setAll(false));
  updateSelection();

  if (form) {
    form.addEventListener("submit", async (event) => {
      const button = event.submitter;
      if (button && button.name === "side" && !form.elements.name.value.trim()) {
        event.preventDefault(); // nothing typed is lost to an error page
        message.textContent = "Type the name of the tag to teach first.";
        form.elements.name.focus();
        return;
      }
      if (!button || button.name !== "action" || button.value === "search") return; // to a page of their own
      event.preventDefault();
      const words = form.elements.keywords.value.trim();
      if (!words) { message.textContent = "Type the keywords to add or remove first."; form.elements.keywords.focus(); return; }
      const data = new FormData(form, button); // (form.action would be its "action" buttons)
      message.textContent = "Saving…";
      try {
        const response = await fetch(form.getAttribute("action"), { method: "POST", body: data, credentials: "same-origin",
                                                    headers: { Accept: "application/json" } });
        const answer = await response.json();
        if (!response.ok) { message.textContent = answer.error || `The change failed (${response.status}).`; return; }
        const verb = answer.action === "add" ? "Added" : "Removed";
        const where = answer.action === "add" ? "to" : "from";
        message.textContent = `${verb} ${answer.keywords.map((w) => `“${w}”`).join(", ")} ${where} ${answer.changed} image${answer.changed === 1 ? "" : "s"}.`
          + (answer.problems.length ? ` Not changed: ${answer.problems.join("; ")}` : "");
        form.elements.keywords.value = "";
      } catch (error) {
        message.textContent = "The change could not be sent; check the connection and try again.";
      }
    });
  }

  // ---- the photo viewer: full screen, zoom and pan, swipe and arrows, Escape back to the same tile ----
  const dialog = document.getElementById("lightbox");
  if (!dialog || typeof dialog.showModal !== "function") return;
  const stage = document.getElementById("lb-stage");
  const image = document.getElementById("lb-image");
  const video = document.getElementById("lb-video");
  const title = document.getElementById("lb-title");
  const details = document.getElementById("lb-details");
  const previous = document.getElementById("lb-prev");
  const following = document.getElementById("lb-next");
  let current = null;
  let pushed = false;
  let zoom = { scale: 1, x: 0, y: 0 };

  grid.addEventListener("click", (event) => {
    const link = event.target.closest(".card > a");
    if (!link || event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey) return;
    event.preventDefault();
    dialog.showModal();
    show(link.closest(".card"));
    document.getElementById("lb-close").focus();
  });

  const neighbour = (card, by) => {
    const all = cards();
    return all[all.indexOf(card) + by] || null;
  };
  const moreToLoad = () => Boolean(document.querySelector('.more a[rel="next"]')) && typeof window.taggerLoadMore === "function";

  function show(card) {
    current = card;
    const link = linkOf(card);
    resetZoom();
    if (card.dataset.video) {
      image.hidden = true;
      video.hidden = false;
      video.poster = card.dataset.full;
      video.src = card.dataset.video;
    } else {
      video.pause();
      video.removeAttribute("src");
      video.hidden = true;
      image.hidden = false;
      const tile = card.querySelector("img");
      image.src = tile.currentSrc || tile.src; // at once, then the screen-sized picture
      image.alt = card.dataset.name;
      const full = new Image();
      full.onload = () => { if (current === card) image.src = full.src; };
      full.src = card.dataset.full;
    }
    const caption = card.querySelector(".caption .tag");
    title.textContent = card.dataset.name + (caption ? ` · ${caption.textContent.replace(/\s+/g, " ").trim()}` : "");
    details.href = link.href;
    previous.disabled = !neighbour(card, -1);
    following.disabled = !neighbour(card, 1) && !moreToLoad();
    for (const next of [neighbour(card, -1), neighbour(card, 1)]) {
      if (next && !next.dataset.video) new Image().src = next.dataset.full; // the next swipe is instant
    }
    if (pushed) {
      history.replaceState({ viewer: true }, "", link.href); // one history entry, however many photos
    } else {
      history.pushState({ viewer: true }, "", link.href); // Back closes the viewer
      pushed = true;
    }
    makeFocusable(card);
  }

  async function go(by) {
    if (!current) return;
    let next = neighbour(current, by);
    if (!next && by > 0 && moreToLoad()) {
      await window.taggerLoadMore();
      next = neighbour(current, by);
    }
    if (next) show(next);
  }

  // "Details" leaves the grid's history as it was before the viewer: Back from the image's page
  // returns to the grid at the same place (restored whole by the browser's back-forward cache).
  details.addEventListener("click", (event) => {
    if (event.button !== 0 || event.ctrlKey || event.metaKey || event.shiftKey || event.altKey || !pushed) return;
    event.preventDefault();
    const target = details.href;
    pushed = false;
    window.addEventListener("popstate", () => window.location.assign(target), { once: true });
    dialog.close();
    history.back();
  });
  previous.addEventListener("click", () => go(-1));
  following.addEventListener("click", () => go(1));
  document.getElementById("lb-close").addEventListener("click", () => dialog.close());
  document.addEventListener("keydown", (event) => {
    if (!dialog.open || event.target === video || event.altKey || event.ctrlKey || event.metaKey) return;
    const keys = { ArrowRight: () => go(1), ArrowLeft: () => go(-1), "+": () => zoomAt(zoom.scale * 1.5),
                   "=": () => zoomAt(zoom.scale * 1.5), "-": () => zoomAt(zoom.scale / 1.5), "0": () => resetZoom() };
    if (keys[event.key]) { event.preventDefault(); keys[event.key](); }
  });
  dialog.addEventListener("close", () => {
    video.pause();
    if (pushed) { pushed = false; history.back(); }
    if (current) {
      makeFocusable(current);
      linkOf(current).focus({ preventScroll: true });
      current.scrollIntoView({ block: "nearest" });
    }
  });
  window.addEventListener("popstate", () => {
    if (dialog.open) { pushed = false; dialog.close(); }
  });

  // zoom: wheel, double-click or double-tap, pinch; pan by dragging while zoomed; swipe to step
  function apply() {
    image.style.transform = zoom.scale === 1 ? "" : `translate(${zoom.x}px, ${zoom.y}px) scale(${zoom.scale})`;
    image.classList.toggle("zoomed", zoom.scale > 1);
  }
  function resetZoom() { zoom = { scale: 1, x: 0, y: 0 }; apply(); }
  function zoomAt(scale, clientX, clientY) {
    scale = Math.min(8, Math.max(1, scale));
    if (scale === 1) { resetZoom(); return; }
    const box = image.getBoundingClientRect();
    const originX = box.left - zoom.x, originY = box.top - zoom.y; // the untransformed box
    const px = clientX === undefined ? originX + box.width / zoom.scale / 2 : clientX;
    const py = clientY === undefined ? originY + box.height / zoom.scale / 2 : clientY;
    const localX = (px - originX - zoom.x) / zoom.scale, localY = (py - originY - zoom.y) / zoom.scale;
    zoom = { scale, x: px - originX - scale * localX, y: py - originY - scale * localY };
    apply();
  }
  stage.addEventListener("wheel", (event) => {
    if (image.hidden) return;
    event.preventDefault();
    zoomAt(zoom.scale * Math.exp(-event.deltaY * 0.002), event.clientX, event.clientY);
  }, { passive: false });
  stage.addEventListener("dblclick", (event) => { // on the stage: it captures the pointer while pressed
    if (!image.hidden) zoomAt(zoom.scale > 1 ? 1 : 2.5, event.clientX, event.clientY);
  });

  const pointers = new Map();
  let gesture = null;
  let lastTap = { time: 0, x: 0, y: 0 };
  stage.addEventListener("pointerdown", (event) => {
    if (image.hidden || event.target.closest("button, a, video")) return;
    stage.setPointerCapture(event.pointerId);
    pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    const points = [...pointers.values()];
    gesture = points.length === 2
      ? { pinch: Math.hypot(points[0].x - points[1].x, points[0].y - points[1].y), scale: zoom.scale }
      : { startX: event.clientX, startY: event.clientY, x: zoom.x, y: zoom.y, time: Date.now() };
  });
  stage.addEventListener("pointermove", (event) => {
    if (!pointers.has(event.pointerId) || !gesture) return;
    pointers.set(event.pointerId, { x: event.clientX, y: event.clientY });
    const points = [...pointers.values()];
    if (gesture.pinch && points.length === 2) {
      const distance = Math.hypot(points[0].x - points[1].x, points[0].y - points[1].y);
      zoomAt(gesture.scale * distance / gesture.pinch, (points[0].x + points[1].x) / 2, (points[0].y + points[1].y) / 2);
    } else if (!gesture.pinch && zoom.scale > 1) {
      zoom.x = gesture.x + event.clientX - gesture.startX;
      zoom.y = gesture.y + event.clientY - gesture.startY;
      apply();
    } else if (!gesture.pinch) {
      image.style.transform = `translateX(${event.clientX - gesture.startX}px)`; // follows the finger
    }
  });
  function release(event) {
    if (!pointers.has(event.pointerId)) return;
    pointers.delete(event.pointerId);
    if (!gesture || gesture.pinch) { if (pointers.size === 0) gesture = null; return; }
    const dx = event.clientX - gesture.startX, dy = event.clientY - gesture.startY;
    const swiped = zoom.scale === 1 && Math.abs(dx) > 50 && Math.abs(dx) > Math.abs(dy);
    if (zoom.scale === 1) apply();
    if (swiped) go(dx < 0 ? 1 : -1);
    if (event.pointerType !== "mouse" && Math.hypot(dx, dy) < 10) { // a tap; two quick ones zoom
      const now = Date.now();
      if (now - lastTap.time < 300 && Math.hypot(event.clientX - lastTap.x, event.clientY - lastTap.y) < 30) {
        zoomAt(zoom.scale > 1 ? 1 : 2.5, event.clientX, event.clientY);
        lastTap = { time: 0, x: 0, y: 0 };
      } else {
        lastTap = { time: now, x: event.clientX, y: event.clientY };
      }
    }
    gesture = null;
  }
  stage.addEventListener("pointerup", release);
  stage.addEventListener("pointercancel", release);
})();
