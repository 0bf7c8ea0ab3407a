// tagger viewer: progressive enhancement only; every page works without this script.
"use strict";
document.documentElement.classList.add("js");

// Forms leave empty fields out of the URL, so that a query stays short and shareable.
for (const form of document.querySelectorAll("form[data-clean-url]")) {
  form.addEventListener("submit", () => {
    for (const field of form.elements) {
      if (field.name && field.value === "") field.disabled = true;
    }
    window.setTimeout(() => { for (const field of form.elements) field.disabled = false; }, 0);
  });
}

// Forms that destroy something ask first (without this script they are sent as they are).
for (const form of document.querySelectorAll("form[data-confirm]")) {
  form.addEventListener("submit", (event) => {
    if (!window.confirm(form.dataset.confirm)) event.preventDefault();
  });
}

// Filters apply as soon as they change.
for (const form of document.querySelectorAll("form[data-autosubmit]")) {
  for (const select of form.querySelectorAll("select")) {
    select.addEventListener("change", () => form.requestSubmit());
  }
}

// Tag suggestions for the search box, fetched once, when it is first used.
const search = document.getElementById("search");
if (search && search.dataset.suggest) {
  search.addEventListener("focus", async () => {
    const list = document.getElementById("tag-suggestions");
    if (!list || list.dataset.loaded) return;
    list.dataset.loaded = "1";
    try {
      const response = await fetch(search.dataset.suggest, { credentials: "same-origin" });
      if (!response.ok) return;
      const data = await response.json();
      for (const tag of data.tags) {
        for (const value of [tag.label, tag.label_zh]) {
          const option = document.createElement("option");
          option.value = value;
          option.label = `${tag.label} · ${tag.label_zh} (${tag.count})`;
          list.append(option);
        }
      }
    } catch (error) { /* suggestions are a convenience */ }
  }, { once: true });
}

// Endless grid: the "More images" link is followed in place when it scrolls into view (and
// by the photo viewer at the last photo). A content already shown is not shown again.
const grid = document.getElementById("grid");
let loading = null;
async function loadMore() {
  const link = document.querySelector('.more a[rel="next"]');
  if (!grid || !link) return false;
  if (loading) return loading;
  loading = (async () => {
    try {
      const response = await fetch(link.href, { credentials: "same-origin" });
      if (!response.ok) return false;
      const page = new DOMParser().parseFromString(await response.text(), "text/html");
      const shown = new Set(Array.from(grid.querySelectorAll(".card"), (card) => card.dataset.sha));
      const items = Array.from(page.querySelectorAll("#grid > li"))
        .filter((item) => !item.classList.contains("card") || !shown.has(item.dataset.sha));
      grid.append(...items);
      const next = page.querySelector(".more");
      link.closest(".more").replaceWith(...(next ? [next] : []));
      watchMore();
      return true;
    } catch (error) {
      return false; // the link still works by hand
    } finally {
      loading = null;
    }
  })();
  return loading;
}
window.taggerLoadMore = loadMore;
function watchMore() {
  const link = document.querySelector('.more a[rel="next"]');
  if (!grid || !link || !("IntersectionObserver" in window)) return;
  const observer = new IntersectionObserver((entries) => {
    if (!entries.some((entry) => entry.isIntersecting)) return;
    observer.disconnect();
    loadMore();
  }, { rootMargin: "800px" });
  observer.observe(link);
}
watchMore();

// Image page: "Back to the list" (and Escape) return to the grid it was opened from, where it
// was scrolled to, when that grid is the previous page; else they open the list's first page.
const back = document.querySelector("a.back");
if (back) {
  back.addEventListener("click", (event) => {
    let from = null;
    try { from = document.referrer ? new URL(document.referrer) : null; } catch (error) { from = null; }
    const list = new URL(back.href);
    if (from && from.origin === window.location.origin && from.pathname === list.pathname && window.history.length > 1) {
      event.preventDefault();
      window.history.back();
    }
  });
}

// Image page: arrow keys step through the list it was opened from; Escape goes back to it.
document.addEventListener("keydown", (event) => {
  if (event.altKey || event.ctrlKey || event.metaKey) return;
  if (event.target.closest && event.target.closest("input, select, textarea")) return;
  const link = document.querySelector(`a[data-key="${event.key}"]`);
  if (link) {
    event.preventDefault();
    link.click();
  }
});

// Tags page: filter the list as you type.
const filter = document.getElementById("tag-filter");
if (filter) {
  filter.addEventListener("input", () => {
    const needle = filter.value.trim().toLowerCase();
    for (const chip of document.querySelectorAll("#all-tags .chip")) {
      chip.hidden = needle !== "" && !chip.textContent.toLowerCase().includes(needle);
    }
  });
}
