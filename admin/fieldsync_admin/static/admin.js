// Every admin page (base.html). Flask-Admin's menus ("Operations", "Data") and its list page's
// active tab are links to "javascript:void(0)", and the multi-level dropdown script it loads stops
// the click before Bootstrap's handler could prevent the link's default: the browser then tries to
// run the javascript: URL, which the Content-Security-Policy refuses (and reports as a violation).
// Prevent that default here, first (capture phase); the dropdowns' own handlers still run.
document.addEventListener('click', function (event) {
  var link = event.target && event.target.closest ? event.target.closest('a[href^="javascript:"]') : null;
  if (link) {
    event.preventDefault();
  }
}, true);
