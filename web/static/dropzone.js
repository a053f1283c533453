// The deploy page: drop zone (drag and drop or choose a file), upload with progress, the
// schedule picker and its preview. Without JavaScript the form still posts normally.
(function () {
  "use strict";
  const form = document.getElementById("deploy-form");
  if (!form) return;
  const zone = document.getElementById("dropzone");
  const input = document.getElementById("file");
  const chosen = document.getElementById("dz-file");
  const progress = document.getElementById("upload-progress");
  const bar = progress.querySelector("progress");
  const status = progress.querySelector(".dz-status");
  const result = document.getElementById("upload-result");
  const maxMb = Number(form.dataset.maxMb || 0);
  const token = document.querySelector('meta[name="csrf-token"]').content;

  // --- schedule picker: compose the `schedule` field and ask the server to describe it ---
  const kind = document.getElementById("schedule-kind");
  const weekday = document.getElementById("schedule-weekday");
  const monthday = document.getElementById("schedule-monthday");
  const cron = document.getElementById("schedule-cron");
  const schedule = document.getElementById("schedule");
  const preview = document.getElementById("schedule-preview");

  function composeSchedule() {
    const k = kind.value;
    weekday.hidden = k !== "weekly";
    monthday.hidden = k !== "monthly";
    cron.hidden = k !== "cron";
    const value = k === "weekly" ? "weekly:" + weekday.value
      : k === "monthly" ? "monthly:" + monthday.value
      : k === "cron" ? cron.value.trim() : "daily";
    if (value !== schedule.value) {
      schedule.value = value;
      if (window.htmx) htmx.trigger(preview, "schedule-changed");
    }
  }
  [kind, weekday, monthday].forEach(function (el) { el.addEventListener("change", composeSchedule); });
  // A choice can come before this deferred script runs (or a browser restores one), and htmx
  // wires hx-trigger only on DOMContentLoaded, after it: a change in between is not previewed.
  // This listener runs after htmx's, so it composes once more and asks for the preview again.
  const rendered = schedule.value;
  document.addEventListener("DOMContentLoaded", function () {
    composeSchedule();
    if (schedule.value !== rendered && window.htmx) htmx.trigger(preview, "schedule-changed");
  });
  cron.addEventListener("input", composeSchedule);
  kind.addEventListener("change", function () { if (kind.value === "cron") cron.focus(); });

  // --- drop zone ---
  function over(event) {
    event.preventDefault();
    if (event.dataTransfer) event.dataTransfer.dropEffect = "copy";
    zone.classList.add("over");
  }
  zone.addEventListener("dragenter", over);
  zone.addEventListener("dragover", over);
  zone.addEventListener("dragleave", function (event) {
    if (!zone.contains(event.relatedTarget)) zone.classList.remove("over");
  });
  zone.addEventListener("drop", function (event) {
    event.preventDefault();
    zone.classList.remove("over");
    const files = event.dataTransfer ? event.dataTransfer.files : null;
    if (!files || files.length === 0) return;
    if (files.length > 1) {
      showProblem("Drop one model file at a time (" + files.length + " files were dropped).");
      return;
    }
    input.files = files;
    upload();
  });
  // Dropping a file next to the zone would make the browser navigate to it: keep the page.
  ["dragover", "drop"].forEach(function (type) {
    window.addEventListener(type, function (event) { event.preventDefault(); });
  });
  input.addEventListener("change", function () { if (input.files.length) upload(); });
  form.addEventListener("submit", function (event) {
    event.preventDefault();
    if (input.files.length) upload(); else showProblem("Choose a model file first.");
  });

  function showProblem(text) {
    const div = document.createElement("div");
    div.className = "result failed";
    div.setAttribute("role", "alert");
    div.textContent = text;
    result.replaceChildren(div);
  }

  function megabytes(bytes) { return (bytes / 1048576).toFixed(bytes < 1048576 ? 2 : 1); }

  function upload() {
    const file = input.files[0];
    if (!file) return;
    chosen.textContent = file.name + " · " + megabytes(file.size) + " MB";
    if (maxMb && file.size > maxMb * 1048576) {
      showProblem(file.name + " is " + megabytes(file.size) + " MB, larger than the limit of " +
        maxMb + " MB. Ask an admin to raise [limits] max_upload_mb.");
      input.value = "";
      return;
    }
    composeSchedule();
    const data = new FormData(form);
    const ticket = newTicket();
    data.append("ticket", ticket);
    const xhr = new XMLHttpRequest();
    xhr.open("POST", form.action);
    xhr.setRequestHeader("HX-Request", "true");
    xhr.setRequestHeader("x-csrftoken", token);
    xhr.upload.onprogress = function (event) {
      if (!event.lengthComputable) return;
      const pct = Math.round((event.loaded / event.total) * 100);
      bar.value = pct;
      status.textContent = "Uploading " + file.name + ": " + pct + " %";
    };
    xhr.upload.onload = function () {
      bar.removeAttribute("value");  // indeterminate while the server checks the model
      status.textContent = "Uploaded. Checking the model in a sandbox: imports, contract, dry run…";
      polling = window.setInterval(function () { showStage(ticket); }, 1000);
    };
    xhr.onload = function () {
      done();
      if (window.mldropdSignedOut && window.mldropdSignedOut(xhr)) return;
      const type = xhr.getResponseHeader("content-type") || "";
      const html = type.indexOf("text/html") === 0 ? xhr.responseText
        : window.mldropdErrorHtml(xhr, "The model was not deployed");
      htmx.swap(result, html, { swapStyle: "innerHTML" });
      result.focus();
    };
    xhr.onerror = function () {
      done();
      showProblem("The upload did not reach the daemon (network error). Check that mldropd is running and drop the file again.");
    };
    progress.hidden = false;
    bar.value = 0;
    status.textContent = "Uploading " + file.name + "…";
    zone.classList.add("busy");
    zone.setAttribute("aria-busy", "true");
    result.replaceChildren();
    xhr.send(data);
    input.value = "";  // the same file can be dropped or chosen again
  }

  let polling = null;

  function newTicket() {
    const bytes = new Uint8Array(16);
    window.crypto.getRandomValues(bytes);
    return Array.from(bytes, function (b) { return b.toString(16).padStart(2, "0"); }).join("");
  }

  // Where the upload stands on the server: in line for a validation slot, scanned, validated.
  function showStage(ticket) {
    fetch("/upload-progress/" + ticket, { credentials: "same-origin" })
      .then(function (response) { return response.ok ? response.json() : null; })
      .then(function (where) {
        if (!where || polling === null) return;
        if (where.stage === "waiting") {
          status.textContent = "Waiting for a validation slot: " + where.ahead +
            (where.ahead === 1 ? " upload" : " uploads") + " ahead of yours…";
        } else if (where.stage === "scanning") {
          status.textContent = "Scanning the file's imports (no code runs)…";
        } else if (where.stage === "validate") {
          status.textContent = "Checking the model in a sandbox: contract, dry run…";
        }
      })
      .catch(function () { /* the upload's own answer reports problems */ });
  }

  function done() {
    if (polling !== null) window.clearInterval(polling);
    polling = null;
    progress.hidden = true;
    zone.classList.remove("busy");
    zone.removeAttribute("aria-busy");
  }
})();
