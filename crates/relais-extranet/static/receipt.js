// Fills in a purge receipt as edges acknowledge it (without JavaScript, the Refresh link does).
(function () {
  var script = document.currentScript;
  var box = document.getElementById("receipt");
  if (!box || box.dataset.complete === "true") return;
  var id = box.dataset.purge;
  var tries = 0;
  function tick() {
    fetch("/api/v1/purges/" + id, { credentials: "same-origin" })
      .then(function (r) { return r.json(); })
      .then(function (r) {
        var body = document.getElementById("receipt-edges");
        body.textContent = "";
        r.edges.forEach(function (e) {
          var tr = document.createElement("tr");
          var th = document.createElement("th"); th.scope = "row"; th.textContent = e.edge;
          var st = document.createElement("td"); st.textContent = e.status === "applied" ? script.dataset.applied : script.dataset.pending;
          var lat = document.createElement("td"); lat.textContent = e.latency_ms === null ? "—" : e.latency_ms + " ms";
          tr.append(th, st, lat); body.append(tr);
        });
        var status = document.getElementById("receipt-status");
        status.textContent = (r.complete ? script.dataset.completeText : script.dataset.pendingText) + " (" + r.edges_applied + "/" + r.edges_total + ")";
        box.dataset.complete = r.complete ? "true" : "false";
        if (!r.complete && ++tries < 120) setTimeout(tick, 250);
      })
      .catch(function () { if (++tries < 120) setTimeout(tick, 1000); });
  }
  setTimeout(tick, 100);
})();
