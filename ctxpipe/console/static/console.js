// ctxpipe console: the rebuild button and the pipeline page's auto-refresh. No library.
"use strict";
document.addEventListener("DOMContentLoaded", () => {
  const button = document.getElementById("rebuild");
  if (button) {
    button.addEventListener("click", async () => {
      const out = document.getElementById("rebuild-result");
      button.disabled = true;
      out.textContent = "replaying into a scratch version and assembling again...";
      out.className = "hint running";
      try {
        const resp = await fetch(button.dataset.url, { method: "POST", credentials: "same-origin" });
        const body = await resp.json();
        out.replaceChildren();
        if (!resp.ok) {
          out.className = "error done";
          out.textContent = `HTTP ${resp.status}: ${body.detail}`;
          return;
        }
        out.className = body.identical ? "ok done" : "warn done";
        const head = document.createElement("p");
        head.id = "rebuild-verdict";
        head.textContent = body.identical
          ? `identical (rebuilt in scratch version ${body.scratch_version})`
          : `${body.changes.length} difference(s) (scratch version ${body.scratch_version})`;
        const diff = document.createElement("pre");
        diff.id = "rebuild-diff";
        diff.className = "json";
        diff.textContent = body.text;
        out.append(head, diff);
      } catch (err) {
        out.className = "error done";
        out.textContent = String(err);
      } finally {
        button.disabled = false;
      }
    });
  }
  const auto = document.getElementById("autorefresh");
  if (auto) {
    auto.checked = sessionStorage.getItem("ctxpipe-autorefresh") === "1";
    auto.addEventListener("change", () => sessionStorage.setItem("ctxpipe-autorefresh", auto.checked ? "1" : "0"));
    setInterval(() => { if (auto.checked) location.reload(); }, 5000);
  }
});
