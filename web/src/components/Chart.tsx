// A line chart of recent samples (uPlot, loaded only when a chart is first shown).
import type { JSX } from "preact";
import { useEffect, useRef, useState } from "preact/hooks";
import type uPlotType from "uplot";

type UPlot = typeof uPlotType;
let loading: Promise<UPlot> | null = null;

function loadUPlot(): Promise<UPlot> {
  loading ??= Promise.all([import("uplot"), import("uplot/dist/uPlot.min.css")]).then(
    ([mod]) => mod.default,
  );
  return loading;
}

const COLOURS = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2", "#4b5563", "#ca8a04"];

export interface Series {
  label: string;
  values: (number | null)[];
}

export function Chart(props: {
  title: string;
  unit: string;
  times: number[]; // unix seconds
  series: Series[];
  max?: number;
  testid?: string;
}): JSX.Element {
  const box = useRef<HTMLDivElement>(null);
  const plot = useRef<uPlotType | null>(null);
  const shape = useRef("");
  const [failed, setFailed] = useState<string | null>(null);

  const empty = props.times.length === 0 || props.series.every((s) => s.values.every((v) => v === null));

  useEffect(() => {
    if (empty) {
      plot.current?.destroy();
      plot.current = null;
      shape.current = "";
      return;
    }
    let live = true;
    loadUPlot()
      .then((UPlot) => {
        if (!live || !box.current) return;
        const data: uPlotType.AlignedData = [props.times, ...props.series.map((s) => props.times.map((_, i) => s.values[i] ?? null))];
        const key = props.series.map((s) => s.label).join("|");
        if (plot.current && shape.current === key) {
          plot.current.setData(data);
          return;
        }
        plot.current?.destroy();
        shape.current = key;
        const width = Math.max(260, box.current.clientWidth || 320);
        plot.current = new UPlot(
          {
            width,
            height: 160,
            legend: { show: true },
            scales: { y: props.max ? { range: [0, props.max] } : { range: (_u, _lo, hi) => [0, Math.max(1, hi * 1.1)] } },
            axes: [{}, { values: (_u, ticks) => ticks.map((t) => `${t} ${props.unit}`), size: 60 }],
            series: [
              {},
              ...props.series.map((s, i) => ({ label: s.label, stroke: COLOURS[i % COLOURS.length], width: 2, spanGaps: true })),
            ],
          },
          data,
          box.current,
        );
      })
      .catch((err: unknown) => setFailed(String(err)));
    return () => {
      live = false;
    };
  }, [props.times, props.series, props.max, props.unit, empty]);

  useEffect(() => () => plot.current?.destroy(), []);

  return (
    <figure class="chart" data-testid={props.testid}>
      <figcaption>{props.title}</figcaption>
      {props.times.length === 0 ? (
        <p class="muted small">No readings yet: they come with each heartbeat.</p>
      ) : empty ? (
        <p class="muted small">These GPUs do not report this (declared, simulated GPUs report only utilisation).</p>
      ) : null}
      {failed ? <p class="error">The chart could not load: {failed}</p> : null}
      <div ref={box} class="chart-box" />
    </figure>
  );
}
