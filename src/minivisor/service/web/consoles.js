// A VM's consoles in the page: the serial console in xterm.js, the screen in noVNC. Each opens a websocket with a
// single-use ticket that an API call minted for this VM (the service bridges it to the VM's own UNIX socket).

import {api, vmPath} from "./api.js";
import {el} from "./dom.js";

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
  box.append(screen);
  let url;
  try { url = await consoleSocket(vm, "vnc"); } catch (e) { fail("Screen: " + e.message); return; }
  const {default: RFB} = await import("/vendor/novnc/core/rfb.js");
  const rfb = new RFB(screen, url, {wsProtocols: ["binary"]});
  rfb.scaleViewport = true;
  rfb.addEventListener("connect", () => say("Connected to the screen of " + vm + "."));
  rfb.addEventListener("disconnect", (e) => say(e.detail.clean ? "Disconnected." : "The connection to the screen was lost."));
  closeCurrent = () => rfb.disconnect();
}
