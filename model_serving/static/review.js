// The review page: one key press (or click) per item, each label POSTed to /labels at once (in order, in the
// background, so a fast reviewer never waits); the queue, photos and model inputs come with the review token.
(function () {
  "use strict";

  const CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
    "Ankle boot"];
  const EXTRA = [["o", "other", "Not one of the 10"], ["u", "unusable", "Unusable photo"]];
  const $ = (id) => document.getElementById(id);
  const state = { token: "", who: "", items: [], index: 0, night: null, urls: [], chain: Promise.resolve(), saved: 0,
    failed: 0 };

  function headers(extra) {
    return Object.assign({ Authorization: "Bearer " + state.token }, extra || {});
  }

  function uuid() {
    if (window.crypto && crypto.randomUUID) return crypto.randomUUID();
    return Date.now().toString(36) + "-" + Math.random().toString(36).slice(2);
  }

  async function getJson(url) {
    const resp = await fetch(url, { headers: headers() });
    const body = await resp.json().catch(() => ({}));
    if (!resp.ok) throw new Error(body.message || resp.status + " " + resp.statusText);
    return body;
  }

  async function blobUrl(url) {
    const resp = await fetch(url, { headers: headers() });
    if (!resp.ok) return "";
    const made = URL.createObjectURL(await resp.blob());
    state.urls.push(made);
    return made;
  }

  function status(text) {
    $("review-status").textContent = text;
  }

  function progress() {
    const done = state.items.filter((it) => it.label).length;
    const total = state.items.length;
    $("progress-bar").style.width = total ? (100 * done / total).toFixed(1) + "%" : "0";
    $("progress-text").textContent = total ? done + " of " + total + " labelled" +
      (state.failed ? " · " + state.failed + " not saved" : "") : "";
    $("progress-text").dataset.done = String(done);
    $("progress-text").dataset.saved = String(state.saved);
  }

  async function load(night) {
    const q = night ? "?night=" + encodeURIComponent(night) : "";
    const body = await getJson("/review/queue" + q);
    state.items = body.items || [];
    state.night = body.night;
    const select = $("night-select");
    select.innerHTML = "";
    for (const name of (body.nights || []).slice().reverse()) {
      const opt = document.createElement("option");
      opt.value = opt.textContent = name;
      if (body.night && name === body.night.name) opt.selected = true;
      select.appendChild(opt);
    }
    if (!body.night) {
      status("No finished night yet: the nightly job has not written a review queue.");
      $("item").hidden = true;
      return;
    }
    $("night-title").textContent = "Night " + body.night.date + " · model v" + body.night.model_version;
    const review = state.items.filter((it) => it.source === "review").length;
    status(review + " doubtful item(s) and " + (state.items.length - review) + " audit item(s): the audit sample " +
      "is a random pick of what the model routed alone, so its labels measure the model's accuracy.");
    const first = state.items.findIndex((it) => !it.label);
    state.index = first >= 0 ? first : 0;
    progress();
    show();
  }

  async function show() {
    const it = state.items[state.index];
    $("item").hidden = !it;
    if (!it) return;
    for (const u of state.urls.splice(0)) URL.revokeObjectURL(u);
    $("item-title").textContent = "Item " + (state.index + 1) + " of " + state.items.length;
    $("item").dataset.key = it.key;
    $("item-source").textContent = it.source === "audit" ? "audit sample" : "review queue";
    $("item-source").className = "pill " + (it.source === "audit" ? "pill-ok" : "pill-warn");
    $("item-class").textContent = it.class_name;
    $("item-confidence").textContent = (100 * it.confidence).toFixed(1) + " % confident";
    const top3 = $("item-top3");
    top3.innerHTML = "";
    for (const t of it.top3 || []) {
      const li = document.createElement("li");
      li.textContent = t.class_name + " · " + (100 * t.confidence).toFixed(1) + " %";
      top3.appendChild(li);
    }
    $("item-label").textContent = it.label || "none";
    for (const b of $("choices").querySelectorAll("button")) b.classList.toggle("chosen", b.dataset.value === it.label);
    const key = encodeURIComponent(it.key);
    const shown = state.index;
    const [photo, input] = await Promise.all([blobUrl("/review/photo?key=" + key), blobUrl("/review/input?key=" + key)]);
    if (shown !== state.index) return; // moved on meanwhile
    $("item-photo").src = photo;
    $("item-input").src = input;
  }

  function move(step) {
    const next = state.index + step;
    if (next >= 0 && next < state.items.length) {
      state.index = next;
      show();
    }
  }

  function label(value) {
    const it = state.items[state.index];
    if (!it) return;
    const before = it.label;
    it.label = value;
    progress();
    const body = JSON.stringify({ labels: [{ key: it.key, sha256: it.sha256, label: value }], who: state.who,
      how: "review-page", idempotency_key: uuid() });
    // Saved in order, in the background: the reviewer moves on at once.
    state.chain = state.chain.then(async () => {
      try {
        const resp = await fetch("/labels", { method: "POST", headers: headers({ "Content-Type": "application/json" }),
          body });
        const answer = await resp.json().catch(() => ({}));
        if (!resp.ok || !answer.accepted) {
          const why = (answer.rejected && answer.rejected[0] && answer.rejected[0].message) || answer.message ||
            resp.status;
          throw new Error(why);
        }
        state.saved += 1;
        $("item-feedback").textContent = "Saved: " + value;
      } catch (err) {
        it.label = before;
        state.failed += 1;
        $("item-feedback").textContent = "Not saved (" + it.key + "): " + (err.message || err);
      }
      progress();
    });
    const next = state.items.findIndex((x, i) => i > state.index && !x.label);
    if (next >= 0) {
      state.index = next;
      show();
    } else {
      show();
      status("Every item of this night is labelled. Thank you!");
    }
  }

  function buildChoices() {
    const box = $("choices");
    CLASS_NAMES.forEach((name, i) => box.appendChild(choice(String(i), name, name)));
    for (const [keyName, value, text] of EXTRA) box.appendChild(choice(keyName, value, text));
  }

  function choice(keyName, value, text) {
    const b = document.createElement("button");
    b.type = "button";
    b.dataset.value = value;
    b.innerHTML = "<kbd></kbd><span></span>";
    b.querySelector("kbd").textContent = keyName;
    b.querySelector("span").textContent = text;
    b.addEventListener("click", () => label(value));
    return b;
  }

  function onKey(e) {
    if (e.target && (e.target.tagName === "INPUT" || e.target.tagName === "SELECT") || e.ctrlKey || e.metaKey ||
        e.altKey || $("item").hidden) return;
    const it = state.items[state.index];
    let handled = true;
    if (/^[0-9]$/.test(e.key)) label(CLASS_NAMES[Number(e.key)]);
    else if (e.key === "Enter" && it) label(it.class_name);
    else if (e.key === "o") label("other");
    else if (e.key === "u") label("unusable");
    else if (e.key === "ArrowRight" || e.key === "j") move(1);
    else if (e.key === "ArrowLeft" || e.key === "k") move(-1);
    else handled = false;
    if (handled) e.preventDefault();
  }

  async function open(e) {
    if (e) e.preventDefault();
    state.token = $("token").value.trim();
    state.who = $("who").value.trim() || "reviewer";
    sessionStorage.setItem("ric-review-token", state.token);
    localStorage.setItem("ric-review-who", state.who);
    try {
      await load(null);
      $("token").blur();
      document.body.focus();
    } catch (err) {
      status("Cannot load the queue: " + (err.message || err));
    }
  }

  function start() {
    buildChoices();
    $("token").value = sessionStorage.getItem("ric-review-token") || "";
    $("who").value = localStorage.getItem("ric-review-who") || "";
    $("login").addEventListener("submit", open);
    $("night-select").addEventListener("change", (e) => load(e.target.value).catch((err) => status(String(err))));
    document.addEventListener("keydown", onKey);
    if ($("token").value) open();
  }

  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", start);
  else start();
})();
