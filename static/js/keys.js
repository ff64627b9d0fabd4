// The API keys pages: a Copy button for a new key's token (shown once), and
// a confirmation before revoking, which cannot be undone.
//
// Without this script both pages still work: the token can be selected and
// copied by hand, and Revoke revokes at once. Words come from the page's
// catalog (gettext, interpolate: the /jsi18n/ script).

const token = document.getElementById("token");
const copy = document.getElementById("copy");
const copyStatus = document.getElementById("copy-status");

if (token && copy && navigator.clipboard) {
  copy.hidden = false;
  copy.addEventListener("click", async () => {
    try {
      await navigator.clipboard.writeText(token.value);
      copyStatus.textContent = gettext("Copied. Paste it where the program asks for an API key.");
    } catch {
      token.select();
      copyStatus.textContent = gettext("The browser did not allow copying: the key is selected, press Ctrl+C (⌘C).");
    }
  });
}
if (token) {
  token.addEventListener("focus", () => token.select());
}

for (const form of document.querySelectorAll("form.key-revoke")) {
  form.addEventListener("submit", (event) => {
    // The name is the person's own text; confirm() shows it as plain text.
    const question = gettext("Revoke “%(name)s”? Programs using it stop working at once.");
    if (!window.confirm(interpolate(question, { name: form.dataset.name }, true))) {
      event.preventDefault();
    }
  });
}
