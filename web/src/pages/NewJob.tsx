// A new job: a form (or a pasted YAML/JSON spec), a live explanation of where it could
// run and what it would cost, and the API's refusals next to the fields they name.
import type { JSX } from "preact";
import { useEffect, useMemo, useState } from "preact/hooks";
import { mutate } from "../api";
import { Card, ErrorBox, Notice } from "../components/ui";
import { bytes, credits, percent } from "../format";
import { useDebounced, useQuery } from "../hooks";
import { EXPLAIN, JOB_FORM_CHOICES, SUBMIT_JOB, type FieldError } from "../queries";
import { navigate } from "../router";
import { useClientId, useObjects } from "./Storage";

interface Form {
  name: string;
  command: string;
  inputs: Record<string, string>; // storage key -> name the job sees ("" = the key's last part)
  outputs: string;
  gpus: string;
  gpuModel: string;
  minMemoryGb: string;
  maxPrice: string;
  timeout: string;
  queue: string;
  priority: string;
  env: string;
  image: string;
  replicas: string;
}

const START: Form = {
  name: "my-job",
  command: "python3 main.py",
  inputs: {},
  outputs: "out/result.txt",
  gpus: "1",
  gpuModel: "",
  minMemoryGb: "0",
  maxPrice: "2.5",
  timeout: "10m",
  queue: "default",
  priority: "0",
  env: "",
  image: "",
  replicas: "1",
};

const EXAMPLE_SPEC = `name: hello
command: ["python3", "hello.py"]
inputs:
  - key: inputs/hello.py
  - key: inputs/input.txt
outputs: [out/result.txt]
resources: {gpus: 1}
max_price_per_gpu_hour: "2.5"
timeout: 5m
`;

/** A number when the text is one, else the text: the API then names what is wrong with it. */
function num(text: string): number | string {
  const t = text.trim();
  return /^-?\d+$/.test(t) ? Number(t) : t;
}

function specOf(f: Form): Record<string, unknown> {
  const env: Record<string, string> = {};
  for (const line of f.env.split("\n")) {
    const at = line.indexOf("=");
    if (line.trim() && at > 0) env[line.slice(0, at).trim()] = line.slice(at + 1);
  }
  const spec: Record<string, unknown> = {
    name: f.name,
    command: f.command,
    inputs: Object.entries(f.inputs).map(([key, name]) => (name.trim() ? { key, name: name.trim() } : { key })),
    outputs: f.outputs
      .split(/[\n,]/)
      .map((s) => s.trim())
      .filter(Boolean),
    resources: {
      gpus: num(f.gpus),
      ...(f.gpuModel ? { gpu_model: f.gpuModel } : {}),
      min_gpu_memory_gb: num(f.minMemoryGb),
    },
    max_price_per_gpu_hour: f.maxPrice.trim(),
    timeout: f.timeout.trim(),
    queue: f.queue,
    priority: num(f.priority),
    env,
    verification: { replicas: num(f.replicas) },
  };
  if (f.image.trim()) spec.image = f.image.trim();
  return spec;
}

type Yaml = typeof import("js-yaml");
let yaml: Promise<Yaml> | null = null;

/** Parse pasted YAML or JSON (JSON is YAML); the parser loads only when this mode is used. */
function usePasted(text: string, on: boolean): { spec: unknown; error: string | null } {
  const [out, setOut] = useState<{ spec: unknown; error: string | null }>({ spec: null, error: null });
  useEffect(() => {
    if (!on) return;
    let live = true;
    yaml ??= import("js-yaml");
    yaml.then((y) => {
      if (!live) return;
      try {
        const spec = y.load(text);
        if (spec === null || typeof spec !== "object" || Array.isArray(spec)) {
          setOut({ spec: null, error: "spec: paste a mapping of fields (name, command, resources, …)" });
        } else setOut({ spec, error: null });
      } catch (err) {
        setOut({ spec: null, error: `spec: not valid YAML or JSON: ${(err as Error).message}` });
      }
    });
    return () => {
      live = false;
    };
  }, [text, on]);
  return out;
}

function errorsFor(errors: FieldError[], ...fields: string[]): FieldError[] {
  return errors.filter((e) => fields.some((f) => e.field === f || e.field.startsWith(`${f}.`) || e.field.startsWith(`${f}[`)));
}

function FieldErrors(props: { errors: FieldError[] }): JSX.Element | null {
  if (!props.errors.length) return null;
  return (
    <ul class="field-errors">
      {props.errors.map((e) => (
        <li>
          {e.field}: {e.message}
        </li>
      ))}
    </ul>
  );
}

