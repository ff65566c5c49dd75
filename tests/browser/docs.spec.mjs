// The API docs page (/docs) in headless Chromium, as on a machine with no internet: every
// request to another host is aborted and recorded, and the page must still render the whole API.
//
//   DOCS_URL=http://127.0.0.1:8000 DOCS_SCREENSHOT=/tmp/docs.png node docs.spec.mjs
//
// Exits 0 when every check passes, 1 with a message naming the failed check otherwise.
// tests/browser/test_docs_page.py runs it with a server it starts itself.
import { launchChromium } from "./chromium.mjs";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") throw new Error(`set ${name}`);
  return value;
};
const BASE = env("DOCS_URL").replace(/\/$/, "");
const SCREENSHOT = env("DOCS_SCREENSHOT");
const ORIGIN = new URL(BASE).origin;

const log = (...args) => console.log("[docs]", ...args);
let step = "start";
class CheckFailed extends Error {}
const check = (ok, message) => { if (!ok) throw new CheckFailed(message); };

// One operation block of Swagger UI, by method and path as the page shows them.
const operation = (page, method, path) =>
  page.locator(`.opblock-${method.toLowerCase()}`)
    .filter({ has: page.locator(".opblock-summary-path", { hasText: new RegExp(`^${path.replace(/[{}]/g, "\\$&")}$`) }) });

async function main() {
  const browser = await launchChromium();
  const problems = [];        // page errors, CSP violations, console errors
  const offsite = [];         // requests to any other origin: aborted, and a failure
  const local = [];
  let page;
  try {
    const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
    // Air-gapped: nothing but the server answers. Anything else is recorded and aborted.
    await context.route("**/*", (route) => {
      const url = route.request().url();
      if (url.startsWith(`${ORIGIN}/`) || url.startsWith("data:") || url.startsWith("blob:")) {
        local.push(url);
        return route.continue();
      }
      offsite.push(url);
      return route.abort("internetdisconnected");
    });
    page = await context.newPage();
    page.setDefaultTimeout(15_000);
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("console", (msg) => {
      if (msg.type() === "error") problems.push(`console error: ${msg.text()}`);
    });
    page.on("requestfailed", (req) => {
      if (!offsite.includes(req.url())) problems.push(`request failed: ${req.url()} (${req.failure()?.errorText})`);
    });
    page.on("response", (res) => {
      if (res.status() >= 400) problems.push(`HTTP ${res.status()} for ${res.url()}`);
    });
    await page.addInitScript(() => {
      window.__csp = [];
      document.addEventListener("securitypolicyviolation",
        (e) => window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}` +
                                 (e.sample ? ` (${e.sample})` : "")));
    });

    step = "open /docs";
    const res = await page.goto(`${BASE}/docs`, { waitUntil: "load" });
    check(res && res.status() === 200, `GET /docs answered ${res && res.status()}`);
    const csp = await res.headerValues("content-security-policy");
    check(csp.length === 1, `expected one content-security-policy header, got ${JSON.stringify(csp)}`);
    check(/script-src 'self'(;|$)/.test(csp[0]) && !csp[0].includes("unsafe-"), `unexpected content-security-policy: ${csp[0]}`);
    check(await page.title() === "svd-server: Stable Video Diffusion API - Swagger UI", `title is "${await page.title()}"`);

    step = "render";
    await page.locator(".swagger-ui .info .title").waitFor({ state: "visible" });
    const title = await page.locator(".swagger-ui .info .title").textContent();
    check(title.includes("svd-server"), `the API title shows "${title}"`);
    for (const tag of ["Image to Video", "Extensions", "Operations"]) {
      check(await page.locator(`.opblock-tag[data-tag="${tag}"]`).count() === 1, `no "${tag}" tag section`);
    }
    const expected = [
      ["POST", "/v2beta/image-to-video"],
      ["GET", "/v2beta/image-to-video/result/{id}"],
      ["DELETE", "/v2beta/image-to-video/result/{id}"],            // Extensions
      ["GET", "/v2beta/image-to-video/result/{id}/events"],        // Extensions
      ["GET", "/healthz"],
    ];
    for (const [method, path] of expected) {
      await operation(page, method, path).first().waitFor({ state: "visible" });
    }
    const extensions = await page.locator('.opblock-tag-section:has(.opblock-tag[data-tag="Extensions"]) .opblock')
      .evaluateAll((els) => els.map((el) => el.querySelector(".opblock-summary-method").textContent + " " +
                                            el.querySelector(".opblock-summary-path").textContent));
    check(extensions.includes("DELETE /v2beta/image-to-video/result/{id}") &&
          extensions.includes("GET /v2beta/image-to-video/result/{id}/events"),
          `the Extensions tag lists ${JSON.stringify(extensions)}`);
    const count = await page.locator(".opblock").count();
    log(`rendered ${count} operations; Extensions: ${JSON.stringify(extensions)}`);

    step = "expand POST /v2beta/image-to-video";
    const post = operation(page, "POST", "/v2beta/image-to-video");
    await post.locator(".opblock-summary").click();
    await post.locator(".opblock-body").waitFor({ state: "visible" });
    const body = await post.locator(".opblock-body").textContent();
    check(body.includes("motion_bucket_id") && body.includes("cfg_scale"), "the POST's form fields are not shown");

    step = "try it out: GET /healthz";   // the page's fetch to the API is allowed (connect-src)
    const health = operation(page, "GET", "/healthz");
    await health.locator(".opblock-summary").click();
    await health.locator("button.try-out__btn").click();
    await health.locator("button.execute").click();
    const status = health.locator(".live-responses-table tr.response .response-col_status").first();
    await status.waitFor({ state: "visible" });
    check((await status.textContent()).trim() === "200", `Try it out on /healthz shows ${await status.textContent()}`);

    step = "no problems";
    await page.waitForTimeout(300);
    const violations = await page.evaluate(() => window.__csp);
    check(offsite.length === 0, `requests to other hosts were attempted: ${JSON.stringify(offsite)}`);
    check(violations.length === 0, `CSP violations: ${JSON.stringify(violations)}`);
    check(problems.length === 0, problems.join("; "));
    check(local.some((u) => u.endsWith("/docs/swagger-ui-bundle.js")) &&
          local.some((u) => u.endsWith("/docs/swagger-init.js")) &&
          local.some((u) => u.endsWith("/openapi.json")), `expected requests missing: ${JSON.stringify(local)}`);
    log(`${local.length} same-origin requests, none elsewhere: ${JSON.stringify([...new Set(local.map((u) => new URL(u).pathname))])}`);
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    log("ok");
  } catch (err) {
    if (page) await page.screenshot({ path: SCREENSHOT, fullPage: true }).catch(() => {});
    const detail = err instanceof CheckFailed ? err.message : (err.stack || String(err));
    console.error(`[docs] FAILED at "${step}": ${detail}`);
    if (problems.length) console.error(`[docs] page problems: ${problems.join("; ")}`);
    if (offsite.length) console.error(`[docs] requests to other hosts: ${JSON.stringify(offsite)}`);
    process.exitCode = 1;
  } finally {
    await browser.close();
  }
}

await main();
