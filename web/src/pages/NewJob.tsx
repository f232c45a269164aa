// A new job: a form (or a pasted YAML/JSON spec), a live explanation of where it could
// run and what it would cost, and the API's refusals next to the fields they name.
import type { JSX } from "preact";
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { mutate } from "../api";
import { Card, ErrorBox, Notice, TableWrap } from "../components/ui";
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
  isolation: string; // "any" | "full"
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
  isolation: "any",
  maxPrice: "2.5",
  timeout: "10m",
  queue: "default",
  priority: "0",
  env: "",
  image: "",
  replicas: "1",
};

// Runs as it is: it names no file the user may not have (inputs are shown commented out).
const EXAMPLE_SPEC = `name: hello
command: ["python3", "-c", "print('hello from a GPU')"]
# inputs:                  # files from My files, by their key
#   - key: inputs/train.py
# outputs: [out/model.bin]  # files the job writes, to download after
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
      ...(f.isolation !== "any" ? { isolation: f.isolation } : {}),
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

// The form's fields, by the spec key their errors name. An error goes to the most specific
// one (resources.gpus, not resources), so it shows once and under its own field.
const FORM_FIELDS: Record<string, string> = {
  name: "Name",
  command: "Command",
  inputs: "Input files",
  outputs: "Output files",
  "resources.gpus": "GPUs",
  "resources.gpu_model": "GPU model",
  "resources.min_gpu_memory_gb": "GPU memory",
  "resources.isolation": "Isolation",
  resources: "Resources",
  max_price_per_gpu_hour: "Most you pay per GPU-hour",
  timeout: "Time limit",
  queue: "Queue",
  priority: "Priority",
  verification: "Verification",
  env: "Environment",
  image: "Container image",
};

// The form's inputs by the spec key they fill.
const SPEC_KEY: Partial<Record<keyof Form, string>> = {
  gpus: "resources.gpus",
  gpuModel: "resources.gpu_model",
  minMemoryGb: "resources.min_gpu_memory_gb",
  isolation: "resources.isolation",
  maxPrice: "max_price_per_gpu_hour",
  replicas: "verification",
};

function slotOf(field: string): string | null {
  let best: string | null = null;
  for (const key of Object.keys(FORM_FIELDS)) {
    const fits = field === key || field.startsWith(`${key}.`) || field.startsWith(`${key}[`);
    if (fits && (!best || key.length > best.length)) best = key;
  }
  return best;
}

/** The API's (pydantic's) wording, said as a person would. */
export function plainMessage(message: string): string {
  const rules: [RegExp, (m: RegExpMatchArray) => string][] = [
    [/^Input should be greater than or equal to (.+)$/, (m) => `must be at least ${m[1]}`],
    [/^Input should be less than or equal to (.+)$/, (m) => `must be at most ${m[1]}`],
    [/^Input should be greater than (.+)$/, (m) => `must be more than ${m[1]}`],
    [/^Input should be less than (.+)$/, (m) => `must be less than ${m[1]}`],
    [/^Input should be a valid integer.*$/, () => "must be a whole number"],
    [/^Input should be a valid number.*$/, () => "must be a number"],
    [/^Field required$/, () => "is required"],
    [/^String should have at least (\d+) characters?$/, (m) => `needs at least ${m[1]} character${m[1] === "1" ? "" : "s"}`],
    [/^String should have at most (\d+) characters$/, (m) => `may have at most ${m[1]} characters`],
    [/^List should have at least (\d+) items? after validation.*$/, (m) => `needs at least ${m[1]}`],
    [/^Extra inputs are not permitted$/, () => "is not a known field"],
    [/^Value error, (.+)$/, (m) => m[1]],
  ];
  for (const [re, say] of rules) {
    const m = message.match(re);
    if (m) return say(m);
  }
  return message;
}

/** "GPUs (resources.gpus): must be at least 1": the form's name for it, and the spec's. */
function saidOf(e: FieldError): string {
  const slot = slotOf(e.field);
  const label = slot && slot === e.field ? FORM_FIELDS[slot] : null;
  return `${label ? `${label} (${e.field})` : e.field}: ${plainMessage(e.message)}`;
}

function FieldErrors(props: { errors: FieldError[]; id?: string; bare?: boolean }): JSX.Element | null {
  if (!props.errors.length) return null;
  return (
    <ul class="field-errors" id={props.id}>
      {props.errors.map((e) => (
        <li>{props.bare && slotOf(e.field) === e.field ? plainMessage(e.message) : saidOf(e)}</li>
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
        {props.localError ? (
          <pre class="error mono" role="alert">
            {props.localError}
          </pre>
        ) : null}
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
                It can start now on {result.eligible.length} provider{result.eligible.length > 1 ? "s" : ""}. On the
                cheapest ({result.eligible[0].providerId}) a run costs at most{" "}
                <strong data-testid="quote">{credits(result.eligible[0].quoteMicro)}</strong> credits. Submitting holds{" "}
                <strong data-testid="held">{credits(result.heldMicro)}</strong> credits from your balance (your most per
                GPU-hour, for every GPU, for the whole time limit, for each run the check may need); what the job does
                not use comes back when it ends.
              </Notice>
            ) : (
              <Notice kind="warn">
                No provider can run it right now: see why below. It would wait in the queue; submitting holds{" "}
                <strong data-testid="held">{credits(result.heldMicro)}</strong> credits from your balance until it ends.
              </Notice>
            )}
            {result.eligible.length ? (
              <TableWrap>
              <table>
                <thead>
                  <tr>
                    <th>Provider</th>
                    <th>Uses GPU no.</th>
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
                      <td data-testid="starts">
                        {o.restingUntil
                          ? `only where no other fits, until ${o.restingUntil} (runs were lost with it)`
                          : o.expectedStart}
                      </td>
                    </tr>
                  ))}
                </tbody>
              </table>
              </TableWrap>
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
    ...invalid(SPEC_KEY[name] ?? name),
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

  // The tabs as a screen reader and a keyboard expect them: arrows, Home and End move
  // between them (and focus follows), Tab goes on into the panel.
  const tabKeys = (e: KeyboardEvent) => {
    const order: ("form" | "paste")[] = ["form", "paste"];
    const at = order.indexOf(mode);
    const to =
      e.key === "ArrowRight" ? order[(at + 1) % 2] : e.key === "ArrowLeft" ? order[(at + 1) % 2] : e.key === "Home" ? "form" : e.key === "End" ? "paste" : null;
    if (!to) return;
    e.preventDefault();
    setMode(to);
    setRefused([]);
    document.getElementById(`tab-${to}`)?.focus();
  };

  // Each refusal under its own field (once), the rest in the box by the button.
  const inForm = mode === "form";
  const fe = (key: string) =>
    inForm ? <FieldErrors id={`err-${key}`} bare errors={refused.filter((e) => slotOf(e.field) === key)} /> : null;
  const unplaced = inForm ? refused.filter((e) => slotOf(e.field) === null) : refused;
  const invalid = (key: string) =>
    inForm && refused.some((e) => slotOf(e.field) === key)
      ? { "aria-invalid": true as const, "aria-describedby": `err-${key}` }
      : {};
  const formRef = useRef<HTMLFormElement>(null);
  useEffect(() => {
    if (!refused.length) return;
    const first = formRef.current?.querySelector<HTMLElement>("[aria-invalid=true]");
    (first ?? document.querySelector<HTMLElement>("[data-testid=refused]"))?.focus();
  }, [refused]);

  return (
    <>
      <h1>New job</h1>
      <div class="tabs" role="tablist" aria-label="How to describe the job" onKeyDown={tabKeys}>
        <button
          type="button"
          role="tab"
          id="tab-form"
          aria-controls="job-panel"
          aria-selected={mode === "form"}
          tabIndex={mode === "form" ? 0 : -1}
          class={mode === "form" ? "tab on" : "tab"}
          onClick={() => {
            setMode("form");
            if (mode !== "form") setRefused([]);
          }}
        >
          Fill in a form
        </button>
        <button
          type="button"
          role="tab"
          id="tab-paste"
          aria-controls="job-panel"
          aria-selected={mode === "paste"}
          tabIndex={mode === "paste" ? 0 : -1}
          class={mode === "paste" ? "tab on" : "tab"}
          onClick={() => {
            setMode("paste");
            if (mode !== "paste") setRefused([]);
          }}
        >
          Paste a job spec (YAML/JSON)
        </button>
      </div>
      <div class="split">
        <div role="tabpanel" id="job-panel" aria-labelledby={mode === "form" ? "tab-form" : "tab-paste"}>
        <form class="card job-form" onSubmit={submit} data-testid="job-form" ref={formRef}>
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
                  <select name="gpuModel" {...invalid("resources.gpu_model")} value={form.gpuModel} onChange={(e) => set({ gpuModel: e.currentTarget.value })}>
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
                <label>
                  Isolation <span class="hint">full: only providers that give each job control groups of its own</span>
                  <select name="isolation" {...invalid("resources.isolation")} value={form.isolation} onChange={(e) => set({ isolation: e.currentTarget.value })}>
                    <option value="any">any</option>
                    <option value="full">full</option>
                  </select>
                  {fe("resources.isolation")}
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
                  <select name="queue" {...invalid("queue")} value={form.queue} onChange={(e) => set({ queue: e.currentTarget.value })}>
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
            <div class="error" role="alert" data-testid="refused" tabIndex={-1}>
              <strong>
                The network refused this job
                {unplaced.length < refused.length ? ": see the fields marked above" : ":"}
              </strong>
              <FieldErrors errors={unplaced} />
            </div>
          ) : null}
          <ErrorBox error={error} />
          <button class="primary big" type="submit" disabled={busy || (mode === "paste" && !!parsed.error)}>
            {busy ? "Submitting…" : "Submit job"}
          </button>
        </form>
        </div>
        <Explain spec={spec} localError={mode === "paste" ? parsed.error : null} />
      </div>
    </>
  );
}
