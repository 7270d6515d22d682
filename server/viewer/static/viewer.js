// redraft viewer: live updates and the launch-key sign-in. Plain JavaScript, no build, no library.
// While a page shows a thread, /live is polled every second; when its stamp (head checkpoint, runs' progress, the last
// action's state) changes, the page is fetched again and each [data-region] part that changed is swapped in -- except
// a part holding a form the user is typing in, which is left alone until they are done.
(function () {
  "use strict";
  var POLL_MS = 1000;

  function dirty(region) {
    if (region.contains(document.activeElement) && document.activeElement.matches("textarea, input, select")) {
      return true;
    }
    return region.querySelector("[data-dirty]") !== null;
  }

  function markDirty(event) {
    if (event.target.matches("textarea, input[type=text], input:not([type])")) {
      event.target.setAttribute("data-dirty", "1");
    }
  }

  function ids(root) {
    return Array.prototype.map.call(root.querySelectorAll("[data-region]"), function (el) { return el.id; }).join(" ");
  }

  function swap(html) {
    var doc = new DOMParser().parseFromString(html, "text/html");
    var main = document.getElementById("main");
    var freshMain = doc.getElementById("main");
    if (!freshMain) {
      return;
    }
    if (ids(doc) !== ids(document)) {
      // parts appeared or went away (a thread's first checkpoint): the whole page, unless a form is being filled
      if (dirty(main)) {
        return;
      }
      main.replaceWith(document.importNode(freshMain, true));
    } else {
      document.querySelectorAll("[data-region]").forEach(function (region) {
        var next = doc.getElementById(region.id);
        if (next && next.innerHTML !== region.innerHTML && !dirty(region)) {
          region.replaceWith(document.importNode(next, true));
        }
      });
    }
    document.body.setAttribute("data-stamp", doc.body.getAttribute("data-stamp") || "");
    document.body.setAttribute("data-updated", String(Date.now()));
  }

  function poll(url) {
    var busy = false;
    setInterval(function () {
      if (busy || document.hidden) {
        return;
      }
      busy = true;
      fetch(url, { credentials: "same-origin", cache: "no-store" })
        .then(function (r) { return r.ok ? r.json() : null; })
        .then(function (body) {
          if (!body || body.stamp === document.body.getAttribute("data-stamp")) {
            return null;
          }
          return fetch(location.href, { credentials: "same-origin", cache: "no-store" })
            .then(function (r) { return r.ok ? r.text() : null; })
            .then(function (html) { if (html) { swap(html); } });
        })
        .catch(function () { /* the next poll retries */ })
        .then(function () { busy = false; });
    }, POLL_MS);
  }

  function launchKey() {
    var form = document.getElementById("login-form");
    if (!form || location.hash.indexOf("#key=") !== 0) {
      return;
    }
    document.getElementById("token").value = decodeURIComponent(location.hash.slice(5));
    history.replaceState(null, "", location.pathname); // the key leaves the address bar and the history
    form.submit();
  }

  function selectOnChange() {
    // the diff pickers submit themselves
    ["diff-a", "diff-b"].forEach(function (id) {
      var el = document.getElementById(id);
      if (el) {
        el.addEventListener("change", function () { el.form.submit(); });
      }
    });
  }

  document.addEventListener("DOMContentLoaded", function () {
    launchKey();
    selectOnChange();
    document.addEventListener("input", markDirty);
    document.addEventListener("submit", function (event) {
      var button = event.target.querySelector("button[type=submit]");
      if (button) { button.disabled = true; }
    });
    var live = document.body.getAttribute("data-live");
    if (live) {
      poll(live);
    }
  });
})();
