// Progressive enhancement only: every page works without it.
document.addEventListener("DOMContentLoaded", () => {
  // Ask before actions that cannot be undone (rotate a secret, disable an app).
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  // Copy a secret shown once.
  for (const button of document.querySelectorAll("button[data-copy]")) {
    button.hidden = !navigator.clipboard;
    button.addEventListener("click", () => {
      const text = document.getElementById(button.dataset.copy).textContent.trim();
      navigator.clipboard.writeText(text).then(() => { button.textContent = "Copied"; });
    });
  }
});
