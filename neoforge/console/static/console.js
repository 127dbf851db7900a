// NeoForge Mail console: refresh panels in place, select-all, confirm destructive forms. No library.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  for (const panel of document.querySelectorAll("[data-refresh]")) {
    const refresh = async () => {
      try {
        const response = await fetch(panel.dataset.refresh, { credentials: "same-origin", redirect: "error" });
        if (!response.ok) return;
        panel.innerHTML = await response.text();
        panel.dataset.refreshed = String(Date.now());
      } catch (error) {
        // Signed out or offline: keep the last figures.
      }
    };
    setInterval(refresh, 5000);
  }
  for (const box of document.querySelectorAll("[data-select-all]")) {
    box.addEventListener("change", () => {
      for (const item of document.querySelectorAll('input[type=checkbox][name=id]')) item.checked = box.checked;
    });
  }
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
});
