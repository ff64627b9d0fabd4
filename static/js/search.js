// The sidebar's search over the person's own conversations (titles and
// messages), through GET /api/conversations/search/?q= (docs/protocol.md).
// While the box holds a query, its results take the place of the list.
// Titles and snippets are the person's own text: set as text, never as HTML.

import { api } from "./conversations.js";
import { SEARCH_WORDS } from "./words.js";

const DEBOUNCE_MS = 250;

/**
 * Wire the search `input` to the `results` list, hiding `list` (the
 * conversations) while a query is shown; `status` (a polite live region)
 * says how many were found. `open(id)` opens a result. Escape empties the box.
 */
export function searchBox(input, results, list, status, open) {
  let timer = null;
  let asked = 0; // answers to older queries are dropped

  const clear = () => {
    results.replaceChildren();
    results.hidden = true;
    list.hidden = false;
    status.textContent = "";
  };

  async function search(query) {
    const mine = ++asked;
    if (!query.trim()) { clear(); return; }
    let found;
    try {
      ({ results: found } = await api(`/api/conversations/search/?q=${encodeURIComponent(query)}`));
    } catch {
      return;
    }
    if (mine !== asked) return;
    results.replaceChildren(...found.map((r) => resultItem(r, open)));
    results.hidden = false;
    list.hidden = true;
    status.textContent = found.length ? SEARCH_WORDS.results(found.length) : SEARCH_WORDS.noResults;
  }

  input.addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => search(input.value), DEBOUNCE_MS);
  });
  input.addEventListener("keydown", (event) => {
    if (event.key !== "Escape" || !input.value) return;
    event.preventDefault();
    input.value = "";
    asked++;
    clear();
  });
}

// A link to the conversation (it opens in place; a new tab works too).
function resultItem(result, open) {
  const li = document.createElement("li");
  const link = document.createElement("a");
  link.href = `/c/${result.id}/`;
  link.className = "result";
  const title = document.createElement("span");
  title.className = "result-title";
  title.textContent = result.title;
  link.append(title);
  if (result.snippet) {
    const snippet = document.createElement("span");
    snippet.className = "result-snippet";
    snippet.textContent = result.snippet;
    link.append(snippet);
  }
  link.addEventListener("click", (event) => {
    if (event.ctrlKey || event.metaKey || event.shiftKey || event.button !== 0) return;
    event.preventDefault();
    open(result.id);
  });
  li.append(link);
  return li;
}
