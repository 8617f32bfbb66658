// The unimm page: plain JS over the same OpenAI-compatible endpoints clients use. No CDN.
"use strict";
const $ = (id) => document.getElementById(id);
let current = null;          // data URL of the image questions are about
let messages = [];           // the chat so far, in the OpenAI format

function status(text) { $("status").textContent = text || ""; }

function setCurrent(url) { current = url; $("current-img").src = url; }

function log(role, text, images) {
  const li = document.createElement("li");
  li.className = role;
  const who = document.createElement("b");
  who.textContent = role === "user" ? "you: " : role === "error" ? "error: " : "unimm: ";
  li.appendChild(who);
  li.appendChild(document.createTextNode(text || ""));
  for (const url of images || []) {
    const img = document.createElement("img");
    img.src = url;
    img.className = "result";
    img.title = "click to ask about this image";
    img.onclick = () => setCurrent(url);
    li.appendChild(document.createElement("br"));
    li.appendChild(img);
  }
  $("log").appendChild(li);
  li.scrollIntoView({ block: "nearest" });
  return li;
}

async function call(url, options) {
  const r = await fetch(url, options);
  if (!r.ok) {
    let msg = r.status + " " + r.statusText;
    try { msg = (await r.json()).error.message; } catch (e) { /* not JSON */ }
    throw new Error(msg);
  }
  return r;
}

async function busy(button, work) {
  button.disabled = true; status("working…");
  try { await work(); status(""); }
  catch (e) { log("error", e.message); status(e.message); }
  finally { button.disabled = false; }
}

$("upload").addEventListener("change", () => {
  const file = $("upload").files[0];
  if (!file) return;
  const reader = new FileReader();
  reader.onload = () => { setCurrent(reader.result); log("user", "uploaded " + file.name, [reader.result]); };
  reader.readAsDataURL(file);
});

$("ask-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const q = $("question").value.trim();
  if (!q) { status("type a question"); return; }
  if (!current) { status("upload or generate an image first"); return; }
  busy($("ask"), async () => {
    // The image rides with each question; the server reads the latest image in the conversation.
    messages.push({ role: "user", content: [{ type: "text", text: q },
                                            { type: "image_url", image_url: { url: current } }] });
    log("user", q);
    const li = log("assistant", "");
    const r = await call("/v1/chat/completions", { method: "POST",
      headers: { "Content-Type": "application/json" },
      body: JSON.stringify({ messages: messages.slice(-8), stream: true }) });
    // Server-sent events: data: {chunk} lines, then data: [DONE].
    const reader = r.body.getReader(), dec = new TextDecoder();
    let buf = "", answer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buf += dec.decode(value, { stream: true });
      let cut;
      while ((cut = buf.indexOf("\n\n")) >= 0) {
        const line = buf.slice(0, cut).trim(); buf = buf.slice(cut + 2);
        if (!line.startsWith("data: ") || line === "data: [DONE]") continue;
        const ev = JSON.parse(line.slice(6));
        if (ev.error) throw new Error(ev.error.message);
        answer += ev.choices[0].delta.content || "";
        li.lastChild.textContent = answer;
      }
    }
    li.classList.add("answer");
    messages.push({ role: "assistant", content: answer });
    $("question").value = "";
  });
});

$("gen-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const prompt = $("prompt").value.trim();
  if (!prompt) { status("type a prompt"); return; }
  busy($("generate"), async () => {
    const body = { prompt, n: parseInt($("n").value || "1", 10) };
    if ($("seed").value !== "") body.seed = parseInt($("seed").value, 10);
    log("user", "draw: " + prompt);
    const r = await call("/v1/images/generations", { method: "POST",
      headers: { "Content-Type": "application/json" }, body: JSON.stringify(body) });
    const urls = (await r.json()).data.map((d) => "data:image/png;base64," + d.b64_json);
    log("assistant", urls.length + " image(s)", urls);
    setCurrent(urls[0]);
  });
});

$("edit-form").addEventListener("submit", (ev) => {
  ev.preventDefault();
  const instruction = $("instruction").value.trim();
  if (!instruction) { status("type an instruction"); return; }
  if (!current) { status("upload or generate an image first"); return; }
  busy($("edit"), async () => {
    const blob = await (await fetch(current)).blob();
    const form = new FormData();
    form.append("image", blob, "image.png");
    form.append("prompt", instruction);
    log("user", "edit: " + instruction);
    const r = await call("/v1/images/edits", { method: "POST", body: form });
    const urls = (await r.json()).data.map((d) => "data:image/png;base64," + d.b64_json);
    log("assistant", "edited", urls);
    setCurrent(urls[0]);
  });
});

fetch("/v1/models").then((r) => r.json())
  .then((m) => { $("model").textContent = m.data[0].id; })
  .catch(() => { $("model").textContent = "(server unreachable)"; });
