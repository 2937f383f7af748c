"""The one page `cinema serve` shows, with its script and style sheet (embedded: the package ships no web assets).

The script uploads the chosen file as the raw request body (no multipart form), polls the job's status URL, then
shows the headline numbers, the QC warnings, download links and the report in a sandboxed frame (same origin, so
that the page can size the frame to the report, but no scripts: neither the sandbox nor the report's own
Content-Security-Policy allows any). It writes every server-provided string with ``textContent``, never as HTML.
"""

from __future__ import annotations

import html

__all__ = ["APP_CSS", "APP_JS", "index_html"]

_INDEX = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width,initial-scale=1">
<title>CineMA &middot; cine MRI analysis</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="/app.css">
<script src="/app.js" defer></script>
</head>
<body data-max-upload-bytes="@MAX_UPLOAD_BYTES@">
<header>
  <h1>CineMA <span>cine cardiac MRI analysis</span></h1>
  <p>Runs on this computer: the exam is analysed here and sent nowhere else. Research use only, not a medical
  device &mdash; review the overlays before trusting the numbers.</p>
</header>
<main>
  <section class="card" id="upload-card">
    <h2>Analyse an exam</h2>
    <p class="hint">A <b>zip</b> of a DICOM exam folder, an ACDC patient folder or a <code>cinema convert</code>
    folder, or one short-axis cine <b>NIfTI</b> file (<code>.nii</code>, <code>.nii.gz</code>).
    Up to @MAX_UPLOAD_MB@ MB.</p>
    <form id="upload-form">
      <input type="file" id="exam-file" accept=".zip,.nii,.gz,application/zip">
      <button type="submit" id="analyse">Analyse</button>
    </form>
    <p id="status" role="status" aria-live="polite"></p>
    <p id="error" role="alert" hidden></p>
  </section>
  <section class="card" id="result" hidden>
    <div class="headline">
      <div class="ef">
        <div class="label">LV ejection fraction</div>
        <div><span id="lv-ef" class="big"></span><span class="unit">%</span></div>
      </div>
      <dl class="numbers">
        <div><dt>RV ejection fraction</dt><dd><span id="rv-ef"></span> %</dd></div>
        <div><dt>LV end-diastolic volume</dt><dd><span id="lv-edv"></span> ml</dd></div>
        <div><dt>LV end-systolic volume</dt><dd><span id="lv-esv"></span> ml</dd></div>
        <div><dt>LV stroke volume</dt><dd><span id="lv-sv"></span> ml</dd></div>
        <div><dt>LV mass at ED</dt><dd><span id="lv-mass"></span> g</dd></div>
        <div><dt>ED / ES frame</dt><dd><span id="ed-es"></span></dd></div>
      </dl>
    </div>
    <h3>Quality control</h3>
    <ul id="qc"></ul>
    <p class="downloads">Download: <span id="downloads"></span></p>
    <iframe id="report" title="analysis report" sandbox="allow-same-origin"></iframe>
  </section>
</main>
</body>
</html>
"""


def index_html(max_upload_bytes: int) -> str:
    """The page, telling the script the upload limit so that it can refuse an oversized file before sending it."""
    text = _INDEX.replace("@MAX_UPLOAD_BYTES@", html.escape(str(int(max_upload_bytes))))
    return text.replace("@MAX_UPLOAD_MB@", html.escape(f"{max_upload_bytes / 2**20:.0f}"))


APP_JS = """"use strict";
const $ = (id) => document.getElementById(id);
const maxBytes = Number(document.body.dataset.maxUploadBytes);
const mb = (n) => (n / 1048576).toFixed(1);

function setStatus(text) { $("status").textContent = text; }
function showError(text) {
  $("error").textContent = text;
  $("error").hidden = false;
  setStatus("");
}
function setBusy(busy) {
  $("analyse").disabled = busy;
  $("exam-file").disabled = busy;
}
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

async function readJson(response) {
  try { return await response.json(); } catch (err) { return {}; }
}

async function upload(file) {
  setStatus(`Uploading ${mb(file.size)} MB ...`);
  let response;
  try {
    // The file is the whole request body: the server needs no multipart parser.
    response = await fetch("/jobs", {
      method: "POST", body: file, headers: {"Content-Type": "application/octet-stream"},
    });
  } catch (err) {
    throw new Error("The upload failed: the server did not answer.");
  }
  const reply = await readJson(response);
  if (!response.ok) {
    throw new Error(reply.error || `The server refused the upload (HTTP ${response.status}).`);
  }
  return reply;
}

async function waitFor(statusUrl) {
  const started = Date.now();
  for (;;) {
    const response = await fetch(statusUrl, {cache: "no-store"});
    const job = await readJson(response);
    if (!response.ok) throw new Error(job.error || `Lost the job (HTTP ${response.status}).`);
    if (job.status === "done") return job;
    if (job.status === "failed") throw new Error(job.error || "The analysis failed.");
    const seconds = Math.round((Date.now() - started) / 1000);
    setStatus(job.status === "queued"
      ? `Waiting for ${job.queue_position} earlier exam(s) ... ${seconds} s`
      : `Analysing: segmenting every frame ... ${seconds} s`);
    await sleep(1000);
  }
}

