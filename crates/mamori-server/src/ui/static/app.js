// mamori UI script: the live mode banner and announcements (server-sent
// events), break-glass countdowns, confirmations. No inline script: the
// Content-Security-Policy allows only this file.
(function () {
  "use strict";
  var ja = (document.body.getAttribute("data-lang") || "ja") === "ja";
  function t(j, e) { return ja ? j : e; }
  function banner(mode) {
    var el = document.getElementById("mode-banner");
    var tx = document.getElementById("mode-text");
    if (!el || !tx || typeof mode !== "string") return;
    var raw = (mode.split("phase=")[1] || "").split(";")[0].trim();
    var names = { activation: ["初動", "activation"], resumption: ["業務再開", "resumption"], recovery: ["業務回復", "recovery"], full_recovery: ["全面復旧", "full recovery"] };
    var phase = names[raw] ? t(names[raw][0], names[raw][1]) : "";
    if (mode.indexOf("drill") === 0) {
      el.className = "banner drill";
      tx.textContent = t("訓練中（実際の非常時ではありません）", "DRILL (not a real emergency)") + " — " + t("フェーズ", "phase") + " " + phase;
    } else if (mode.indexOf("emergency") === 0) {
      el.className = "banner emergency";
      tx.textContent = t("非常時運用中", "EMERGENCY OPERATION") + " — " + t("フェーズ", "phase") + " " + phase;
    } else {
      el.className = "banner normal";
      tx.textContent = t("通常運用", "Normal operation");
    }
  }
  function announce(a) {
    var box = document.getElementById("announcements");
    if (!box) return;
    var p = document.createElement("p");
    p.className = a.severity || "info";
    p.textContent = (a.drill ? "[" + t("訓練", "DRILL") + "] " : "") + (a.message || "");
    box.insertBefore(p, box.firstChild);
    while (box.children.length > 5) box.removeChild(box.lastChild);
  }
  if (window.EventSource && document.getElementById("mode-banner") && document.querySelector("header nav")) {
    var es = new EventSource("/api/v1/events");
    es.addEventListener("mode", function (e) {
      try {
        var m = JSON.parse(e.data);
        var before = document.body.getAttribute("data-mode") || "";
        banner(m.mode);
        document.body.setAttribute("data-mode", m.mode);
        // The return to normal ends every live break-glass grant: the
        // countdowns on this page stop and say so.
        if (m.mode.indexOf("normal") === 0 && before && before.indexOf("normal") !== 0) endGrants();
      } catch (x) { /* ignore */ }
    });
    es.addEventListener("announcement", function (e) {
      try { announce(JSON.parse(e.data)); } catch (x) { /* ignore */ }
    });
  }
  function endGrants() {
    var els = document.querySelectorAll(".countdown[data-expires]");
    for (var i = 0; i < els.length; i++) {
      els[i].removeAttribute("data-expires");
      els[i].textContent = t("終了（通常運用に復帰）", "ended (back to normal operation)");
    }
  }
  function tick() {
    var els = document.querySelectorAll(".countdown[data-expires]");
    for (var i = 0; i < els.length; i++) {
      var left = Math.max(0, Math.floor((Date.parse(els[i].getAttribute("data-expires")) - Date.now()) / 1000));
      var m = Math.floor(left / 60), s = left % 60;
      els[i].textContent = left > 0 ? (m + ":" + (s < 10 ? "0" : "") + s) : t("期限切れ", "expired");
    }
  }
  tick();
  setInterval(tick, 1000);
  document.addEventListener("click", function (e) {
    if (e.target && e.target.hasAttribute && e.target.hasAttribute("data-print")) window.print();
  });
  document.addEventListener("submit", function (e) {
    var f = e.target;
    var q = f.getAttribute("data-confirm");
    if (q && f.hasAttribute("data-confirm-send")) {
      // A send names what leaves, and to whom, before it is signed.
      var sel = f.querySelector("select[name=partner]");
      var opt = sel && sel.options[sel.selectedIndex];
      var docs = Array.prototype.map.call(f.querySelectorAll("input[name=documents]:checked"), function (c) {
        return "- " + c.parentNode.textContent.trim();
      });
      q = f.getAttribute("data-l-to") + ": " + (opt ? opt.textContent : "") + "\n" +
        f.getAttribute("data-l-patient") + ": " + f.getAttribute("data-patient") + "\n" +
        f.getAttribute("data-l-docs") + ": " + docs.length + "\n" + docs.join("\n") + "\n\n" + q;
    }
    if (q && !window.confirm(q)) e.preventDefault();
  });
})();
