// A VM's graphs: CPU, memory, disk and network over the last minutes, from /v1/metrics, sampled while the tab is
// open (uPlot draws them).

import {api} from "./api.js";
import {el} from "./dom.js";

const EVERY = 2000;  // ms between samples
const KEEP = 150;  // samples: five minutes
let timer = null;

const sum = (items, key) => Object.values(items || {}).reduce((total, item) => total + (item[key] || 0), 0);

// What each chart shows, from two samples of the VM's metrics (a rate needs the one before)
const CHARTS = [
  ["cpu", "CPU (% of one host CPU)", (now, before, dt) => 100 * (now.cpu_seconds - before.cpu_seconds) / dt],
  ["memory", "Memory in use (MiB)", (now) => (now.memory_rss_bytes || 0) / 1048576],
  ["disk", "Disk (KiB/s read + written)",
   (now, before, dt) => (sum(now.disks, "read_bytes") + sum(now.disks, "write_bytes") -
                         sum(before.disks, "read_bytes") - sum(before.disks, "write_bytes")) / 1024 / dt],
  ["network", "Network (KiB/s received + sent)",
   (now, before, dt) => (sum(now.nics, "received_bytes") + sum(now.nics, "sent_bytes") -
                         sum(before.nics, "received_bytes") - sum(before.nics, "sent_bytes")) / 1024 / dt],
];

export function close() { clearInterval(timer); timer = null; }

export async function show(vm, box) {
  close();
  const {default: UPlot} = await import("/vendor/uplot/dist/uPlot.esm.js");
  const error = el("span", {class: "error", role: "alert"});
  const times = [];
  const series = CHARTS.map(() => []);
  const plots = CHARTS.map(([key, title]) => {
    const holder = el("div", {class: "graph", dataset: {graph: key}});
    box.append(holder);
    return new UPlot({title, width: 560, height: 170, series: [{}, {label: title, stroke: "#06a", width: 1.5}],
                      axes: [{}, {size: 60}]}, [times, []], holder);
  });
  box.append(error);
  let before = null;
  const sample = async () => {
    let metrics;
    try { metrics = await api("GET", "/v1/metrics"); } catch (e) { error.textContent = "Graphs: " + e.message; return; }
    const now = metrics.vms[vm];
    error.textContent = now ? "" : vm + " is not running: nothing to measure.";
    if (!now) { before = null; return; }
    now.time = metrics.host.time;
    if (before) {
      const dt = Math.max(now.time - before.time, 0.001);
      times.push(now.time);
      CHARTS.forEach(([, , value], i) => series[i].push(Math.max(0, value(now, before, dt))));
      if (times.length > KEEP) { times.shift(); series.forEach((s) => s.shift()); }
      plots.forEach((plot, i) => plot.setData([times, series[i]]));
      box.dataset.samples = String(times.length);
      box.dataset.memoryMib = String(series[1][series[1].length - 1]);
    }
    before = now;
  };
  await sample();
  timer = setInterval(sample, EVERY);
}
