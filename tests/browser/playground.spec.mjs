// End-to-end test of the playground at `/` in headless Chromium, against a running server.
//
//   PLAYGROUND_URL=http://127.0.0.1:8000 PLAYGROUND_KEY=... PLAYGROUND_IMAGE=in-64x64.png \
//   PLAYGROUND_ODD_IMAGE=odd-100x70.png PLAYGROUND_EXIF_IMAGE=exif-6.jpg PLAYGROUND_WORK=/tmp/w \
//   PLAYGROUND_SCREENSHOT=/tmp/playground.png node playground.spec.mjs
//
// The server must run the tiny model with SVD_NUM_FRAMES=4, SVD_STEPS=2 and
// SVD_ALLOWED_SIZES=64x64,128x64. The images: IMAGE is 64x64 (sent as it is); ODD is
// 100x70 with no black pixel (fitted to 128x64); EXIF is a JPEG stored 100x50, left half red,
// right half blue, with EXIF orientation 6 (shown 50x100: red above blue; fitted to 64x64).
// The "copy as curl" text and the fitted image it names are left in PLAYGROUND_WORK (curl.txt),
// for test_playground.py to run with a real curl. Exits 0 when every check passes, 1 with a
// message naming the failed check otherwise. tests/browser/test_playground.py runs it with a
// server it starts itself.
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { launchChromium } from "./chromium.mjs";

const env = (name, fallback) => {
  const value = process.env[name] ?? fallback;
  if (value === undefined || value === "") throw new Error(`set ${name}`);
  return value;
};
const BASE = env("PLAYGROUND_URL").replace(/\/$/, "");
const KEY = env("PLAYGROUND_KEY");
const IMAGE = env("PLAYGROUND_IMAGE");
const ODD_IMAGE = env("PLAYGROUND_ODD_IMAGE");
const EXIF_IMAGE = env("PLAYGROUND_EXIF_IMAGE");
const WORK = env("PLAYGROUND_WORK");
const SCREENSHOT = env("PLAYGROUND_SCREENSHOT");
const TIMEOUT_MS = Number(env("PLAYGROUND_TIMEOUT_MS", "150000"));
const SEED = "7";
const SIZE = 64;
const FITTED = [128, 64];         // 100x70 → the allowed size nearest in aspect ratio
const API = "/v2beta/image-to-video";
const EXPECTED_CSP = "default-src 'self'";

const log = (...args) => console.log("[playground]", ...args);
let step = "start";
class CheckFailed extends Error {}
const check = (ok, message) => { if (!ok) throw new CheckFailed(message); };

// The image in a multipart body the page sent: the PNG (signature to IEND) or JPEG (SOI to EOI),
// its size from the header, and the file name the part carries.
function uploadedImage(body) {
  const text = body.toString("latin1");
  const name = /name="image"; filename="([^"]*)"/.exec(text)?.[1];
  const png = body.indexOf(Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]));
  if (png >= 0) {
    const end = body.indexOf(Buffer.from("IEND", "latin1"), png) + 8;
    return { name, type: "png", width: body.readUInt32BE(png + 16), height: body.readUInt32BE(png + 20),
             bytes: body.subarray(png, end) };
  }
  return { name, type: "not in the body" };
}

// [r, g, b] of a pixel of the preview canvas.
const pixel = (page, x, y) => page.evaluate(([x, y]) =>
  Array.from(document.querySelector("#preview").getContext("2d").getImageData(x, y, 1, 1).data.slice(0, 3)), [x, y]);
const isBlack = ([r, g, b]) => r < 8 && g < 8 && b < 8;

// Waits for the preview to show a fitted frame of w x h.
async function previewOf(page, w, h, info) {
  await page.waitForFunction(([w, h, info]) => {
    const c = document.querySelector("#preview");
    return !c.hidden && c.width === w && c.height === h && document.querySelector("#image-info").textContent.includes(info);
  }, [w, h, info]);
  return page.locator("#image-info").textContent();
}

