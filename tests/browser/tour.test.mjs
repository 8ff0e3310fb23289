// The five-minute tour of the mamori web UI, in Debian's headless Chromium
// driven by playwright-core: a real `mamori serve --demo` (hospital and
// partner clinic on loopback), real TLS, real server-sent events.
//
//   MAMORI_BIN   the mamori binary (default ../../target/debug/mamori)
//   CHROMIUM     the browser (default /usr/bin/chromium)
//   SHOTS        where screenshots go (default ../../test-output/screenshots)

import { test, before, after } from "node:test";
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { mkdtempSync, mkdirSync, rmSync, readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { tmpdir } from "node:os";
import { join, resolve, dirname } from "node:path";
import { fileURLToPath } from "node:url";
import { chromium } from "playwright-core";

const here = dirname(fileURLToPath(import.meta.url));
const BIN = process.env.MAMORI_BIN || resolve(here, "../../target/debug/mamori");
const SHOTS = process.env.SHOTS || resolve(here, "../../test-output/screenshots");
mkdirSync(SHOTS, { recursive: true });

let server, browser, base, clinic;
const creds = {};
let adminOtp;
const dataDir = mkdtempSync(join(tmpdir(), "mamori-browser-"));

function startDemo() {
  return new Promise((ok, fail) => {
    server = spawn(BIN, ["serve", "--demo", "--data", join(dataDir, "demo"), "--listen", "127.0.0.1:0"], {
      env: { ...process.env, RUST_LOG: "warn" },
      stdio: ["ignore", "pipe", "pipe"],
    });
    let out = "";
    const timer = setTimeout(() => fail(new Error("demo did not start:\n" + out)), 120_000);
    server.stdout.on("data", (d) => {
      out += d.toString();
      for (const line of out.split("\n")) {
        const m = line.match(/^\s+\[(hospital|clinic)\] (\S+)\s+(\S+)/);
        if (m) creds[m[1] + ":" + m[2]] = m[3];
        const a = line.match(/^\s+admin \/ (\S+)/);
        if (a) adminOtp = a[1];
        const u = line.match(/web UI (https:\/\/\S+)\/ui\//);
        if (u) base = u[1];
        const c = line.match(/partner clinic node (https:\/\/\S+)\/ui\//);
        if (c) clinic = c[1];
      }
      if (base && clinic && creds["clinic:clerk.minato"]) {
        clearTimeout(timer);
        ok();
      }
    });
    server.stderr.on("data", (d) => (out += d.toString()));
    server.on("exit", (code) => fail(new Error(`mamori exited (${code}):\n${out}`)));
  });
}

async function session(lang = "ja-JP") {
  const ctx = await browser.newContext({ ignoreHTTPSErrors: true, locale: lang, viewport: { width: 1280, height: 900 } });
  const page = await ctx.newPage();
  page.on("dialog", (d) => d.accept());
  page.on("pageerror", (e) => assert.fail("page script error: " + e.message));
  return page;
}

async function login(page, user, pw, at = base) {
  await page.goto(at + "/ui/login");
  await page.fill("#username", user);
  await page.fill("#password", pw);
  await page.click("form[action='/ui/login'] button[type=submit]");
}

const shot = (page, name) => page.screenshot({ path: join(SHOTS, name + ".png"), fullPage: true });

before(async () => {
  await startDemo();
  browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || "/usr/bin/chromium",
    args: ["--no-sandbox", "--disable-dev-shm-usage"],
  });
});

after(async () => {
  if (browser) await browser.close();
  if (server) {
    server.removeAllListeners("exit");
    server.kill("SIGTERM");
    await new Promise((r) => server.once("exit", r));
  }
  rmSync(dataDir, { recursive: true, force: true });
});

test("login, and the first-login password change", async () => {
  const page = await session();
  await page.goto(base + "/ui/");
  assert.match(page.url(), /\/ui\/login\?next=/);
  await shot(page, "01-login");
  await page.fill("#username", "admin");
  await page.fill("#password", "not the password");
  await page.click("form[action='/ui/login'] button[type=submit]");
  assert.match(await page.textContent(".notice.error"), /違うか、アカウントがロック中/);
  await login(page, "admin", adminOtp);
  assert.match(page.url(), /\/ui\/password$/);
  await page.fill("#current", adminOtp);
  await page.fill("#new", "Tour admin pass 2026");
  await page.fill("#new2", "Tour admin pass 2026");
  await page.click("form[action='/ui/password'] button[type=submit]");
  assert.match(page.url(), /\/ui\/$/);
  assert.match(await page.textContent("header .user"), /Administrator \(システム管理者\)/);
  // The language switch.
  await page.click("header a.lang");
  assert.match(await page.textContent("#mode-banner"), /Normal operation/);
  await page.click("header a.lang");
  assert.match(await page.textContent("#mode-banner"), /通常運用/);
  await page.context().close();
});

test("patient search and chart", async () => {
  const page = await session();
  await login(page, "dr.sato", creds["hospital:dr.sato"]);
  await page.click("nav a[href='/ui/patients']");
  await page.fill("#identifier", "00010037");
  await page.click("form[action='/ui/patients'] button[type=submit]");
  await page.click("a[href='/ui/patients/demo-p001']");
  await page.waitForSelector("h2:has-text('アレルギー')");
  assert.ok(await page.locator("svg.trend").count() >= 3, "trend plots of vital signs");
  // Each trend says its scale: values on the axis, dates, the unit as
  // people write it.
  const trends = await page.textContent("div.trends");
  assert.match(trends, /mmHg|℃/, trends);
  assert.doesNotMatch(trends, /mm\[Hg\]|\bCel\b/, trends);
  assert.ok((await page.locator("section:has(h2:has-text('使用中の薬剤')) li").count()) >= 1, "active medications");
  assert.match(await page.textContent("main"), /デモ/, "demo data is marked");
  await shot(page, "02-chart");
  // Search by kana finds kanji names.
  await page.goto(base + "/ui/patients?q=" + encodeURIComponent("やまだ"));
  assert.ok((await page.locator("tbody tr").count()) >= 1);
  await shot(page, "03-search");
  await page.context().close();
});

test("denied access, break the glass, countdown", async () => {
  const page = await session();
  await login(page, "dr.sato", creds["hospital:dr.sato"]);
  await page.goto(base + "/ui/patients/demo-p040");
  assert.match(await page.textContent("main"), /担当関係がありません/);
  await page.fill("#reason", "救急外来で意識障害、既往歴と服薬の確認が必要");
  await page.selectOption("#minutes", "30");
  await page.click("form[action$='/break-glass'] button.danger");
  await page.waitForSelector(".countdown");
  await page.waitForFunction(() => /\d+:\d\d/.test(document.querySelector(".countdown").textContent));
  assert.match(await page.textContent(".countdown"), /^(29|30):\d\d$/);
  await page.waitForSelector("h2:has-text('アレルギー')");
  await shot(page, "04-break-glass");
  await page.context().close();
});

test("declare an emergency: the banner changes live, register without reception, return to normal", async () => {
  const nurse = await session();
  await login(nurse, "ns.suzuki", creds["hospital:ns.suzuki"]);
  await nurse.waitForSelector("#mode-banner.normal");
  const decider = await session();
  await login(decider, "bcp.kobayashi", creds["hospital:bcp.kobayashi"]);
  await decider.click("nav a[href='/ui/bcp']");
  await decider.check("input[name=criteria][value=ransomware]");
  await decider.fill("#declare #reason", "電子カルテ端末の多数で身代金要求画面を確認（ブラウザ試験）");
  await decider.click("#declare button[name=drill][value='0']");
  await decider.waitForSelector("ol.phases li.current");
  // The nurse's page, never reloaded, shows the emergency.
  await nurse.waitForSelector("#mode-banner.emergency", { timeout: 15_000 });
  assert.match(await nurse.textContent("#mode-text"), /非常時運用中/);
  await nurse.waitForSelector("#announcements p");
  await shot(nurse, "05-emergency-banner");
  await shot(decider, "06-bcp-console");
  // Registration without the reception desk.
  await nurse.click("nav a[href='/ui/register']");
  await nurse.check("input[name=triage][value=red]");
  await nurse.selectOption("#sex", "male");
  await nurse.fill("#age", "45");
  await nurse.fill("#features", "青いジャケット、左前腕に擦過傷");
  await shot(nurse, "07-registration");
  await nurse.click("form[action='/ui/register'] button[type=submit]");
  await nurse.waitForSelector(".badge.provisional");
  await nurse.click("nav a[href='/ui/provisional']");
  assert.ok((await nurse.locator("tbody tr").count()) >= 1);
  // dr.sato's break-glass chart (the grant of the test before) stays open.
  const doctor = await session();
  await login(doctor, "dr.sato", creds["hospital:dr.sato"]);
  await doctor.goto(base + "/ui/patients/demo-p040");
  await doctor.waitForFunction(() => /\d+:\d\d/.test(document.querySelector(".countdown").textContent));
  // Through the phases, then back to normal (with the reason the
  // checklist is not complete).
  for (const to of ["resumption", "recovery", "full_recovery"]) {
    await decider.click(`button[name=to][value=${to}]`);
    await decider.waitForSelector("ol.phases li.current");
  }
  await decider.fill("#override_reason", "ブラウザ試験のため項目は省略");
  await decider.click("button[name=to][value=normal]");
  await nurse.waitForSelector("#mode-banner.normal", { timeout: 15_000 });
  assert.match(await nurse.textContent("#mode-text"), /通常運用/);
  // The return to normal ended the grant: the open chart stops counting.
  await doctor.waitForFunction(() => /終了/.test(document.querySelector(".countdown").textContent), null, { timeout: 15_000 });
  await doctor.context().close();
  await nurse.context().close();
  await decider.context().close();
});

test("the auditor reviews the break-glass", async () => {
  const page = await session();
  await login(page, "aud.yamamoto", creds["hospital:aud.yamamoto"]);
  await page.click("nav a[href='/ui/audit']");
  await page.waitForSelector("svg.bars");
  await shot(page, "08-audit");
  await page.click("nav.tabs a[href='/ui/audit/break-glass']");
  const grant = page.locator("section.card", { hasText: "demo-p040" });
  await grant.locator("textarea[name=note]").fill("救急外来の受診記録と一致。妥当。");
  await grant.locator("button[name=outcome][value=accepted]").click();
  await page.goto(base + "/ui/audit/break-glass?review=accepted");
  assert.match(await page.textContent("main"), /demo-p040/);
  // "Who looked at this patient": the break-glass read is in it.
  await page.goto(base + "/ui/audit/patient?patient=demo-p040");
  assert.ok((await page.locator("tr.bg").count()) >= 1, "break-glass accesses are highlighted");
  await shot(page, "09-who-looked");
  await page.context().close();
});

test("send a document to the partner clinic; the ledger shows delivery", async () => {
  const page = await session();
  await login(page, "dr.sato", creds["hospital:dr.sato"]);
  await page.goto(base + "/ui/exchange?patient=demo-p001");
  await page.check("input[name=documents] >> nth=0");
  await page.fill("#note", "紹介状: 血糖コントロールについてご高診ください。");
  await page.selectOption("#partner", "demo-clinic");
  await page.selectOption("#purpose", "referral");
  await shot(page, "10-exchange-send");
  // The confirmation names the recipient, the patient and what is sent.
  let asked = "";
  page.on("dialog", (d) => { asked = d.message(); });
  await page.click("form[action='/ui/exchange/send'] button[type=submit]");
  // The form answers with a redirect to the ledger of this send: a reload
  // shows it again and sends nothing more.
  await page.waitForURL(/\/ui\/exchange\/messages\?send=/);
  assert.match(asked, /送り先: .*demo-clinic/, asked);
  assert.match(asked, /患者: .*demo-p001/, asked);
  assert.match(asked, /送る記録: 1\n- /, asked);
  const rows = await page.locator("main tbody tr").count();
  assert.ok(rows >= 1, "the queued message is listed");
  await page.reload();
  assert.equal(await page.locator("main tbody tr").count(), rows, "a reload sends nothing");
  await page.click("main tbody a");
  let state = "";
  for (let i = 0; i < 60 && !/配達済み/.test(state); i++) {
    await page.waitForTimeout(500);
    await page.reload();
    state = await page.textContent("article.document .badge");
  }
  assert.match(state, /配達済み/, "signed receipt received");
  assert.ok((await page.locator("tbody tr").count()) >= 3, "each hop is recorded");
  await shot(page, "11-ledger");
  // At the clinic, the document waits for (or has) its patient match.
  const clerk = await session();
  await login(clerk, "clerk.minato", creds["clinic:clerk.minato"], clinic);
  await clerk.goto(clinic + "/ui/exchange/inbound");
  assert.match(await clerk.textContent("main"), /診療情報提供書|Referral/);
  await page.context().close();
  await clerk.context().close();
});

test("a JP-CLINS referral letter: composed from the chart, delivered, read as a letter", async () => {
  const page = await session();
  await login(page, "dr.sato", creds["hospital:dr.sato"]);
  await page.goto(base + "/ui/exchange?patient=demo-p001");
  await page.check("input[name=format][value=jp-clins]");
  await page.fill("#note", "血糖コントロール目的にご紹介いたします。");
  await page.selectOption("#partner", "demo-clinic");
  await page.selectOption("#purpose", "referral");
  let asked = "";
  page.on("dialog", (d) => { asked = d.message(); });
  await page.click("form[action='/ui/exchange/send'] button[type=submit]");
  await page.waitForURL(/\/ui\/exchange\/messages\?send=/);
  assert.match(asked, /JP-CLINS 診療情報提供書/, asked);
  await page.click("main tbody a");
  let state = "";
  for (let i = 0; i < 60 && !/配達済み/.test(state); i++) {
    await page.waitForTimeout(500);
    await page.reload();
    state = await page.textContent("article.document .badge");
  }
  assert.match(state, /配達済み/, "validated and accepted by the clinic (signed receipt)");
  // The letter as sent is kept in the chart, and reads as a letter.
  await page.goto(base + "/ui/patients/demo-p001");
  await page.click("a:has-text('Referral letter →')");
  const letter = await page.textContent("section.letter");
  for (const shown of ["診療情報提供書", "紹介目的", "血糖コントロール目的にご紹介いたします。", "紹介元", "電子署名", "御中"]) {
    assert.ok(letter.includes(shown), shown + " in the letter");
  }
  assert.ok(await page.locator("section.letter ruby rt").count() >= 1, "the kana reading over the name");
  await shot(page, "11b-jp-clins-letter");
  await page.context().close();
});

test("after the tour, the auditor produces the compliance report", async () => {
  const page = await session();
  await login(page, "aud.yamamoto", creds["hospital:aud.yamamoto"]);
  await page.click("nav a[href='/ui/compliance']");
  await page.click("form[action='/ui/compliance'] button[type=submit]");
  // Post/Redirect/Get: the report has its own address; a reload makes no second one.
  await page.waitForURL(/\/ui\/compliance\/\d+$/);
  const rows = page.locator("table.requirements tbody tr");
  assert.equal(await rows.count(), 32, "every requirement of the catalog");
  const text = await page.textContent("main");
  assert.match(text, /準拠状況報告書/);
  assert.match(text, /SHA-256/);
  // The tour's break-glass was reviewed and the partner's certificates are valid.
  assert.match(await page.textContent("tr#EM-B8"), /適合/);
  assert.match(await page.textContent("tr#EX-B1d"), /適合/);
  await page.reload();
  await shot(page, "12-compliance-report");
  await page.goto(base + "/ui/compliance");
  assert.equal(await page.locator("main tbody tr").count(), 1, "one report, however often the page was reloaded");
  await page.context().close();
});

// Codes the system keeps that a Japanese page must show by name, never as
// they are (checked in the text people see, not in the markup).
const CODES = [
  "finished", "in-progress", "AMB", "EMER", "IMP", "mm[Hg]", "Cel", "TREAT", "ETREAT", "BTG", "HOPERAT",
  "HSYSADMIN", "HCOMPL", "physician", "nurse", "pharmacist", "clerk", "auditor", "bcp-decider",
  "activation", "resumption", "full_recovery", "stood_down", "male", "female", "awaiting_envelope", "sealed",
  "in_use", "retired", "responsibility_transferred", "handed_to_network", "mdn_received", "implied_consent",
  "explicit_consent", "protection_of_life", "cyber_attack", "system_failure", "mass_casualty",
  "break-glass-start", "role-not-permitted", "no-care-relationship", "care-relationship", "delivered",
  "awaiting_mdn", "queued", "requested", "approved", "pending", "accepted", "questioned", "referral",
  "third_party", "delegation", "warning", "critical", "read", "search", "create", "update", "ransomware",
];
const codeRe = new RegExp(
  "(?<![\\w.\\-/])(" + CODES.map((c) => c.replace(/[[\]]/g, "\\$&")).join("|") + ")(?![\\w.\\-/])",
);
const axeSource = readFileSync(createRequire(import.meta.url).resolve("axe-core/axe.min.js"), "utf8");

// One screen: no code in its visible text, no serious or critical
// accessibility violation (axe-core, WCAG 2 A and AA), a screenshot.
async function check(page, path, name) {
  const r = await page.goto(base + path);
  assert.ok(r.status() < 400, `${path}: HTTP ${r.status()}`);
  const text = await page.evaluate(() => document.body.innerText);
  const found = text.match(codeRe);
  assert.equal(found, null, `${path}: the code "${found && found[1]}" is shown as it is`);
  await page.evaluate(axeSource);
  const v = await page.evaluate(async () => {
    const r = await window.axe.run(document, { runOnly: { type: "tag", values: ["wcag2a", "wcag2aa", "wcag21a", "wcag21aa"] } });
    return r.violations
      .filter((x) => x.impact === "serious" || x.impact === "critical")
      .map((x) => `${x.id} (${x.impact}): ${x.nodes.slice(0, 3).map((n) => n.target.join(" ")).join(", ")}`);
  });
  assert.deepEqual(v, [], `${path}: accessibility violations`);
  await shot(page, "screen-" + name);
}

test("every screen, in Japanese: names not codes, accessible, printable", async () => {
  const anon = await session();
  await check(anon, "/ui/login", "login");
  await check(anon, "/ui/emergency-login", "emergency-login");
  await anon.context().close();

  const dr = await session();
  await login(dr, "dr.sato", creds["hospital:dr.sato"]);
  for (const [path, name] of [
    ["/ui/", "home"], ["/ui/patients?q=" + encodeURIComponent("やまだ"), "search"], ["/ui/patients/demo-p001", "chart"],
    ["/ui/patients/demo-p001/documents/demo-p001-d0", "document"], ["/ui/patients/demo-p002", "break-glass-form"],
    ["/ui/register", "register"], ["/ui/provisional", "provisional"], ["/ui/exchange?patient=demo-p001", "exchange"],
    ["/ui/exchange/messages", "ledger"], ["/ui/apps?patient=demo-p001", "apps"],
    ["/ui/transcribe?patient=demo-p001", "transcribe"],
  ]) await check(dr, path, name);
  await dr.goto(base + "/ui/exchange/messages");
  const msg = await dr.getAttribute("main tbody a", "href");
  await check(dr, msg, "message");
  // The document opens from the chart, as text.
  await dr.goto(base + "/ui/patients/demo-p001");
  await dr.click("a[href*='/documents/']");
  assert.ok((await dr.textContent("article.document")).length > 20, "the note's text is shown");
  // The record number a chart shows opens the chart.
  await dr.goto(base + "/ui/patients/00010037");
  assert.match(dr.url(), /\/ui\/patients\/demo-p001$/);
  // A phone: the chart and the registration form fit the screen.
  await dr.setViewportSize({ width: 390, height: 844 });
  for (const [path, name] of [["/ui/patients/demo-p001", "phone-chart"], ["/ui/register", "phone-register"], ["/ui/patients?q=" + encodeURIComponent("やまだ"), "phone-search"]]) {
    await dr.goto(base + path);
    const over = await dr.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
    assert.ok(over <= 0, `${path}: ${over}px wider than a phone`);
    await shot(dr, name);
  }
  await dr.context().close();

  const clerk = await session();
  await login(clerk, "clerk.kato", creds["hospital:clerk.kato"]);
  await check(clerk, "/ui/merge", "merge");
  await clerk.context().close();

  const decider = await session();
  await login(decider, "bcp.kobayashi", creds["hospital:bcp.kobayashi"]);
  await check(decider, "/ui/bcp", "bcp");
  const review = await decider.getAttribute("a[href$='/review']", "href");
  await check(decider, "/ui/bcp/plan", "bcp-plan");
  await check(decider, review, "after-action-review");
  assert.ok((await decider.locator("article.document table").count()) >= 2, "the review is a document, not JSON");
  await check(decider, review.replace("/review", "/incident"), "incident-report");
  await decider.context().close();

  const aud = await session();
  await login(aud, "aud.yamamoto", creds["hospital:aud.yamamoto"]);
  for (const [path, name] of [
    ["/ui/audit", "audit"], ["/ui/audit/search?user=dr.sato", "audit-search"],
    ["/ui/audit/patient?patient=00010037", "who-looked"], ["/ui/audit/break-glass?review=accepted", "break-glass-reviews"],
    ["/ui/audit/maintenance", "maintenance-reviews"], ["/ui/merge/reviews?show=all", "merge-reviews"],
    ["/ui/compliance", "compliance"],
  ]) await check(aud, path, name);
  await aud.context().close();

  const admin = await session();
  await login(admin, "admin", "Tour admin pass 2026");
  for (const [path, name] of [
    ["/ui/admin/users", "users"], ["/ui/admin/requests", "requests"], ["/ui/admin/care", "care"],
    ["/ui/admin/emergency-accounts", "emergency-accounts"], ["/ui/admin/maintenance", "maintenance"],
    ["/ui/admin/snapshots", "snapshots"], ["/ui/admin/reconcile", "reconcile"], ["/ui/exchange/partners", "partners"],
    ["/ui/apps", "apps-admin"], ["/ui/exchange/partners/demo-clinic", "partner"],
    ["/ui/exchange/partners/new", "partner-new"],
  ]) await check(admin, path, name);
  await admin.context().close();
});

test("keyboard only: log in, find a patient, open the chart, register, break the glass", async () => {
  const page = await session();
  const focused = () => page.evaluate(() => document.activeElement && (document.activeElement.id || document.activeElement.tagName));
  await page.goto(base + "/ui/login");
  // autofocus applies once the page has loaded: wait for it, not a moment.
  const focusOn = (id) => page.waitForFunction((x) => document.activeElement && document.activeElement.id === x, id, { timeout: 10_000 });
  await focusOn("username");
  await page.keyboard.type("dr.tanaka");
  await page.keyboard.press("Tab");
  await page.keyboard.type(creds["hospital:dr.tanaka"]);
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/$/);
  // The home page's search box has the focus: type and Enter.
  await focusOn("q");
  await page.keyboard.type("demo-p021");
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/patients\?q=/);
  await shot(page, "keyboard-search");
  // Tab to the patient's link and open it.
  const at = () => page.evaluate(() => document.activeElement.getAttribute("href"));
  for (let i = 0; i < 40 && (await at()) !== "/ui/patients/demo-p021"; i++) await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.waitForURL(/\/ui\/patients\/demo-p021$/);
  await page.waitForSelector("h2:has-text('アレルギー')");
  // Break the glass for a patient without a care relationship.
  await page.goto(base + "/ui/patients/demo-p041");
  for (let i = 0; i < 60 && (await focused()) !== "reason"; i++) await page.keyboard.press("Tab");
  assert.equal(await focused(), "reason", "the reason is reachable by Tab");
  await page.keyboard.type("救急外来で意識障害、既往歴の確認が必要（キーボード操作）");
  await page.keyboard.press("Tab");
  assert.equal(await focused(), "minutes");
  await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.waitForSelector(".countdown");
  // Registration (the ER registers at any time): the triage radios, the selects and the button by keyboard.
  await page.goto(base + "/ui/register");
  for (let i = 0; i < 60 && !(await page.evaluate(() => document.activeElement.name === "triage")); i++) await page.keyboard.press("Tab");
  await page.keyboard.press("Space");
  assert.ok(await page.isChecked("input[name=triage][value=red]"), "a triage colour chosen by keyboard");
  await page.keyboard.press("Tab");
  assert.equal(await focused(), "sex");
  await page.keyboard.press("ArrowDown");
  for (let i = 0; i < 40 && (await page.evaluate(() => document.activeElement.type)) !== "submit"; i++) await page.keyboard.press("Tab");
  await page.keyboard.press("Enter");
  await page.waitForSelector(".badge.provisional");
  await page.context().close();
});
