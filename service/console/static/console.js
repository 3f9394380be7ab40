// The console's only script (no build step, nothing from another host). Pages work without it; with it:
// - [data-fragment] elements load a part of the page (e.g. matches) in their own request, showing progress;
//   with data-poll="<ms>", loaded again every <ms> while the part it loaded holds a [data-poll-more] element
//   (e.g. a job's progress while it is queued or running);
// - a form with data-progress shows that text and its seconds while a [data-long] button's request runs;
// - iframe[data-fit-height] grows to its document's height (the digest preview);
// - the error summary of a form takes the focus, so a keyboard or screen reader user lands on it.
(function () {
  "use strict";

  function seconds(started) {
    return Math.round((Date.now() - started) / 1000);
  }

  function ticker(element, text) {
    var started = Date.now();
    element.hidden = false;
    element.textContent = text;
    return setInterval(function () {
      element.textContent = text + " " + seconds(started) + " s";
    }, 1000);
  }

  function loadFragment(box) {
    var loading = box.querySelector(".loading");
    var timer = loading ? ticker(loading, loading.textContent) : null;
    fetch(box.getAttribute("data-fragment"), {headers: {"X-Console-Fragment": "1"}, credentials: "same-origin"})
      .then(function (response) {
        return response.text().then(function (html) {
          if (response.redirected && response.url.indexOf("/console/login") >= 0) {
            window.location.assign(response.url);  // signed out meanwhile
            return;
          }
          box.innerHTML = html;  // the server's own escaped HTML
          var every = parseInt(box.getAttribute("data-poll"), 10);
          if (every > 0 && response.ok && box.querySelector("[data-poll-more]")) {
            setTimeout(function () { loadFragment(box); }, every);
            return "polling";
          }
        });
      })
      .catch(function () {
        box.innerHTML = '<p class="error-page" role="alert">The server could not be reached. Reload the page to try again.</p>';
      })
      .then(function (state) {
        if (timer) clearInterval(timer);
        if (state !== "polling") box.setAttribute("aria-busy", "false");
      });
  }

  function showProgress(form) {
    form.addEventListener("submit", function (event) {
      var button = event.submitter;
      if (!button || !button.hasAttribute("data-long")) return;  // an export downloads: the page stays
      var status = form.querySelector(".progress");
      if (status) ticker(status, form.getAttribute("data-progress"));
      // Disable after the browser has read the form (a disabled button sends nothing).
      setTimeout(function () { button.disabled = true; }, 0);
    });
  }

  function fitHeight(frame) {
    function fit() {
      var doc = frame.contentDocument;
      if (doc && doc.documentElement) frame.style.height = doc.documentElement.scrollHeight + 4 + "px";
    }
    frame.addEventListener("load", fit);
    window.addEventListener("resize", fit);
    fit();
  }

  document.addEventListener("DOMContentLoaded", function () {
    document.querySelectorAll("[data-fragment]").forEach(loadFragment);
    document.querySelectorAll("form[data-progress]").forEach(showProgress);
    document.querySelectorAll("iframe[data-fit-height]").forEach(fitHeight);
    var summary = document.querySelector("[data-error-summary]");
    if (summary) summary.focus();
  });
})();