// Waits for a new video (not `old`) that is ready; "ok", or the error the page shows.
const newVideo = (page, old, width) => page.waitForFunction(([old, width]) => {
  const err = document.querySelector("#error");
  if (!err.hidden) return `error: ${err.textContent.trim()}`;
  const v = document.querySelector("#video");
  return v.src.startsWith("blob:") && v.src !== old && v.readyState >= 2 && (!width || v.videoWidth === width) ? "ok" : false;
}, [old, width], { timeout: TIMEOUT_MS, polling: 100 }).then((h) => h.jsonValue());

async function main() {
  const downloads = mkdtempSync(join(tmpdir(), "svd-playground-dl-"));
  // launch() gives Chromium a new, empty profile directory of its own (and removes it after).
  const browser = await launchChromium();
  const problems = [];        // page errors, CSP violations, console errors
  const requests = [];
  let page;
  try {
    const context = await browser.newContext({ viewport: { width: 1200, height: 900 },
                                               acceptDownloads: true,
                                               permissions: ["clipboard-read", "clipboard-write"] });
    page = await context.newPage();
    page.setDefaultTimeout(15_000);
    page.on("pageerror", (err) => problems.push(`page error: ${err.message}`));
    page.on("console", (msg) => {
      // Chromium logs every 4xx/5xx as "Failed to load resource"; the wrong-key check below
      // makes one on purpose. Anything else logged as an error is a problem.
      if (msg.type() === "error" && !msg.text().startsWith("Failed to load resource")) {
        problems.push(`console error: ${msg.text()}`);
      }
    });
    page.on("request", (req) => requests.push(req.url()));
    // The bodies of the generation POSTs, as sent (Playwright gives none for a body made of
    // blobs; the DevTools protocol does): promises of Buffers (or null), in order.
    const posts = [];
    const cdp = await context.newCDPSession(page);
    await cdp.send("Network.enable");
    cdp.on("Network.requestWillBeSent", (e) => {
      if (e.request.method !== "POST" || e.request.url !== `${BASE}${API}`) return;
      posts.push(cdp.send("Network.getRequestPostData", { requestId: e.requestId })
        .then((d) => Buffer.from(d.postData, d.base64Encoded ? "base64" : "latin1"), () => null));
    });
    const postBody = async (i) => {
      const body = await posts[i];
      check(body, `the body of POST number ${i + 1} could not be read`);
      return body;
    };
    await page.addInitScript(() => {
      window.__csp = [];
      document.addEventListener("securitypolicyviolation",
        (e) => window.__csp.push(`${e.violatedDirective} blocked ${e.blockedURI || "inline"}`));
    });

    step = "open /";
    const res = await page.goto(`${BASE}/`, { waitUntil: "load" });
    check(res, "no response");
    check(res.status() !== 404, "GET / answered 404: the server does not serve the playground page (route missing)");
    check(res.status() === 200, `GET / answered ${res.status()}`);
    check((res.headers()["content-type"] || "").startsWith("text/html"), `content-type is ${res.headers()["content-type"]}`);
    const csp = await res.headerValues("content-security-policy");
    check(csp.length === 1, `expected one content-security-policy header, got ${JSON.stringify(csp)}`);
    check(csp[0].includes(EXPECTED_CSP), `unexpected content-security-policy: ${csp[0]}`);
    await page.waitForFunction(() => !document.querySelector("#server").textContent.endsWith("…"));
    const pill = await page.locator("#server").textContent();
    check(pill.includes(" · tiny-random"), `the server pill should name the model (x-svd-model), shows "${pill}"`);

    step = "model and defaults";
    await page.waitForFunction(() => document.querySelector("#model-frames").textContent === "4");
    const facts = await page.evaluate(() => Object.fromEntries(["model-name", "model-frames", "model-steps",
      "model-fps", "model-description", "sizes"].map((id) => [id, document.getElementById(id).textContent])));
    log(`model facts: ${JSON.stringify(facts)}`);
    check(facts["model-name"].startsWith("tiny-random"), `model shown: "${facts["model-name"]}"`);
    check(facts["model-steps"] === "2", `steps shown: "${facts["model-steps"]}"`);
    check(facts["model-fps"] === "7 fps", `frame rate shown: "${facts["model-fps"]}"`);
    check(facts["model-description"].includes("tiny random-weight SVD"), `description: "${facts["model-description"]}"`);
    check(facts.sizes === "64×64, 128×64", `allowed sizes shown: "${facts.sizes}"`);

    step = "labels";
    for (const [label, id] of [["API key", "api-key"], ["Image", "image"], ["Seed", "seed"],
                               ["cfg_scale", "cfg-scale"], ["motion_bucket_id", "motion"],
                               ["Crop to fill", "fit-crop"], ["Pad with black", "fit-pad"]]) {
      const found = await page.getByLabel(label, { exact: true }).getAttribute("id");
      check(found === id, `the label "${label}" should name #${id}, names #${found}`);
    }
    check(await page.locator("#api-key").getAttribute("type") === "password", "the key input is not a password input");
    check(await page.locator("#image").isVisible(), "the file input is not visible");
    check(await page.locator("#image").getAttribute("accept") === "image/*", "file input accept attribute");
    check(await page.locator("#fit-crop").isChecked(), "crop is not the default fit");
    check(await page.locator("#cfg-scale-value").textContent() === "1.8", "cfg_scale default is not shown as 1.8");
    check(await page.locator("#motion-value").textContent() === "127", "motion_bucket_id default is not shown as 127");

    step = "choose the image";
    await page.locator("#image").setInputFiles(IMAGE);
    const info = await previewOf(page, SIZE, SIZE, "→");
    check(info.includes(`${SIZE}×${SIZE}`) && info.includes("sent as it is"),
          `an image of an allowed size is sent as it is; the info says "${info}"`);

    step = "wrong key";
    await page.locator("#api-key").fill("not-the-key");
    await page.locator("#generate").click();
    await page.locator("#error").waitFor({ state: "visible" });
    const message = (await page.locator("#error-message").textContent()).trim();
    const detail = await page.locator("#error-detail").textContent();
    check(message.length > 0, "the error has no message");
    check(detail.includes("HTTP 401") && detail.includes("unauthorized"), `the error detail should show the 401: "${detail}"`);
    check(detail.includes("authorization:"), `the error detail should show errors[0]: "${detail}"`);
    log(`wrong key → "${message}" / "${detail}"`);
    check(await page.locator("#generate").isEnabled(), "Generate stays disabled after an error");

    step = "parameters";
    await page.locator("#api-key").fill(KEY);
    await page.locator("#seed").fill(SEED);
    await page.locator("#cfg-scale").fill("2.5");
    await page.locator("#motion").fill("100");
    check(await page.locator("#cfg-scale-value").textContent() === "2.5", "cfg_scale value not shown");
    check(await page.locator("#motion-value").textContent() === "100", "motion_bucket_id value not shown");

    step = "generate";
    await page.evaluate(() => {   // every stage text the page shows, in order
      window.__stages = [];
      new MutationObserver(() => {
        const t = document.querySelector("#stage").textContent;
        if (t && window.__stages.at(-1) !== t) window.__stages.push(t);
      }).observe(document.querySelector("#stage"), { childList: true, characterData: true, subtree: true });
    });
    const started = Date.now();
    await page.locator("#generate").click();
    check(await page.locator("#error").isHidden(), "the old error is still shown");
    const outcome = await page.waitForFunction((n) => {
      const err = document.querySelector("#error");
      if (!err.hidden) return `error: ${err.textContent.trim()}`;
      const v = document.querySelector("#video");
      return v.src.startsWith("blob:") && v.readyState >= 2 && v.videoWidth === n ? "ok" : false;
    }, SIZE, { timeout: TIMEOUT_MS, polling: 100 }).then((h) => h.jsonValue());
    check(outcome === "ok", `the page shows an ${outcome}`);
    // Sent as it is: the chosen file (whose bytes the DevTools protocol leaves out of the body).
    const sent = uploadedImage(await postBody(posts.length - 1));
    check(sent.name === "in-64x64.png", `the upload is named "${sent.name}"`);
    const transport = await page.evaluate(() => document.body.dataset.transport);
    const stages = await page.evaluate(() => window.__stages);
    log(`video ready after ${((Date.now() - started) / 1000).toFixed(1)} s; progress via ${transport}; stages: ${JSON.stringify(stages)}`);
    check(stages.length >= 2, `progress was not shown (stages: ${JSON.stringify(stages)})`);
    check((await page.locator("#stage").textContent()).startsWith("Done"), "the status does not say Done");

    step = "video plays";
    const video = await page.evaluate(() => {
      const v = document.querySelector("#video");
      return { w: v.videoWidth, h: v.videoHeight, duration: v.duration, controls: v.controls,
               muted: v.muted, loop: v.loop, autoplay: v.autoplay, playsInline: v.playsInline };
    });
    check(video.h === SIZE, `videoHeight is ${video.h}`);
    check(video.controls && video.muted && video.loop && video.autoplay && video.playsInline,
          `video attributes: ${JSON.stringify(video)}`);
    await page.waitForFunction(() => {
      const v = document.querySelector("#video");
      return !v.paused && v.played.length > 0;
    }, null, { timeout: 10_000 }).catch(() => { throw new CheckFailed("the video does not play"); });

    step = "seed and download link";
    check((await page.locator("#result-seed").textContent()) === SEED, "the seed shown is not the one asked for");
    const link = await page.evaluate(() => {
      const a = document.querySelector("#download");
      return { href: a.href, name: a.download, video: document.querySelector("#video").src };
    });
    check(link.href.startsWith("blob:"), `download link is ${link.href}`);
    check(link.href === link.video, "the download link and the video differ");
    check(link.name === `svd-${SEED}.mp4`, `download name is "${link.name}"`);
    // The page's CSP allows no fetch() of blob: URLs, so the bytes are checked from a download.
    const [download] = await Promise.all([page.waitForEvent("download"), page.locator("#download").click()]);
    check(download.suggestedFilename() === `svd-${SEED}.mp4`, `downloaded as ${download.suggestedFilename()}`);
    const saved = join(downloads, download.suggestedFilename());
    await download.saveAs(saved);
    const bytes = readFileSync(saved);
    check(bytes.length > 8 && bytes.subarray(4, 8).toString("latin1") === "ftyp",
          `the download is not an MP4 (${bytes.length} bytes)`);

    step = "history";
    const items = page.locator("#history li");
    check(await items.count() === 1, `history has ${await items.count()} entries, expected 1`);
    const entry = await items.first().textContent();
    check(entry.includes(`seed ${SEED}`) && entry.includes("done"), `history entry: "${entry}"`);
    const stored = await page.evaluate(() => JSON.parse(localStorage.getItem("svd-playground.history")));
    check(stored.length === 1 && /^[0-9a-f]{64}$/.test(stored[0].id) && stored[0].status === "done",
          `history in localStorage: ${JSON.stringify(stored)}`);
    await items.first().locator("button").click();      // loads the video again from the server
    const reloaded = await page.waitForFunction((old) => {
      const err = document.querySelector("#error");
      if (!err.hidden) return `error: ${err.textContent.trim()}`;
      const v = document.querySelector("#video");
      return v.src.startsWith("blob:") && v.src !== old && v.readyState >= 2 ? "ok" : false;
    }, link.video, { timeout: 30_000 }).then((h) => h.jsonValue());
    check(reloaded === "ok", `reloading from the history: ${reloaded}`);

    step = "an odd-sized image is fitted";
    await page.locator("#image").setInputFiles(ODD_IMAGE);
    const oddInfo = await previewOf(page, ...FITTED, "odd-100x70.png");
    log(`odd image: "${oddInfo}"`);
    check(oddInfo.includes("100×70") && oddInfo.includes("fitted to 128×64") && oddInfo.includes("cropped"),
          `image info: "${oddInfo}"`);
    for (const [x, y] of [[0, 0], [127, 63], [0, 32], [127, 32], [64, 32]]) {
      const rgb = await pixel(page, x, y);
      check(!isBlack(rgb), `the cropped preview is black at ${x},${y}: ${rgb}`);
    }
    const fittedName = await page.locator("#fitted-download").getAttribute("download");
    check(fittedName === "odd-100x70-128x64.png", `the fitted image is named "${fittedName}"`);

    step = "generate from the odd image";
    await page.evaluate(() => { window.__stages = []; });
    const oddBefore = link.video;
    const postsBefore = posts.length;
    await Promise.all([
      page.waitForRequest((r) => r.method() === "POST" && r.url() === `${BASE}${API}`),
      page.locator("#generate").click(),
    ]);
    const oddSent = uploadedImage(await postBody(postsBefore));
    check(oddSent.type === "png" && oddSent.width === FITTED[0] && oddSent.height === FITTED[1],
          `the upload is ${oddSent.type} ${oddSent.width}x${oddSent.height}, expected a ${FITTED.join("x")} PNG`);
    check(oddSent.name === fittedName, `the upload is named "${oddSent.name}"`);
    const oddOutcome = await newVideo(page, oddBefore, FITTED[0]);
    check(oddOutcome === "ok", `the page shows an ${oddOutcome}`);
    log(`odd image: stages ${JSON.stringify(await page.evaluate(() => window.__stages))}`);
    const oddVideo = await page.evaluate(() => {
      const v = document.querySelector("#video"); return [v.videoWidth, v.videoHeight];
    });
    check(oddVideo[0] === FITTED[0] && oddVideo[1] === FITTED[1], `the video is ${oddVideo.join("x")}`);
    await page.waitForFunction(() => {
      const v = document.querySelector("#video");
      return !v.paused && v.currentTime > 0;
    }, null, { timeout: 10_000 }).catch(() => { throw new CheckFailed("the video of the odd image does not play"); });
    const oddLink = await page.evaluate(() => {
      const a = document.querySelector("#download"); return { href: a.href, name: a.download };
    });
    check(oddLink.href.startsWith("blob:") && oddLink.name === `svd-${SEED}.mp4`, `download link: ${JSON.stringify(oddLink)}`);

    step = "copy as curl";
    const curl = await page.locator("#curl").textContent();
    log(`curl:\n${curl}`);
    for (const part of ['-H "authorization: Bearer $KEY"', `-F image=@${fittedName}`, `-F seed=${SEED}`,
                        "-F cfg_scale=2.5", "-F motion_bucket_id=100", `${BASE}${API}`]) {
      check(curl.includes(part), `the curl text lacks ${part}`);
    }
    check(!curl.includes(KEY), "the curl text shows the key");
    await page.locator("#copy-curl").click();
    await page.waitForFunction(() => document.querySelector("#curl-note").textContent.startsWith("Copied"));
    const clipboard = await page.evaluate(() => navigator.clipboard.readText());
    check(clipboard === curl, `the clipboard holds "${clipboard}"`);
    const [fittedDownload] = await Promise.all([page.waitForEvent("download"), page.locator("#fitted-download").click()]);
    check(fittedDownload.suggestedFilename() === fittedName, `fitted image saved as ${fittedDownload.suggestedFilename()}`);
    await fittedDownload.saveAs(join(WORK, fittedName));
    check(readFileSync(join(WORK, fittedName)).equals(oddSent.bytes), "the saved fitted image is not the one uploaded");
    writeFileSync(join(WORK, "curl.txt"), clipboard);

    step = "pad with black";
    await page.locator("#fit-pad").check();
    await page.waitForFunction(() => document.querySelector("#preview").dataset.mode === "pad");
    const padInfo = await previewOf(page, ...FITTED, "padded with black");
    // 100x70 scaled to 91x64 in the middle of 128x64: 18 black columns on each side.
    for (const [x, y] of [[0, 0], [0, 32], [17, 63], [110, 0], [127, 32], [127, 63]]) {
      const rgb = await pixel(page, x, y);
      check(isBlack(rgb), `the padded preview is not black at ${x},${y}: ${rgb} (${padInfo})`);
    }
    for (const [x, y] of [[20, 1], [64, 32], [107, 62]]) {
      const rgb = await pixel(page, x, y);
      check(!isBlack(rgb), `the padded preview is black inside the image at ${x},${y}: ${rgb}`);
    }

    step = "EXIF orientation";
    await page.locator("#fit-crop").check();
    await page.locator("#image").setInputFiles(EXIF_IMAGE);
    const exifInfo = await previewOf(page, SIZE, SIZE, "exif-6.jpg");
    check(exifInfo.includes("50×100"), `the EXIF-rotated image should be 50×100, the info says "${exifInfo}"`);
    const top = await pixel(page, 32, 6), bottom = await pixel(page, 32, 57);
    check(top[0] > 180 && top[2] < 80 && bottom[2] > 180 && bottom[0] < 80,
          `the preview should be red above blue (EXIF orientation applied): top ${top}, bottom ${bottom}`);

    step = "key handling";
    check(await page.evaluate(() => localStorage.getItem("svd-playground.key")) === null,
          "the key is in localStorage although remember is not ticked");
    check(!requests.some((u) => u.includes(KEY)), "the key appeared in a URL");
    const foreign = requests.filter((u) => !u.startsWith(BASE + "/") && !u.startsWith("blob:") && !u.startsWith("data:"));
    check(foreign.length === 0, `requests to other origins: ${foreign.join(", ")}`);
    await page.locator("#remember").check();
    check(await page.evaluate(() => localStorage.getItem("svd-playground.key")) === KEY, "remember does not keep the key");
    await page.locator("#remember").uncheck();
    check(await page.evaluate(() => localStorage.getItem("svd-playground.key")) === null, "unticking remember keeps the key");

    step = "cancel during the upload";
    await page.evaluate(() => {   // Cancel before the POST is answered: nothing is left running
      document.querySelector("#generate").click();
      document.querySelector("#cancel").click();
    });
    await page.waitForFunction(() => document.querySelector("#stage").textContent === "Cancelled");
    check(await page.locator("#error").isHidden(), "cancelling shows an error");
    check(await page.locator("#generate").isEnabled(), "Generate stays disabled after Cancel");
    check(await page.locator("#cancel").isHidden(), "Cancel is still shown");

    step = "cancel while running";
    // The event stream is held open, so the page shows the generation as running until Cancel.
    const held = [];
    await page.route("**/result/*/events", (route) => { held.push(route); });
    await page.locator("#generate").click();
    await page.waitForFunction(() => document.body.dataset.transport === undefined
      && document.querySelector("#stage").textContent === "Queued");
    await page.locator("#cancel").waitFor({ state: "visible" });
    const [cancelRequest] = await Promise.all([
      page.waitForRequest((r) => r.method() === "DELETE"),
      page.locator("#cancel").click(),
    ]);
    const historyId = await page.evaluate(() => JSON.parse(localStorage.getItem("svd-playground.history"))[0].id);
    check(cancelRequest.url() === `${BASE}/v2beta/image-to-video/result/${historyId}`, `DELETE went to ${cancelRequest.url()}`);
    check(cancelRequest.headers().authorization === `Bearer ${KEY}`, "DELETE without the key");
    await page.waitForFunction(() => document.querySelector("#stage").textContent === "Cancelled");
    check(await page.locator("#error").isHidden(), "cancelling shows an error");
    const badge = await page.locator("#history li .badge").first().textContent();
    check(badge === "cancelled", `the history says "${badge}" for the cancelled generation`);
    await page.unroute("**/result/*/events");
    for (const route of held) await route.abort().catch(() => {});

    step = "drop an image";
    await page.evaluate(async (n) => {   // a PNG made in the page, dropped on the zone
      const canvas = document.createElement("canvas");
      canvas.width = canvas.height = n;
      const g = canvas.getContext("2d");
      const grad = g.createLinearGradient(0, 0, n, n);
      grad.addColorStop(0, "#f08c00"); grad.addColorStop(1, "#5c7cfa");
      g.fillStyle = grad; g.fillRect(0, 0, n, n);
      const blob = await new Promise((resolve) => canvas.toBlob(resolve, "image/png"));
      const data = new DataTransfer();
      data.items.add(new File([blob], "dropped.png", { type: "image/png" }));
      const zone = document.querySelector("#drop");
      for (const type of ["dragenter", "dragover", "drop"]) {
        zone.dispatchEvent(new DragEvent(type, { dataTransfer: data, bubbles: true, cancelable: true }));
      }
    }, SIZE);
    check(await page.evaluate(() => document.querySelector("#image").files[0]?.name) === "dropped.png",
          "the dropped file is not in the file input");
    await page.waitForFunction(() => document.querySelector("#image-info").textContent.startsWith("dropped.png"));

    // Where the events endpoint is missing (404) or its stream breaks, polling takes over.
    // The progress and ETA they show come from the 202 poll body and from the events.
    const firstPoll = { stage: "queued", progress: 0, queue_position: 3, eta_seconds: 42 };
    const events = 'id: 998\nevent: queued\ndata: {"position": 2, "eta_seconds": 30}\n\n' +
      'id: 1002\nevent: progress\ndata: {"stage": "denoising", "progress": 0.4, "step": 2, "steps": 5, "eta_seconds": 12}\n\n';
    for (const [name, fulfil, expected, shown] of [
      ["events answer 404", { status: 404, contentType: "application/json", body: "{}" }, "poll",
       ["Queued · position 3 — about 42 s left"]],
      ["event stream breaks", { status: 200, contentType: "text/event-stream", body: events }, "events+poll",
       ["Queued · position 2 — about 30 s left", "Denoising 40 % · step 2/5 — about 12 s left"]],
    ]) {
      step = name;
      await page.route("**/result/*/events", (route) => route.fulfill(fulfil));
      let polls = 0;      // the first poll answers 202 with the extras, the others reach the server
      const isPoll = (url) => /\/result\/[0-9a-f]{64}$/.test(url.pathname);
      await page.route(isPoll, (route) => (polls++ === 0 && route.request().method() === "GET"
        ? route.fulfill({ status: 202, contentType: "application/json",
                          body: JSON.stringify({ id: "x", status: "in-progress", ...firstPoll }) })
        : route.continue()));
      await page.evaluate(() => { window.__stages = []; });
      const before = await page.evaluate(() => document.querySelector("#video").src);
      await page.locator("#generate").click();
      const done = await newVideo(page, before, 0);
      check(done === "ok", `the page shows an ${done}`);
      const transport = await page.evaluate(() => document.body.dataset.transport);
      check(transport === expected, `progress came via ${transport}, expected ${expected}`);
      const stages = await page.evaluate(() => window.__stages);
      for (const text of shown) check(stages.includes(text), `"${text}" was not shown; stages: ${JSON.stringify(stages)}`);
      await page.unroute("**/result/*/events");
      await page.unroute(isPoll);
    }
    const entries = await page.locator("#history li").allTextContents();
    check(entries.length === 5, `history: ${JSON.stringify(entries)}`);

    step = "screenshot";
    await page.evaluate(() => { const v = document.querySelector("#video"); v.pause(); v.currentTime = 0; });
    await page.screenshot({ path: SCREENSHOT, fullPage: true });
    log(`screenshot: ${SCREENSHOT}`);

    step = "no errors in the page";
    const violations = await page.evaluate(() => window.__csp);
    check(violations.length === 0, `content security policy violations: ${violations.join("; ")}`);
    check(problems.length === 0, problems.join("\n"));
    log("all checks passed");
  } catch (err) {
    if (page && !page.isClosed()) {
      await page.screenshot({ path: SCREENSHOT, fullPage: true }).catch(() => {});
      const error = await page.locator("#error").textContent().catch(() => "");
      if (error.trim()) console.error(`[playground] error box on the page: ${error.trim()}`);
    }
    if (problems.length) console.error(`[playground] also seen:\n${problems.join("\n")}`);
    throw err;
  } finally {
    await browser.close();
    rmSync(downloads, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`[playground] FAILED in step "${step}": ${err instanceof CheckFailed ? err.message : err.stack || err}`);
  process.exitCode = 1;
});
