// mlgraph dashboard: refetch the live fragment every data-refresh-seconds and swap it in place
// (no full reload); pause while the tab is hidden; filters refetch at once and stay in the URL. A refresh keeps
// the page number from the URL; a changed filter starts again at page 1 (the page size stays).
(function () {
  "use strict";
  var refreshMs = Math.max(Number(document.body.dataset.refreshSeconds) || 30, 0.2) * 1000;
  var form = document.getElementById("filters");
  var live = document.getElementById("live");
  var note = document.getElementById("refresh-note");
  var timer = null;
  var inFlight = null;

  function query(keepPage) {
    var params = new URLSearchParams(new FormData(form));
    ["experiment", "status", "per_page"].forEach(function (k) { if (!params.get(k)) params.delete(k); });
    var page = new URLSearchParams(location.search).get("page");
    if (keepPage && page && page !== "1") params.set("page", page);
    return params.toString();
  }

  function refresh() {
    if (inFlight) inFlight.abort();
    var controller = new AbortController();
    inFlight = controller;
    var q = query(true);
    return fetch("fragment" + (q ? "?" + q : ""), { credentials: "same-origin", signal: controller.signal })
      .then(function (response) {
        if (!response.ok) throw new Error("HTTP " + response.status);
        return response.text();
      })
      .then(function (html) {
        live.innerHTML = html;
        document.body.dataset.refreshes = String(Number(document.body.dataset.refreshes || 0) + 1);
        note.textContent = "";
      })
      .catch(function (error) {
        if (error.name !== "AbortError") note.textContent = "refresh failed (" + error.message + "); retrying";
      })
      .finally(function () { if (inFlight === controller) inFlight = null; });
  }

  function schedule() {
    clearTimeout(timer);
    timer = null;
    if (document.visibilityState === "visible") {
      timer = setTimeout(function () { refresh().then(schedule); }, refreshMs);
    }
  }

  document.addEventListener("visibilitychange", function () {
    if (document.visibilityState === "visible") refresh().then(schedule);
    else { clearTimeout(timer); timer = null; }
  });

  function applyFilters(event) {
    if (event) event.preventDefault();
    var q = query(false);
    history.replaceState(null, "", q ? "?" + q : location.pathname);
    refresh().then(schedule);
  }
  var typing = null;
  form.addEventListener("submit", applyFilters);
  document.getElementById("status-filter").addEventListener("change", applyFilters);
  document.getElementById("experiment-filter").addEventListener("input", function () {
    clearTimeout(typing);
    typing = setTimeout(applyFilters, 250);
  });
  schedule();
})();
