// A VM's consoles in the page: the serial console in xterm.js, the screen in noVNC. Each opens a websocket with a
// single-use ticket that an API call minted for this VM (the service bridges it to the VM's own UNIX socket).

import {api, vmPath} from "./api.js";
import {el} from "./dom.js";
import {actionButton} from "./main.js";

async function consoleSocket(vm, console) {
  const {ticket, path} = await api("POST", vmPath(vm, "/consoles/" + console + "/ticket"));
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return scheme + "//" + location.host + path + "?ticket=" + encodeURIComponent(ticket);
}

function statusLine(box) {
  const status = el("p", {class: "console-status"});
  const error = el("span", {class: "error", role: "alert"});
  box.append(status, error);
  return {say: (text) => { status.textContent = text; }, fail: (text) => { error.textContent = text; }};
}

let closeCurrent = () => {};

export function close() { closeCurrent(); closeCurrent = () => {}; }

export async function showSerial(vm, box) {
  close();
  const {say, fail} = statusLine(box);
  const screen = el("div", {class: "terminal-box", id: "serial"});
  box.append(screen);
  const terminal = new window.Terminal({convertEol: false, cursorBlink: true, fontSize: 14, rows: 24, cols: 100});
  terminal.open(screen);
  let url;
  try { url = await consoleSocket(vm, "serial"); } catch (e) { fail("Serial console: " + e.message); return; }
  if (!box.isConnected) { terminal.dispose(); return; }  // another tab was opened meanwhile
  const socket = new WebSocket(url);
  socket.binaryType = "arraybuffer";
  socket.onopen = () => { say("Connected to the serial console of " + vm + " (press Enter for a prompt)."); terminal.focus(); };
  socket.onmessage = (event) => terminal.write(new Uint8Array(event.data));
  socket.onclose = (event) => say("Disconnected" + (event.reason ? ": " + event.reason : "") + ".");
  const typed = terminal.onData((data) => { if (socket.readyState === WebSocket.OPEN) socket.send(new TextEncoder().encode(data)); });
  closeCurrent = () => { typed.dispose(); socket.close(); terminal.dispose(); };
}

export async function showScreen(vm, box) {
  close();
  const {say, fail} = statusLine(box);
  const screen = el("div", {class: "screen-box", id: "screen"});
  box.append(await cdromBar(vm), screen);
  let url;
  try { url = await consoleSocket(vm, "vnc"); } catch (e) { fail("Screen: " + e.message); return; }
  const {default: RFB} = await import("/vendor/novnc/core/rfb.js");
  if (!box.isConnected) return;  // another tab was opened meanwhile
  const rfb = new RFB(screen, url, {wsProtocols: ["binary"]});
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => say("Connected to the screen of " + vm + "."));
  rfb.addEventListener("disconnect", (e) => say(e.detail.clean ? "Disconnected." : "The connection to the screen was lost."));
  closeCurrent = () => rfb.disconnect();
}

// The CD-ROM from the screen's view: insert an ISO of the VM's own folder (a VM opens only files there: upload
// one into it in the datastore browser), or eject it (a running guest sees the tray open and close), so an OS
// installs from an ISO entirely in the browser.
export async function cdromBar(vm) {
  const choice = el("select", {id: "cdrom-image"});
  try {
    const listing = await api("GET", "/v1/datastore/files?folder=" + encodeURIComponent(JSON.stringify(vm)));
    for (const entry of listing.entries.filter((e) => e.kind === "file" && /\.iso$/i.test(e.name))) {
      choice.append(el("option", {value: listing.path + "/" + entry.name, text: entry.name}));
    }
  } catch { /* no iso folder yet: upload one in the datastore browser */ }
  const insert = actionButton("Insert CD", "cdrom-insert", vm,
                              () => api("POST", vmPath(vm, "/cdrom"), {image: choice.value}));
  const eject = actionButton("Eject CD", "cdrom-eject", vm, () => api("POST", vmPath(vm, "/cdrom"), {}));
  return el("p", {class: "cdrom"}, "CD-ROM: ", choice, " ", insert, " ", eject, el("span", {class: "error", role: "alert"}));
}
