// Image page: "Why?" lays the model's class activation map over the photo, with an opacity
// slider; the part outside the model's centre crop is greyed. Without this script each
// "Why?" link opens the photo with the map drawn in, as a PNG.
"use strict";
(() => {
  const frame = document.querySelector(".explained[data-seen]");
  if (!frame) return;
  const photo = frame.querySelector("img.shown");
  const heatFrame = frame.querySelector(".heat-frame");
  const layer = heatFrame.querySelector("img.heat");
  const seen = heatFrame.querySelector(".seen");
  const controls = document.getElementById("explain-controls");
  const caption = document.getElementById("explain-caption");
  const slider = document.getElementById("heat-opacity");
  const ratio = Number(frame.dataset.width) / Number(frame.dataset.height);
  const [left, top, width, height] = frame.dataset.seen.split(" ").map(Number);
  Object.assign(seen.style, { left: `${left}%`, top: `${top}%`, width: `${width}%`, height: `${height}%` });
  let active = null;

  // The photo's drawn area inside its box (it is fitted with object-fit: contain).
  function place() {
    const boxWidth = photo.clientWidth, boxHeight = photo.clientHeight;
    let w = boxWidth, h = boxWidth / ratio;
    if (h > boxHeight) { h = boxHeight; w = boxHeight * ratio; }
    Object.assign(heatFrame.style, {
      left: `${photo.offsetLeft + (boxWidth - w) / 2}px`, top: `${photo.offsetTop + (boxHeight - h) / 2}px`,
      width: `${w}px`, height: `${h}px`,
    });
  }

  function hide() {
    if (active) active.setAttribute("aria-pressed", "false");
    active = null;
    heatFrame.hidden = true;
    controls.hidden = true;
  }

  function show(link) {
    if (active) active.setAttribute("aria-pressed", "false");
    active = link;
    link.setAttribute("aria-pressed", "true");
    const url = new URL(link.href, document.baseURI);
    url.searchParams.set("format", "layer");
    url.searchParams.set("size", "512");
    // A clip: the map is of the frame the tag came from, shown in place of the poster.
    const at = link.dataset.at ? ` (frame at ${link.dataset.at})` : "";
    if (link.dataset.frame && photo.getAttribute("src") !== link.dataset.frame) photo.src = link.dataset.frame;
    caption.textContent = `Where the model saw “${link.dataset.label}”${at}…`;
    layer.onload = () => { caption.textContent = `Where the model saw “${link.dataset.label}”${at}`; };
    layer.onerror = async () => {
      url.searchParams.set("format", "json");
      let message = "the explanation could not be made";
      try {
        const body = await (await fetch(url, { credentials: "same-origin" })).json();
        if (body.error) message = body.error;
      } catch (error) { /* keep the general message */ }
      caption.textContent = `No heatmap: ${message}`;
      heatFrame.hidden = true;
    };
    layer.src = url.toString();
    place();
    heatFrame.hidden = false;
    controls.hidden = false;
  }

  // Delegated, so that the "Why?" of keyword chips redrawn in place (keywords.js) work too.
  function toggle(link) {
    if (active === link) hide(); else show(link);
  }
  document.addEventListener("click", (event) => {
    const link = event.target.closest && event.target.closest("a.why");
    if (!link) return;
    event.preventDefault();
    toggle(link);
  });
  // A link made a button (role="button") is pressed with Space too; without this, Space scrolls the page.
  document.addEventListener("keydown", (event) => {
    const link = event.target.closest && event.target.closest("a.why");
    if (!link || event.key !== " " || event.altKey || event.ctrlKey || event.metaKey) return;
    event.preventDefault();
    toggle(link);
  });
  slider.addEventListener("input", () => { layer.style.opacity = slider.value; });
  layer.style.opacity = slider.value;
  window.addEventListener("resize", () => { if (active) place(); });
  photo.addEventListener("load", () => { if (active) place(); });
})();
