// Small enhancements over server-rendered pages: compare selection, live updates.
(function () {
  const compare = document.getElementById("compare-selected");
  if (compare) {
    compare.addEventListener("click", function () {
      const ids = Array.from(document.querySelectorAll("input.pick:checked")).map((box) => box.value);
      if (ids.length < 2) { alert("select at least two experiments"); return; }
      location.href = "/compare?ids=" + ids.join(",");
    });
  }
  const live = document.getElementById("live");
  if (live) {
    const run = live.dataset.run;
    const text = (id, value) => { const el = document.getElementById(id); if (el) el.textContent = value ?? ""; };
    async function refresh() {
      try {
        const response = await fetch("/api/live" + (run ? "?run=" + encodeURIComponent(run) : ""));
        if (!response.ok) return;
        const data = await response.json();
        text("live-run", data.run); text("live-status", data.status); text("live-iteration", data.iteration);
        text("live-stage", data.stage); text("live-candidate", data.candidate);
        const best = document.getElementById("live-best");
        if (best && data.best) {
          best.innerHTML = "";
          const link = document.createElement("a");
          link.href = "/experiments/" + data.best.id; link.textContent = data.best.name;
          best.append(link, " " + Number(data.best.mean_score).toFixed(4));
        }
        const body = document.querySelector("#live-events tbody");
        if (body) {
          body.innerHTML = "";
          for (const ev of data.events) {
            const row = body.insertRow();
            for (const value of [ev.time, ev.iteration, ev.stage, ev.experiment, ev.message]) row.insertCell().textContent = value;
          }
        }
        text("live-updated", new Date().toLocaleTimeString());
      } catch (err) { /* server restarting: try again next tick */ }
    }
    setInterval(refresh, 2000);
  }
})();
