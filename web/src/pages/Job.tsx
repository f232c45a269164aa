// One job, live: its progress (subscription jobEvents), log, events, outputs and cost.
import type { JSX } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { mutate } from "../api";
import { JobLog } from "../components/JobLog";
import { ActionButton, Badge, Card, ConfirmButton, Empty, ErrorBox, Loading, Notice, ProgressBar, Stat, TableWrap } from "../components/ui";
import { ago, bytes, credits, when } from "../format";
import { useNow, useQuery, useSubscription } from "../hooks";
import { CANCEL_JOB, JOB, JOB_EVENTS, type JobEvent } from "../queries";
import { Link } from "../router";
import { downloadObject } from "../storage";
import { useClientId } from "./Storage";

const STEPS: [string[], string][] = [
  [["JobSubmitted"], "Submitted"],
  [["FundsEscrowed"], "Cost held"],
  [["JobQueued"], "Waiting for a GPU"],
  [["GpusAllocated"], "GPU found"],
  [["InputsStaged"], "Files copied"],
  [["ExecutionStarted"], "Running"],
  [["ExecutionFinished"], "Run finished"],
  [["OutputsUploaded"], "Results saved"],
  [["JobVerified", "VerificationFailed"], "Results checked"],
  [["JobSettled"], "Paid"],
  [["JobSucceeded", "JobFailed"], "Done"],
];

/** A line about an event's data: money in credits, files counted, long texts left out. */
export function describe(data: Record<string, unknown>): string {
  const parts: string[] = [];
  for (const [k, v] of Object.entries(data)) {
    if (k === "log_tail" || v === null || v === "" || (Array.isArray(v) && v.length === 0)) continue;
    if (k === "at" && typeof v === "number") parts.push(`at ${new Date(v * 1000).toLocaleString()}`);
    else if (k.endsWith("_micro") && typeof v === "number") parts.push(`${k.replace(/_micro$/, "")} ${credits(v)}`);
    else if (Array.isArray(v)) parts.push(`${k} ${v.every((x) => typeof x !== "object") ? v.join(", ") : `${v.length} item${v.length === 1 ? "" : "s"}`}`);
    else if (typeof v === "object") parts.push(`${k} ${JSON.stringify(v)}`);
    else parts.push(`${k} ${String(v)}`);
  }
  return parts.join(" · ");
}

function Steps(props: { events: JobEvent[]; state: string; ended: boolean }): JSX.Element {
  const seen = new Set(props.events.map((e) => e.type));
  let reached = -1;
  STEPS.forEach(([types], i) => {
    if (types.some((t) => seen.has(t))) reached = i;
  });
  const ended = props.events.some((e) => e.ends);
  const bad = props.ended && props.state !== "SUCCEEDED";
  const fraction = ended ? 1 : (reached + 1) / STEPS.length;
  const current = ended ? props.state.toLowerCase() : (STEPS[reached + 1]?.[1] ?? "…");
  return (
    <div class={`steps ${bad ? "bad" : ""}`} data-testid="job-progress">
      <ProgressBar value={fraction} label={ended ? current : `next: ${current}`} />
      <ol>
        {STEPS.map(([, label], i) => (
          <li class={i <= reached ? "done" : i === reached + 1 && !ended ? "now" : ""}>{label}</li>
        ))}
      </ol>
    </div>
  );
}

