// mldropd pages: show failed HTMX requests in the flash area instead of failing silently.
(function () {
  "use strict";

  function flash(html) {
    const box = document.getElementById("flash");
    if (box) box.innerHTML = html;
  }

  function escapeHtml(text) {
    const div = document.createElement("div");
    div.textContent = text;
    return div.innerHTML;
  }

  // A domain error answers HTML (the _flash partial) for pages, JSON {"errors": [...]} elsewhere.
  window.mldropdErrorHtml = function (xhr, what) {
    const type = xhr.getResponseHeader("content-type") || "";
    if (type.indexOf("text/html") === 0 && xhr.responseText) return xhr.responseText;
    let items = [];
    try {
      items = (JSON.parse(xhr.responseText).errors || []).map(function (e) {
        return (e.field ? "<code>" + escapeHtml(e.field) + "</code> " : "") + escapeHtml(e.message);
      });
    } catch (err) {
      items = [];
    }
    if (items.length === 0) {
      items = [escapeHtml(xhr.status >= 500
        ? "the daemon hit an internal error (" + xhr.status + "); the operator's log has the details"
        : "the daemon answered " + xhr.status + " " + (xhr.statusText || ""))];
    }
    return '<div class="flash error" role="alert"><strong>' + escapeHtml(what) + ":</strong> " +
      items.map(function (i) { return "<span>" + i + "</span>"; }).join("") +
      ' <button type="button" class="link dismiss" aria-label="Dismiss">×</button></div>';
  };

  // An expired session answers a redirect to the sign-in page: go there instead of swapping it in.
  window.mldropdSignedOut = function (xhr) {
    const url = xhr.responseURL || "";
    if (url.indexOf("/login") === -1 || location.pathname === "/login") return false;
    window.location.href = "/login?next=" + encodeURIComponent(location.pathname);
    return true;
  };
  document.addEventListener("htmx:beforeSwap", function (event) {
    if (window.mldropdSignedOut(event.detail.xhr)) event.detail.shouldSwap = false;
  });

  document.addEventListener("htmx:responseError", function (event) {
    const xhr = event.detail.xhr;
    if (xhr.status === 401) { window.location.href = "/login?next=" + encodeURIComponent(location.pathname); return; }
    flash(window.mldropdErrorHtml(xhr, "That did not work"));
  });
  document.addEventListener("htmx:sendError", function () {
    flash('<div class="flash error offline" role="alert"><strong>The daemon cannot be reached.</strong> ' +
      "<span>Check that mldropd is running; this page retries on its own.</span>" +
      ' <button type="button" class="link dismiss" aria-label="Dismiss">×</button></div>');
  });
  // The next successful request after a lost connection clears that message.
  document.addEventListener("htmx:afterRequest", function (event) {
    const box = document.getElementById("flash");
    if (event.detail.successful && box && box.querySelector(".flash.offline")) box.innerHTML = "";
  });
  document.addEventListener("click", function (event) {
    const button = event.target.closest(".dismiss");
    if (button) button.closest(".flash").remove();
  });
})();
