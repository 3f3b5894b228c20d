// statevisor's web console: what htmx does not do by itself. Every page reads without this
// script; it draws Mermaid diagrams (the current phase highlighted, drawn again when it
// changes), shows the controls that fit the process's status, keeps relative times current,
// and keeps followed logs bounded and scrolled.
(function () {
  "use strict";
  var LOG_LINES_KEPT = 2000;
  var drawing = 0;

  function drawMermaid(block) {
    if (!window.mermaid) { return; }
    var source = block.querySelector(".mermaid-source");
    var view = block.querySelector(".mermaid-view");
    if (!source || !view) { return; }
    var text = source.textContent;
    drawing += 1;
    var id = "mermaid-drawing-" + drawing;
    window.mermaid.render(id, text).then(function (result) {
      view.innerHTML = result.svg;
      block.classList.add("drawn");
      block.setAttribute("data-drawn-phase", block.getAttribute("data-phase") || "");
    }).catch(function (error) {
      block.classList.remove("drawn");
      view.textContent = "The diagram could not be drawn: " + error;
    });
  }

  function drawAll(root) {
    root.querySelectorAll(".mermaid-block").forEach(drawMermaid);
  }

  // The diagram of a process page: its source with the current phase highlighted (the same
  // lines the server writes for the first drawing).
  var pendingPhase = null;
  var phaseTimer = null;
  function highlight(phase) {
    var block = document.querySelector(".diagram");
    if (!block) { return; }
    var source = block.querySelector(".diagram-source");
    if (block.getAttribute("data-phase") === phase) { return; }
    block.setAttribute("data-phase", phase);
    var base = source.getAttribute("data-base");
    var text = base;
    if (/^[A-Za-z0-9_]+$/.test(phase)) {
      text += "    classDef current fill:#ffe08a,stroke:#b45309,stroke-width:3px,color:#111\n    class " + phase + " current\n";
    }
    source.textContent = text;
    var view = block.querySelector(".mermaid-view");
    if (view) { view.setAttribute("aria-label", view.getAttribute("aria-label").replace(/with phase \S+ highlighted/, "with phase " + phase + " highlighted")); }
    drawMermaid(block);
  }
  function phaseChanged(phase) {
    // A busy process may change phase many times a second: draw at most every 200 ms, the latest.
    pendingPhase = phase;
    if (phaseTimer) { return; }
    phaseTimer = setTimeout(function () { phaseTimer = null; highlight(pendingPhase); }, 200);
  }

  function refreshTimes() {
    var now = Date.now() / 1000;
    document.querySelectorAll("time[data-since]").forEach(function (element) {
      element.textContent = duration(now - parseFloat(element.getAttribute("data-since"))) + " ago";
    });
  }
  function duration(seconds) {
    seconds = Math.max(0, seconds);
    if (seconds < 60) { return Math.round(seconds) + "s"; }
    var minutes = Math.floor(seconds / 60), secs = Math.floor(seconds % 60);
    if (minutes < 60) { return minutes + "m " + (secs < 10 ? "0" : "") + secs + "s"; }
    var hours = Math.floor(minutes / 60); minutes = minutes % 60;
    if (hours < 48) { return hours + "h " + (minutes < 10 ? "0" : "") + minutes + "m"; }
    return Math.floor(hours / 24) + "d " + (hours % 24) + "h";
  }

  function trimLog(pre, wasAtEnd) {
    var text = pre.textContent;
    var lines = text.split("\n");
    if (lines.length > LOG_LINES_KEPT + 1) {
      pre.textContent = lines.slice(lines.length - LOG_LINES_KEPT - 1).join("\n");
    }
    if (wasAtEnd) { pre.scrollTop = pre.scrollHeight; }
  }

  document.addEventListener("htmx:sseBeforeMessage", function (event) {
    var target = event.target;
    if (target.classList && target.classList.contains("log")) {
      target.setAttribute("data-at-end", target.scrollHeight - target.scrollTop - target.clientHeight < 8 ? "1" : "");
    }
  });
  document.addEventListener("htmx:sseMessage", function (event) {
    var target = event.target;
    if (!target.classList) { return; }
    if (target.classList.contains("live-status")) {
      var page = target.closest(".process");
      if (page) { page.setAttribute("data-status", target.textContent.trim()); }
    } else if (target.classList.contains("live-phase")) {
      phaseChanged(target.textContent.trim());
    } else if (target.classList.contains("log")) {
      trimLog(target, target.getAttribute("data-at-end") === "1");
    } else if (target.id === "panels") {
      drawAll(target);
    }
    refreshTimes();
  });

  document.addEventListener("DOMContentLoaded", function () {
    if (window.mermaid) {
      window.mermaid.initialize({ startOnLoad: false, securityLevel: "strict", theme: window.matchMedia("(prefers-color-scheme: dark)").matches ? "dark" : "default" });
      drawAll(document);
    }
    document.querySelectorAll("pre.log").forEach(function (pre) { pre.scrollTop = pre.scrollHeight; });
    setInterval(refreshTimes, 1000);
  });
})();
