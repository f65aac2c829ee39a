/* What every slidenet page's script shares, as window.slidenet: $ (an element by id), el (a new
   element with properties and children), fmt (a number to fixed decimals, never "-0.000") and
   call (fetch JSON from this page's server; a refusal throws an Error with the server's
   sentence as its message and its JSON body as `.body`; options.wait, in seconds, bounds how
   long it waits for the answer). Load it before the page's scripts. */
"use strict";

window.slidenet = (function () {
  const $ = (id) => document.getElementById(id);

  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [key, value] of Object.entries(props || {})) {
      if (key === "class") node.className = value;
      else if (key === "text") node.textContent = value;
      else if (key.startsWith("data-")) node.setAttribute(key, value);
      else node[key] = value;
    }
    for (const child of children) if (child !== null && child !== undefined) node.append(child);
    return node;
  }

  function fmt(value, digits = 4) {
    const text = Number(value).toFixed(digits);
    return /^-0\.?0*$/.test(text) ? text.slice(1) : text;   // no "-0.0000"
  }

  async function call(url, options = {}) {
    const { wait, ...init } = options;
    // `wait` (seconds): give up on an answer that takes longer, so that a page waiting on it
    // is never stuck; the Error says so.
    const timer = wait ? new AbortController() : null;
    const alarm = timer ? setTimeout(() => timer.abort(), wait * 1000) : null;
    if (timer) init.signal = timer.signal;
    const unanswered = (err) => new Error(timer && timer.signal.aborted
      ? `the server did not answer within ${wait} s; it may be busy, or stopped: try again`
      : `the server did not answer (${err.message}); is slidenet still running?`);
    try {
      let response;
      try {
        response = await fetch(url, init);
      } catch (err) {
        throw unanswered(err);
      }
      let body = null;
      try {
        body = await response.json();
      } catch (err) {
        if (timer && timer.signal.aborted) throw unanswered(err);
        body = null;            // not JSON: the status line says what went wrong
      }
      if (!response.ok) {
        const error = new Error((body && body.error) || `the server answered ${response.status}`);
        error.body = body;
        throw error;
      }
      return body;
    } finally {
      clearTimeout(alarm);
    }
  }

  return { $, el, fmt, call };
})();