function showResult(job) {
  const s = job.summary;
  $("lv-ef").textContent = s.lv_ef_pct;
  $("rv-ef").textContent = s.rv_ef_pct;
  $("lv-edv").textContent = s.lv_edv_ml;
  $("lv-esv").textContent = s.lv_esv_ml;
  $("lv-sv").textContent = s.lv_sv_ml;
  $("lv-mass").textContent = s.lv_mass_g;
  $("ed-es").textContent = `${s.ed_frame} / ${s.es_frame}`;
  const qc = $("qc");
  qc.replaceChildren();
  const warnings = job.qc_warnings.length ? job.qc_warnings : ["No quality-control warnings."];
  for (const text of warnings) {
    const item = document.createElement("li");
    item.textContent = text;
    item.className = job.qc_warnings.length ? "warn" : "ok";
    qc.append(item);
  }
  const links = $("downloads");
  links.replaceChildren();
  for (const [name, url] of Object.entries(job.files)) {
    const link = document.createElement("a");
    link.href = url;
    link.textContent = name;
    link.download = name;
    links.append(link, " ");
  }
  $("report").src = job.report_url;  // sized to its content on load (below): one scroll bar, not two
  $("result").hidden = false;
  setStatus(`Done in ${job.seconds} s.`);
}

$("report").addEventListener("load", () => {
  const doc = $("report").contentDocument;
  if (doc && doc.documentElement) $("report").style.height = `${doc.documentElement.scrollHeight + 24}px`;
});

$("upload-form").addEventListener("submit", async (event) => {
  event.preventDefault();
  $("error").hidden = true;
  $("result").hidden = true;
  const file = $("exam-file").files[0];
  if (!file) { showError("Choose a file first."); return; }
  if (file.size > maxBytes) {
    showError(`The file is ${mb(file.size)} MB; the limit is ${mb(maxBytes)} MB.`);
    return;
  }
  setBusy(true);
  try {
    const job = await upload(file);
    showResult(await waitFor(job.status_url));
  } catch (err) {
    showError(err.message);
  } finally {
    setBusy(false);
  }
});
"""

APP_CSS = """
:root { --ink: #1d2733; --muted: #5b6775; --line: #d9dee4; --accent: #b3261e; --bg: #f4f6f8; }
* { box-sizing: border-box; }
body { margin: 0; font: 15px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; color: var(--ink);
       background: var(--bg); }
header { background: #fff; border-bottom: 1px solid var(--line); padding: 14px 24px; }
header h1 { margin: 0 0 2px; font-size: 22px; }
header h1 span { font-weight: 400; color: var(--muted); font-size: 16px; margin-left: 6px; }
header p { margin: 0; color: var(--muted); font-size: 13px; max-width: 70em; }
main { max-width: 1100px; margin: 0 auto; padding: 18px 24px 40px; }
.card { background: #fff; border: 1px solid var(--line); border-radius: 8px; padding: 16px 20px;
        margin-bottom: 18px; }
h2 { margin: 0 0 6px; font-size: 18px; }
h3 { margin: 18px 0 6px; font-size: 15px; }
.hint { color: var(--muted); margin: 0 0 12px; }
form { display: flex; gap: 12px; align-items: center; flex-wrap: wrap; }
button { font: inherit; padding: 7px 18px; border-radius: 6px; border: 1px solid #8c1d17; background: var(--accent);
         color: #fff; cursor: pointer; }
button:disabled { opacity: 0.5; cursor: wait; }
#status { margin: 12px 0 0; color: var(--muted); min-height: 1.45em; }
#error { margin: 12px 0 0; padding: 8px 12px; border-radius: 6px; background: #fdecea; color: #8c1d17; }
.headline { display: flex; gap: 28px; align-items: stretch; flex-wrap: wrap; }
.ef { border-right: 1px solid var(--line); padding-right: 28px; min-width: 210px; }
.ef .label { color: var(--muted); font-size: 14px; }
.big { font-size: 60px; font-weight: 700; line-height: 1.1; font-variant-numeric: tabular-nums; }
.unit { font-size: 26px; color: var(--muted); margin-left: 4px; }
.numbers { display: grid; grid-template-columns: repeat(3, minmax(160px, 1fr)); gap: 10px 28px; margin: 4px 0;
           flex: 1; }
.numbers dt { color: var(--muted); font-size: 13px; }
.numbers dd { margin: 0; font-size: 19px; font-weight: 600; font-variant-numeric: tabular-nums; }
#qc { margin: 0; padding: 0; list-style: none; }
#qc li { padding: 6px 10px; border-radius: 6px; margin: 4px 0; }
#qc li.warn { background: #fff4e5; border-left: 4px solid #e8a33d; }
#qc li.ok { background: #eaf6ec; border-left: 4px solid #3c9a4e; }
.downloads a { margin-right: 6px; }
iframe { width: 100%; height: 1200px; border: 1px solid var(--line); border-radius: 6px; margin-top: 8px;
         background: #fff; }
"""
