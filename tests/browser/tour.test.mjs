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
import { mkdtempSync, mkdirSync, rmSync } from "node:fs";
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
  assert.match(await page.textContent("header .user"), /admin/);
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
  assert.ok(await page.locator("svg.spark").count() >= 3, "trend plots of vital signs");
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
  assert.match(asked, /患者: .*Patient\/demo-p001/, asked);
  assert.match(asked, /送る記録: 1\n- /, asked);
  const rows = await page.locator("main tbody tr").count();
  assert.ok(rows >= 1, "the queued message is listed");
  await page.reload();
  assert.equal(await page.locator("main tbody tr").count(), rows, "a reload sends nothing");
  await page.click("main tbody a");
  let state = "";
  for (let i = 0; i < 60 && !/delivered|acknowledged/.test(state); i++) {
    await page.waitForTimeout(500);
    await page.reload();
    state = await page.textContent(".card .badge");
  }
  assert.match(state, /delivered|acknowledged/, "signed receipt received");
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
