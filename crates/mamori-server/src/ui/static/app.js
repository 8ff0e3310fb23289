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
  // Announcements: the newest first, at most five; each can be
  // acknowledged (it collapses, and stays collapsed on this browser for
  // this session), so that they do not pile up over the work.
  var seen = {};
  try { seen = JSON.parse(sessionStorage.getItem("mamori-ack") || "{}"); } catch (x) { seen = {}; }
  function announce(a) {
    var box = document.getElementById("announcements");
    if (!box) return;
    var key = (a.id || "") + "|" + (a.message || "");
    if (seen[key]) return;
    var p = document.createElement("p");
    p.className = a.severity || "info";
    var span = document.createElement("span");
    span.textContent = (a.drill ? "[" + t("訓練", "DRILL") + "] " : "") + (a.message || "");
    var b = document.createElement("button");
    b.type = "button";
    b.className = "secondary";
    b.textContent = t("確認", "OK");
    b.setAttribute("aria-label", t("このお知らせを確認して閉じる", "Acknowledge and close this announcement"));
    b.addEventListener("click", function () {
      seen[key] = 1;
      try { sessionStorage.setItem("mamori-ack", JSON.stringify(seen)); } catch (x) { /* private mode */ }
      if (p.parentNode) p.parentNode.removeChild(p);
    });
    p.appendChild(span);
    p.appendChild(b);
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
    // The stream breaks when the session ends (logged out elsewhere, an
    // administrator disabled the account, it expired): say so on the open
    // page, rather than let the next click fail.
    var told = false;
    es.addEventListener("error", function () {
      if (told || !window.fetch) return;
      fetch("/api/v1/auth/me", { credentials: "same-origin" }).then(function (r) {
        if (r.status !== 401 || told) return;
        told = true;
        es.close();
        var box = document.getElementById("announcements");
        if (!box) return;
        var p = document.createElement("p");
        p.className = "critical";
        p.id = "session-ended";
        var span = document.createElement("span");
        span.textContent = t("セッションが終了しました。入力中の内容は送信されません。もう一度ログインしてください。", "Your session has ended; what you type here will not be sent. Please log in again.");
        var a = document.createElement("a");
        a.href = "/ui/login?next=" + encodeURIComponent(location.pathname + location.search);
        a.textContent = t("ログイン", "Log in");
        p.appendChild(span);
        p.appendChild(a);
        box.insertBefore(p, box.firstChild);
      }).catch(function () { /* the server is unreachable: the banner stays as it was */ });
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
    // A button may opt out of its form's question (e.g. starting a drill
    // on the declaration form asks nothing).
    if (e.submitter && e.submitter.hasAttribute("data-no-confirm")) q = null;
    if (q && f.hasAttribute("data-confirm-send")) {
      // A send names what leaves, and to whom, before it is signed.
      var sel = f.querySelector("select[name=partner]");
      var opt = sel && sel.options[sel.selectedIndex];
      var docs = Array.prototype.map.call(f.querySelectorAll("input[name=documents]:checked"), function (c) {
        return "- " + c.parentNode.textContent.trim();
      });
      // A JP-CLINS letter is composed from the chart: the ticks do not apply.
      var clins = f.querySelector("input[name=format][value=jp-clins]:checked");
      var discharge = f.querySelector("input[name=format][value=jp-clins-discharge]:checked");
      var what = clins ? f.getAttribute("data-l-clins") : discharge ? f.getAttribute("data-l-discharge") :
        f.getAttribute("data-l-docs") + ": " + docs.length + "\n" + docs.join("\n");
      q = f.getAttribute("data-l-to") + ": " + (opt ? opt.textContent : "") + "\n" +
        f.getAttribute("data-l-patient") + ": " + f.getAttribute("data-patient") + "\n" +
        what + "\n\n" + q;
    }
    if (q && !window.confirm(q)) e.preventDefault();
  });
})();