function Explain(props: { spec: unknown; localError: string | null }): JSX.Element {
  const key = useDebounced(JSON.stringify(props.spec), 400);
  const ready = !props.localError && props.spec !== null;
  const spec = useMemo(() => JSON.parse(key) as unknown, [key]);
  const { data, error, loading } = useQuery(EXPLAIN, { spec }, { pause: !ready || spec === null });
  const result = data?.explain;
  return (
    <Card title="Where it could run" id="explain">
      <div data-testid="explain" aria-live="polite">
        {props.localError ? <ErrorBox error={props.localError} /> : null}
        {ready && loading ? <p class="muted small">Checking with the network…</p> : null}
        <ErrorBox error={error} />
        {ready && result?.__typename === "SpecRejected" ? (
          <div class="error">
            <strong>Fix these first:</strong>
            <FieldErrors errors={result.errors} />
          </div>
        ) : null}
        {ready && result?.__typename === "Explanation" ? (
          <>
            {result.eligible.length ? (
              <Notice kind="ok">
                It can start now on {result.eligible.length} provider{result.eligible.length > 1 ? "s" : ""}. It will
                cost at most <strong data-testid="quote">{credits(result.eligible[0].quoteMicro)}</strong> credits on
                the cheapest ({result.eligible[0].providerId}); that much is held while it runs and what it does not
                use comes back.
              </Notice>
            ) : (
              <Notice kind="warn">No provider can run it right now: see why below. It would wait in the queue.</Notice>
            )}
            {result.eligible.length ? (
              <table>
                <thead>
                  <tr>
                    <th>Provider</th>
                    <th>GPUs</th>
                    <th class="num">Price / GPU-hour</th>
                    <th class="num">At most</th>
                    <th class="num">Reputation</th>
                    <th>Starts</th>
                  </tr>
                </thead>
                <tbody>
                  {result.eligible.map((o) => (
                    <tr>
                      <td>{o.providerId}</td>
                      <td>{o.gpuIndexes.join(", ")}</td>
                      <td class="num">{credits(o.pricePerGpuHourMicro)}</td>
                      <td class="num">{credits(o.quoteMicro)}</td>
                      <td class="num">{percent(o.reputation)}</td>
                      <td>{o.expectedStart}</td>
                    </tr>
                  ))}
                </tbody>
              </table>
            ) : null}
            {result.rejected.length ? (
              <>
                <h3>Not on these, and why</h3>
                <ul class="rejections" data-testid="rejections">
                  {result.rejected.map((r) => (
                    <li>
                      <strong>{r.providerId}</strong>: {r.reason}
                    </li>
                  ))}
                </ul>
              </>
            ) : null}
          </>
        ) : null}
      </div>
    </Card>
  );
}

