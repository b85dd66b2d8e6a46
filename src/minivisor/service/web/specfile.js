// A VM's specfile as text (GET/PUT /v1/vms/{name}/specfile): edited while it is powered off, saved as typed, and
// what the service refuses shown next to the editor with the line it is about (that line marked in the gutter).

import {api, vmPath} from "./api.js";
import {el} from "./dom.js";

// {vm, stamp, loaded (the text as read or saved), saves and saved (how many began, ended), text, gutter, status,
// error}
let editor = null;

export async function show(vm, box) {
  let read;
  try {
    read = await api("GET", vmPath(vm, "/specfile"));
  } catch (e) {
    box.replaceChildren(el("span", {class: "error", role: "alert", text: "Specfile: " + e.message}));
    return;
  }
  draw(vm, box, read);
}

function draw(vm, box, read) {
  const text = el("textarea", {id: "specfile-text", spellcheck: "false", wrap: "off", "aria-label": "specfile"});
  text.value = read.text;  // a textarea's value has "\n" line breaks whatever the text had
  const gutter = el("pre", {id: "specfile-lines", "aria-hidden": "true"});
  const status = el("span", {id: "specfile-status", role: "status"});
  const error = el("span", {id: "specfile-error", class: "error", role: "alert"});
  editor = {vm, stamp: read.stamp, loaded: text.value, newline: lineBreak(read.text), saves: 0, saved: 0, text, gutter,
            status, error};
  text.addEventListener("input", () => number(null));
  text.addEventListener("scroll", () => { gutter.scrollTop = text.scrollTop; });
  const save = el("button", {text: "Save", dataset: {action: "save-specfile", vm}, onclick: () => saveFrom(editor, save)});
  box.replaceChildren(el("div", {class: "specfile"}, gutter, text), el("div", {}, save, status), error);
  number(null);
}

// Something happened to the VM: a file changed elsewhere is shown, unless the user has typed into this one, or
// saved it meanwhile (what was read before a save may be older than the save), checked when it is drawn.
export async function refresh(vm, box) {
  if (!editor || editor.vm !== vm || editor.text.value !== editor.loaded || editor.saves !== editor.saved) return;
  const {saves} = editor;
  const read = await api("GET", vmPath(vm, "/specfile")).catch(() => null);
  if (read && editor.vm === vm && editor.saves === saves && read.stamp !== editor.stamp &&
      editor.text.value === editor.loaded) draw(vm, box, read);
}

// The line break a file uses (its first one; VMware writes "\r\n" on Windows), which a save writes back.
function lineBreak(text) {
  const first = text.indexOf("\n");
  return first > 0 && text[first - 1] === "\r" ? "\r\n" : "\n";
}

// Line numbers beside the text; the line an error is about is marked.
function number(errorLine) {
  const count = editor.text.value.split("\n").length;
  editor.gutter.replaceChildren(...Array.from({length: count}, (_, i) =>
    el("span", {text: String(i + 1), ...(i + 1 === errorLine ? {class: "error-line"} : {})})));
  editor.gutter.scrollTop = editor.text.scrollTop;
}

async function saveFrom(state, button) {
  state.saves += 1;
  state.error.textContent = "";
  delete state.error.dataset.line;
  state.status.textContent = "";
  button.disabled = true;
  try {
    const text = state.text.value.replace(/\r?\n/g, state.newline);  // the file's own line breaks, as it had them
    const saved = await api("PUT", vmPath(state.vm, "/specfile"), {text, stamp: state.stamp});
    state.stamp = saved.stamp;
    state.loaded = state.text.value;
    state.status.textContent = "Saved." + (saved.warnings.length ? " Power-on will say: " + saved.warnings.join("; ") : "");
    number(null);
  } catch (e) {
    const line = e.details.line;
    state.error.textContent = (line ? "Line " + line + ": " : "") + e.message;
    if (line) {
      state.error.dataset.line = String(line);
      selectLine(state.text, line);
    }
    number(line || null);
  } finally {
    button.disabled = false;
    state.saved += 1;
  }
}

function selectLine(text, line) {
  const lines = text.value.split("\n");
  const start = lines.slice(0, line - 1).reduce((sum, l) => sum + l.length + 1, 0);
  text.focus();
  text.setSelectionRange(start, start + (lines[line - 1] || "").length);
}
