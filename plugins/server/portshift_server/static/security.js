// Lists the advisories of /advisories on the security page (text only, no HTML from the feed).
"use strict";

async function listAdvisories() {
  const list = document.getElementById("advisories");
  try {
    const feed = await (await fetch("/advisories", { cache: "no-store" })).json();
    const items = feed.items || [];
    if (!items.length) {
      list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "No advisories have been published." }));
    } else {
      list.replaceChildren(...items.map((it) => {
        const li = document.createElement("li");
        li.textContent = `${(it.date_published || "").slice(0, 10)} ${it.title || it.id}: ${it.summary || ""}`;
        return li;
      }));
    }
  } catch (e) {
    list.replaceChildren(Object.assign(document.createElement("li"), { textContent: "The feed could not be loaded." }));
  }
  document.body.dataset.ready = "1";
}

document.addEventListener("DOMContentLoaded", listAdvisories);
