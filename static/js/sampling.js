// The per-conversation temperature control in the thread bar: a <select>
// whose options are in the template (their words with the page's other
// words). The value goes to POST /api/conversations/<id>/sampling/
// (docs/protocol.md); "" stands for null, the site's default.

import { api } from "./conversations.js";

/**
 * Wire the <select> `select` (inside its hidden `wrapper`) to the
 * conversation that `conversation()` returns (an id or null). Returns
 * {show(id, temperature)}: call it when a conversation is shown, with its
 * stored `temperature` (a number or null), or with id null to hide the
 * control. A refused or failed save puts the previous value back and calls
 * `failed(error)`.
 */
export function temperatureControl(wrapper, select, conversation, failed) {
  let saved = "";

  function choose(value) {
    if (![...select.options].some((o) => o.value === value)) {
      select.append(new Option(value, value)); // a value set elsewhere (the API)
    }
    select.value = value;
  }

  select.addEventListener("change", async () => {
    const id = conversation();
    if (id === null) return;
    const value = select.value;
    try {
      const answer = await api(`/api/conversations/${id}/sampling/`, {
        temperature: value === "" ? null : Number(value),
      });
      saved = answer.conversation.temperature === null ? "" : String(answer.conversation.temperature);
      choose(saved);
    } catch (error) {
      choose(saved);
      failed(error);
    }
  });

  return {
    show(id, temperature) {
      wrapper.hidden = id === null;
      saved = temperature == null ? "" : String(temperature);
      choose(saved);
    },
  };
}