export function NewJobPage(): JSX.Element {
  const client = useClientId();
  const [mode, setMode] = useState<"form" | "paste">("form");
  const [form, setForm] = useState<Form>(START);
  const [pasted, setPasted] = useState(EXAMPLE_SPEC);
  const [refused, setRefused] = useState<FieldError[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const { objects } = useObjects(client);
  const choices = useQuery(JOB_FORM_CHOICES, {});
  const parsed = usePasted(pasted, mode === "paste");

  const spec = mode === "form" ? specOf(form) : parsed.spec;
  const set = (patch: Partial<Form>) => setForm((f) => ({ ...f, ...patch }));
  const text = (name: keyof Form) => ({
    name,
    value: form[name] as string,
    onInput: (e: Event) => set({ [name]: (e.currentTarget as HTMLInputElement).value }),
  });

  const models = [...new Set((choices.data?.providers ?? []).flatMap((p) => p.gpus.map((g) => g.model)))].sort();
  const queues = (choices.data?.nodes ?? []).flatMap((n) => n.queues.map((q) => ({ id: `${n.nodeId}/${q.name}`, q, node: n.nodeId })));

  const submit = async (e: Event) => {
    e.preventDefault();
    if (mode === "paste" && parsed.error) return;
    setBusy(true);
    setError(null);
    setRefused([]);
    try {
      const { submitJob } = await mutate(SUBMIT_JOB, { spec });
      if (submitJob.__typename === "SpecRejected") setRefused(submitJob.errors);
      else navigate(`/client/jobs/${submitJob.job.id}`);
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };

  const fe = (...fields: string[]) => <FieldErrors errors={errorsFor(refused, ...fields)} />;

  return (
    <>
      <h1>New job</h1>
      <div class="tabs" role="tablist">
        <button type="button" role="tab" aria-selected={mode === "form"} class={mode === "form" ? "tab on" : "tab"} onClick={() => setMode("form")}>
          Fill in a form
        </button>
        <button type="button" role="tab" aria-selected={mode === "paste"} class={mode === "paste" ? "tab on" : "tab"} onClick={() => setMode("paste")}>
          Paste a job spec (YAML/JSON)
        </button>
      </div>
      <div class="split">
        <form class="card job-form" onSubmit={submit} data-testid="job-form">
          {mode === "paste" ? (
            <label>
              Job spec
              <textarea name="spec" rows={18} class="mono" spellcheck={false} value={pasted} onInput={(e) => setPasted(e.currentTarget.value)} />
              <span class="hint">
                The same spec as <code>gpgpu job submit</code> takes; inputs are keys in your files (<code>key:</code>),
                since the browser cannot read local paths.
              </span>
            </label>
          ) : (
            <>
              <label>
                Name <span class="hint">letters, digits, . _ -</span>
                <input {...text("name")} required />
                {fe("name")}
              </label>
              <label>
                Command <span class="hint">run in the job's folder, e.g. python3 train.py</span>
                <input {...text("command")} class="mono" required />
                {fe("command")}
              </label>
              <fieldset>
                <legend>Input files (from My files)</legend>
                {objects === null ? (
                  <p class="muted small">Loading your files…</p>
                ) : objects.filter((o) => !o.key.startsWith("jobs/")).length === 0 ? (
                  <p class="muted small">No files yet: upload them on “My files”.</p>
                ) : (
                  <ul class="inputs">
                    {objects
                      .filter((o) => !o.key.startsWith("jobs/"))
                      .map((o) => (
                        <li key={o.key}>
                          <label class="check">
                            <input
                              type="checkbox"
                              name="input"
                              value={o.key}
                              checked={o.key in form.inputs}
                              onChange={(e) => {
                                const inputs = { ...form.inputs };
                                if ((e.currentTarget as HTMLInputElement).checked) inputs[o.key] = "";
                                else delete inputs[o.key];
                                set({ inputs });
                              }}
                            />
                            <span class="mono">{o.key}</span> <span class="muted small">{bytes(o.size)}</span>
                          </label>
                          {o.key in form.inputs ? (
                            <input
                              class="mono small-input"
                              aria-label={`Name the job sees for ${o.key}`}
                              placeholder={`seen as ${o.key.split("/").pop()}`}
                              value={form.inputs[o.key]}
                              onInput={(e) => set({ inputs: { ...form.inputs, [o.key]: e.currentTarget.value } })}
                            />
                          ) : null}
                        </li>
                      ))}
                  </ul>
                )}
                {fe("inputs")}
              </fieldset>
              <label>
                Output files <span class="hint">paths the job writes, one a line; you can download them after</span>
                <textarea {...text("outputs")} rows={2} class="mono" />
                {fe("outputs")}
              </label>
              <div class="row">
                <label>
                  GPUs
                  <input {...text("gpus")} inputMode="numeric" size={4} />
                  {fe("resources.gpus")}
                </label>
                <label>
                  GPU model
                  <select name="gpuModel" value={form.gpuModel} onChange={(e) => set({ gpuModel: e.currentTarget.value })}>
                    <option value="">any</option>
                    {models.map((m) => (
                      <option value={m}>{m}</option>
                    ))}
                  </select>
                  {fe("resources.gpu_model")}
                </label>
                <label>
                  At least GB of GPU memory
                  <input {...text("minMemoryGb")} inputMode="numeric" size={5} />
                  {fe("resources.min_gpu_memory_gb")}
                </label>
              </div>
              {fe("resources")}
              <div class="row">
                <label>
                  Most you pay per GPU-hour (credits)
                  <input {...text("maxPrice")} inputMode="decimal" size={8} />
                  {fe("max_price_per_gpu_hour")}
                </label>
                <label>
                  Time limit <span class="hint">90s, 10m, 2h</span>
                  <input {...text("timeout")} size={6} />
                  {fe("timeout")}
                </label>
              </div>
              <div class="row">
                <label>
                  Queue
                  <select name="queue" value={form.queue} onChange={(e) => set({ queue: e.currentTarget.value })}>
                    <option value="default">default</option>
                    {queues.map(({ id, q }) => (
                      <option value={id}>
                        {id} {q.gpuModels.length ? `(${q.gpuModels.join(", ")})` : "(any GPU)"}
                      </option>
                    ))}
                  </select>
                  {fe("queue")}
                </label>
                <label>
                  Priority <span class="hint">0 is lowest</span>
                  <input {...text("priority")} inputMode="numeric" size={3} />
                  {fe("priority")}
                </label>
                <label>
                  Run on this many providers <span class="hint">results must agree</span>
                  <input {...text("replicas")} inputMode="numeric" size={3} />
                  {fe("verification")}
                </label>
              </div>
              <details>
                <summary>More: environment, container image</summary>
                <label>
                  Environment <span class="hint">NAME=value, one a line</span>
                  <textarea {...text("env")} rows={2} class="mono" />
                  {fe("env")}
                </label>
                <label>
                  Container image <span class="hint">optional; only providers running Docker take it</span>
                  <input {...text("image")} class="mono" placeholder="python:3.11-slim" />
                  {fe("image")}
                </label>
              </details>
            </>
          )}
          {refused.length ? (
            <div class="error" role="alert" data-testid="refused">
              <strong>The network refused this job:</strong>
              <FieldErrors errors={refused} />
            </div>
          ) : null}
          <ErrorBox error={error} />
          <button class="primary big" type="submit" disabled={busy || (mode === "paste" && !!parsed.error)}>
            {busy ? "Submitting…" : "Submit job"}
          </button>
        </form>
        <Explain spec={spec} localError={mode === "paste" ? parsed.error : null} />
      </div>
    </>
  );
}
