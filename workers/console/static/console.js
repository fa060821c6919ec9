// payhook console: refresh the live parts of a page in place (no framework, no build step).
// An element with data-poll="<url>" has its content replaced by the HTML fragment at <url>
// every data-interval milliseconds; the fragment is rendered (and escaped) by the server.
// Polling stops once a fragment holds an element with data-poll-stop, and pauses while the
// tab is hidden. A failed poll marks the page stale until the next one succeeds.
"use strict";
(function () {
  function start(element) {
    var url = element.getAttribute("data-poll");
    var interval = parseInt(element.getAttribute("data-interval") || "5000", 10);
    var marker = document.getElementById("live-state");
    var timer = null;
    function mark(ok) {
      if (!marker) return;
      marker.textContent = ok ? "live" : "stale: cannot reach the console";
      marker.className = ok ? "live-state" : "live-state bad";
    }
    function poll() {
      timer = null;
      if (document.hidden) { timer = setTimeout(poll, interval); return; }
      fetch(url, { credentials: "same-origin", headers: { "Accept": "text/html" } })
        .then(function (response) {
          if (response.redirected || response.status === 401) { window.location.reload(); return null; }
          if (!response.ok) throw new Error("HTTP " + response.status);
          return response.text();
        })
        .then(function (html) {
          if (html === null) return;
          element.innerHTML = html;
          mark(true);
          if (!element.querySelector("[data-poll-stop]")) timer = setTimeout(poll, interval);
        })
        .catch(function () { mark(false); timer = setTimeout(poll, interval); });
    }
    if (!element.querySelector("[data-poll-stop]")) timer = setTimeout(poll, interval);
  }
  document.addEventListener("DOMContentLoaded", function () {
    var elements = document.querySelectorAll("[data-poll]");
    for (var i = 0; i < elements.length; i++) start(elements[i]);
  });
})();
