// A small SVG line chart: a window of the last `capacity` polls (at least a minute wide),
// newest on the right, one line per series; a null value leaves a gap. No library: a few
// paths and labels.

const SVG = "http://www.w3.org/2000/svg";
const WIDTH = 480;
const HEIGHT = 170;
const PAD = { left: 52, right: 10, top: 10, bottom: 22 };

function svg(tag, attributes = {}, text = undefined) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== undefined) node.textContent = text;
  return node;
}

/** The smallest of 1, 2, 2.5, 5 × 10^n at or above `value` (an axis that reads well). */
function niceMax(value) {
  if (!(value > 0)) return 1;
  const magnitude = 10 ** Math.floor(Math.log10(value));
  for (const step of [1, 2, 2.5, 5, 10]) if (step * magnitude >= value) return step * magnitude;
  return 10 * magnitude;
}

export class LineChart {
  /**
   * @param container element the chart is drawn in
   * @param series [{label, cls}]: one line each (cls colours it, see console.css)
   * @param options {format(value): string, max: fixed top of the axis or null, capacity,
   *   seconds: seconds between polls (labels the time axis)}
   */
  constructor(container, series, options = {}) {
    this.container = container;
    this.series = series;
    this.format = options.format || ((v) => String(v));
    this.max = options.max ?? null;
    this.capacity = options.capacity || 150;
    this.seconds = options.seconds || 2;
    this.points = [];
    this.root = svg("svg", {
      viewBox: `0 0 ${WIDTH} ${HEIGHT}`,
      role: "img",
      "aria-label": series.map((s) => s.label).join(", "),
    });
    this.legend = document.createElement("p");
    this.legend.className = "legend";
    container.replaceChildren(this.root, this.legend);
    this.render();
  }

  /** Adds one poll: a value (or null) per series, in the order of `series`. */
  push(values) {
    this.points.push(values);
    if (this.points.length > this.capacity) this.points.shift();
    this.render();
  }

  clear() {
    this.points = [];
    this.render();
  }

  render() {
    const plotW = WIDTH - PAD.left - PAD.right;
    const plotH = HEIGHT - PAD.top - PAD.bottom;
    const seen = this.points.flat().filter((v) => v !== null && Number.isFinite(v));
    const top = this.max ?? niceMax(Math.max(0, ...seen));
    // The window grows from one minute to `capacity` polls, newest on the right.
    const slots = Math.min(this.capacity, Math.max(this.points.length, Math.ceil(60 / this.seconds)));
    const x = (i) => PAD.left + ((slots - this.points.length + i) / Math.max(slots - 1, 1)) * plotW;
    const y = (v) => PAD.top + plotH - (Math.min(v, top) / top) * plotH;
    const nodes = [];
    for (const fraction of [0, 0.5, 1]) {
      const at = y(top * fraction);
      nodes.push(svg("line", { x1: PAD.left, x2: WIDTH - PAD.right, y1: at, y2: at, class: "grid" }));
      nodes.push(svg("text", { x: PAD.left - 6, y: at + 4, class: "axis", "text-anchor": "end" }, this.format(top * fraction)));
    }
    const span = Math.round(((slots - 1) * this.seconds) / 60);
    nodes.push(svg("text", { x: PAD.left, y: HEIGHT - 4, class: "axis" }, `−${Math.max(span, 1)} min`));
    nodes.push(svg("text", { x: WIDTH - PAD.right, y: HEIGHT - 4, class: "axis", "text-anchor": "end" }, "now"));
    this.series.forEach((serie, s) => {
      let d = "";
      let open = false;
      let last = null;
      this.points.forEach((values, i) => {
        const v = values[s];
        if (v === null || v === undefined || !Number.isFinite(v)) {
          open = false;
          return;
        }
        d += `${open ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`;
        open = true;
        last = [x(i), y(v)];
      });
      if (d) nodes.push(svg("path", { d, class: `line ${serie.cls}` }));
      if (last) nodes.push(svg("circle", { cx: last[0], cy: last[1], r: 2.5, class: `dot ${serie.cls}` }));
    });
    this.root.replaceChildren(...nodes);
    const latest = this.points.at(-1) || [];
    this.legend.replaceChildren(
      ...this.series.map((serie, s) => {
        const item = document.createElement("span");
        item.className = `key ${serie.cls}`;
        const v = latest[s];
        item.textContent = `${serie.label} ${v === null || v === undefined ? "–" : this.format(v)}`;
        return item;
      }),
    );
  }
}
