// The Definitions view's YAML editor: validate as you type (debounced), show the messages of
// `fieldsync validate` in #fs-validation. The page works without this file (the Check button).
(function () {
  "use strict";
  var form = document.getElementById("fs-yaml-form");
  var area = document.getElementById("fs-yaml");
  var box = document.getElementById("fs-validation");
  if (!form || !area || !box) { return; }
  var timer = null;
  var sent = 0;

  function show(result) {
    while (box.firstChild) { box.removeChild(box.firstChild); }
    var head = document.createElement("div");
    head.className = "alert mb-1 " + (result.valid ? "alert-success" : "alert-danger");
    head.textContent = result.valid ? result.summary : (result.errors || []).length + " error(s)";
    box.appendChild(head);
    var list = document.createElement("ul");
    list.className = "fs-mono list-unstyled";
    (result.errors || []).forEach(function (line) {
      var item = document.createElement("li");
      item.className = "text-danger";
      item.textContent = line;
      list.appendChild(item);
    });
    box.appendChild(list);
    box.setAttribute("data-state", result.valid ? "valid" : "invalid");
  }

  function check() {
    var mine = ++sent;
    box.setAttribute("data-state", "checking");
    fetch(form.getAttribute("data-validate-url"), {
      method: "POST",
      credentials: "same-origin",
      headers: {"Content-Type": "application/json", "X-CSRF-Token": form.getAttribute("data-csrf")},
      body: JSON.stringify({path: form.getAttribute("data-path"), text: area.value})
    }).then(function (response) { return response.json(); })
      .then(function (result) { if (mine === sent) { show(result); } })
      .catch(function () { if (mine === sent) { box.setAttribute("data-state", "error"); } });
  }

  area.addEventListener("input", function () {
    if (timer !== null) { clearTimeout(timer); }
    timer = setTimeout(check, 400);
  });
}());