export function JobPage(props: { id: string }): JSX.Element {
  const client = useClientId();
  const now = useNow(5000);
  const [events, setEvents] = useState<JobEvent[]>([]);
  const [ended, setEnded] = useState(false);
  const job = useQuery(JOB, { id: props.id }, { pollMs: ended ? undefined : 3000 });
  const refetchSoon = useRef<ReturnType<typeof setTimeout> | null>(null);

  useEffect(() => {
    setEvents([]);
    setEnded(false);
  }, [props.id]);

  const onEvent = useCallback(
    (data: { jobEvents: JobEvent }) => {
      const ev = data.jobEvents;
      setEvents((all) => (all.some((e) => e.seq === ev.seq) ? all : [...all, ev].sort((a, b) => a.seq - b.seq)));
      if (ev.ends) setEnded(true); // the API says which events end a job
      // The job's row (state, cost, outputs) follows its events; read it again shortly.
      if (refetchSoon.current) clearTimeout(refetchSoon.current);
      refetchSoon.current = setTimeout(job.refetch, 150);
    },
    [job.refetch],
  );
  const after = 0;
  const sub = useSubscription(JOB_EVENTS, { jobId: props.id, after }, onEvent, { pause: job.data?.job === null });

  const j = job.data?.job;
  useEffect(() => {
    if (j?.name) document.title = `${j.name} · Job ${j.id.slice(0, 8)} · GPGPU`;
  }, [j?.name, j?.id]);
  if (job.data && !j) {
    return (
      <Card>
        <div class="not-found" data-testid="job-not-found">
          <h1>Job not found</h1>
          <p>
            There is no job <code>{props.id}</code> among yours. The link may be mistyped or cut short, or the job
            belongs to another account: a job is shown to the client who submitted it and to the provider it runs on.
          </p>
          <div class="actions-row">
            <Link href="/client/jobs" class="button primary">
              See all my jobs
            </Link>
            <Link href="/client/jobs/new" class="button">
              Submit a new job
            </Link>
          </div>
        </div>
      </Card>
    );
  }
  if (!j) return job.error ? <ErrorBox error={job.error} /> : <Loading what="the job" />;

  const shown = events.length ? events : j.events;
  const logs = [...shown].reverse().find((e) => typeof e.data.log_tail === "string")?.data.log_tail as string | undefined;
  const terminal = j.ended;

  return (
    <>
      <div class="title-row">
        <h1>
          {j.name} <Badge status={j.state} />
        </h1>
        {!terminal ? (
          <ConfirmButton
            testid="cancel-job"
            question="Stop this job? It cannot be started again."
            yes="Yes, cancel it"
            no="No, let it run"
            onConfirm={() => mutate(CANCEL_JOB, { id: j.id }).then(job.refetch)}
          >
            Cancel job
          </ConfirmButton>
        ) : null}
      </div>
      <p class="muted small mono">job {j.id}</p>
      <ErrorBox error={sub.error} title="Live updates stopped:" />
      <ErrorBox error={job.error} />
      <Card>
        <Steps events={shown} state={j.state} ended={j.ended} />
        {j.reason ? <Notice kind={j.state === "SUCCEEDED" ? "ok" : terminal ? "warn" : "info"}>{j.reason}</Notice> : null}
        {j.state === "QUEUED" ? (
          <Notice>
            In the queue <strong>{j.queue}</strong>
            {j.queuePosition ? (
              <>
                {" "}
                at position <strong data-testid="queue-position">{j.queuePosition}</strong>
              </>
            ) : null}
            {j.expectedStart && new Date(j.expectedStart).getTime() > now + 5000 ? (
              <>; expected to start by {when(j.expectedStart)} (a cautious estimate)</>
            ) : null}
            .
            {j.waitingFor.length ? (
              <>
                {" "}
                It waits because:
                <ul class="waiting-for" data-testid="waiting-for">
                  {j.waitingFor.map((w) => (
                    <li>{w}</li>
                  ))}
                </ul>
              </>
            ) : null}
          </Notice>
        ) : null}
        {j.state === "VERIFYING" && j.waitingFor.length ? (
          <Notice>
            Its run has finished; it is not done yet because:
            <ul class="waiting-for" data-testid="waiting-for">
              {j.waitingFor.map((w) => (
                <li>{w}</li>
              ))}
            </ul>
          </Notice>
        ) : null}
        <div class="stats">
          <Stat label="State" value={<span data-testid="job-state">{j.state}</span>} />
          <Stat label="Cost" testid="job-cost" value={j.costMicro === null ? "not settled yet" : `${credits(j.costMicro)} credits`} />
          <Stat label="Most it can cost" value={`${credits(j.maxCostMicro)} credits`} hint="held while the job runs; the unused part comes back" />
          <Stat label="Provider" value={j.providerId ?? "—"} />
          <Stat label="Queue" value={`${j.queue} · priority ${j.priority}`} />
          <Stat label="Submitted" value={ago(j.submittedAt, now)} hint={when(j.submittedAt)} />
        </div>
      </Card>
      <Card title="Outputs">
        {j.outputs.length === 0 ? (
          <Empty>{terminal ? "This job left no outputs." : "Outputs appear here when the job has finished and they were checked."}</Empty>
        ) : (
          <TableWrap>
          <table data-testid="outputs">
            <thead>
              <tr>
                <th>File</th>
                <th class="num">Size</th>
                <th>Digest</th>
                <th />
              </tr>
            </thead>
            <tbody>
              {j.outputs.map((o) => (
                <tr>
                  <td class="mono">{o.path}</td>
                  <td class="num">{bytes(o.size)}</td>
                  <td class="mono small" title={o.digest}>
                    {o.digest.slice(0, 19)}…
                  </td>
                  <td>
                    {client ? (
                      <ActionButton testid={`download-${o.path}`} onClick={() => downloadObject(client, o.key)}>
                        Download
                      </ActionButton>
                    ) : null}
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
          </TableWrap>
        )}
      </Card>
      <Card title={<span id="log-heading">Output</span>}>
        <section aria-labelledby="log-heading">
          <JobLog jobId={j.id} ended={terminal} tail={logs} />
        </section>
      </Card>
      <Card title="Events">
        <TableWrap>
        <table data-testid="job-events">
          <thead>
            <tr>
              <th class="num">#</th>
              <th>When</th>
              <th>What</th>
              <th>Details</th>
            </tr>
          </thead>
          <tbody>
            {shown.map((e) => (
              <tr key={e.seq}>
                <td class="num">{e.seq}</td>
                <td title={when(e.at)}>{new Date(e.at).toLocaleTimeString()}</td>
                <td>{e.type}</td>
                <td class="small">{describe(e.data)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        </TableWrap>
      </Card>
      <p>
        <Link href="/client/jobs">← All my jobs</Link>
      </p>
    </>
  );
}
