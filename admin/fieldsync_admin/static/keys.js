// The keys page: while a rotation re-encrypts, poll its progress (JSON) every two seconds and
// update the table; reload once it ends so the key states show. No inline script (CSP).
(function () {
  "use strict";
  var box = document.getElementById("fs-rotations");
  if (!box || box.getAttribute("data-running") !== "true") { return; }
  var url = box.getAttribute("data-progress");

  function show(job) {
    var row = document.getElementById("fs-rotation-" + job.id);
    if (!row) { return; }
    row.setAttribute("data-state", job.state);
    row.querySelector(".fs-rotation-state").textContent = job.state;
    row.querySelector(".fs-rotation-done").textContent = job.values_reencrypted;
    row.querySelector(".fs-rotation-total").textContent = job.values_total === null ? "…" : job.values_total;
    row.querySelector(".fs-rotation-remaining").textContent = job.values_remaining === null ? "…" : job.values_remaining;
    row.querySelector(".fs-rotation-changes").textContent = job.changes;
    row.querySelector(".fs-rotation-bar").style.width = job.percent + "%";
  }

  function poll() {
    fetch(url, {credentials: "same-origin", headers: {"Accept": "application/json"}})
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (body) {
        if (!body) { return; }
        body.jobs.forEach(show);
        if (body.running) { window.setTimeout(poll, 2000); } else { window.location.reload(); }
      })
      .catch(function () { window.setTimeout(poll, 5000); });
  }
  window.setTimeout(poll, 1000);
})();
