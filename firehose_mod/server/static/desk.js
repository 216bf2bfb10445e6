// The review desk's keyboard and small conveniences. Everything works without it: every button
// is a plain form submit to a page that says what it will do.
(function () {
  "use strict";
  function typing(e) {
    const t = e.target;
    return t && (t.isContentEditable || /^(INPUT|TEXTAREA|SELECT)$/.test(t.tagName));
  }
  const help = document.getElementById("help");
  const dialog = document.getElementById("confirm-dialog");
  const actForm = document.getElementById("act");
  let pending = null;

  function ask(button) {
    if (!dialog || button.disabled) return;
    pending = button;
    document.getElementById("confirm-title").textContent = button.value.charAt(0).toUpperCase() + button.value.slice(1) + "?";
    document.getElementById("confirm-plan").textContent = button.dataset.plan || "";
    dialog.showModal();
    document.getElementById("confirm-go").focus();
  }
  if (dialog) {
    dialog.addEventListener("close", function () {
      if (dialog.returnValue === "go" && pending && actForm) actForm.requestSubmit(pending);
      pending = null;
    });
  }
  // The queue: select all, count, x to pick the focused row.
  const all = document.getElementById("select-all");
  const picks = Array.from(document.querySelectorAll("input.pick"));
  function count() {
    const n = picks.filter(function (p) { return p.checked; }).length;
    const c = document.getElementById("selected-count");
    if (c) c.textContent = n + " selected";
    picks.forEach(function (p) { p.closest("tr").classList.toggle("picked", p.checked); });
  }
  if (all) all.addEventListener("change", function () { picks.forEach(function (p) { p.checked = all.checked; }); count(); });
  picks.forEach(function (p) { p.addEventListener("change", count); });
  count();
  // Covers stay blurred until clicked.
  document.querySelectorAll("button.cover").forEach(function (b) {
    b.addEventListener("click", function () { b.classList.toggle("blurred"); });
  });
  // Batch links select themselves for copying.
  document.querySelectorAll("input.copy").forEach(function (i) { i.addEventListener("focus", function () { i.select(); }); });

  document.addEventListener("keydown", function (e) {
    if (e.defaultPrevented || e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
    if (dialog && dialog.open) return;
    const key = e.key;
    if (key === "?" && help) { help.showModal(); e.preventDefault(); return; }
    const link = document.querySelector('a[data-key="' + key + '"]');
    if (link) { window.location.href = link.href; e.preventDefault(); return; }
    const button = document.querySelector('#act button[data-key="' + key + '"]');
    if (button) { ask(button); e.preventDefault(); return; }
    const row = document.activeElement && document.activeElement.closest ? document.activeElement.closest("tr.item") : null;
    if (row) {
      if (key === "x") { const p = row.querySelector("input.pick"); p.checked = !p.checked; count(); e.preventDefault(); }
      else if (key === "Enter") { window.location.href = row.querySelector("a.open").href; }
      else if (key === "j" || key === "k") {
        const sib = key === "j" ? row.nextElementSibling : row.previousElementSibling;
        if (sib) sib.focus();
        e.preventDefault();
      }
    } else if ((key === "j" || key === "k") && document.querySelector("tr.item")) {
      document.querySelector("tr.item").focus();
      e.preventDefault();
    }
  });
})();
