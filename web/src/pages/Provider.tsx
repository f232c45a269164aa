// A provider's own page: each GPU's status with suspend/resume, the last heartbeat,
// telemetry charts, its price, its reputation and what it is made of, its earnings.
import type { JSX } from "preact";
import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";
import { mutate } from "../api";
import { caps, refreshMe } from "../caps";
import { Chart, type Series } from "../components/Chart";
import { ActionButton, Badge, Card, Empty, ErrorBox, Loading, Notice, Stat, TableWrap } from "../components/ui";
import { ago, credits, percent, when } from "../format";
import { useNow, useQuery, useSubscription } from "../hooks";
import { PROVIDER, PROVIDER_EVENTS, PROVIDERS, RESUME_GPU, SET_PRICE, SUSPEND_GPU, type ProviderEvent, type TelemetrySample } from "../queries";
import { ProviderStart } from "../components/ProviderStart";
import { Link } from "../router";
import { session } from "../session";
import { useStore } from "../store";
import { LedgerTable } from "./Account";
import { describe } from "./Job";

// [outcome, words, weight]: weight 0 counts as good, null not in the score by itself (an
// outvoted run counts as a failure only once 3 distinct clients, each having paid for 10
// credits of verified work for each outvoted run its jobs had caused before and one more,
// outvoted the provider within 30 days: domain/reputation.py; the score shown is the
// server's, this table a guide).
const OUTCOMES: [string, string, number | null][] = [
  ["success", "verified successes", 0],
  ["failure", "failed runs", 1],
  ["timeout", "timeouts", 2],
  ["lost", "lost (stopped answering)", 3],
  ["mismatch", "wrong results caught", 5],
  ["outvoted", "outvoted by other providers' runs", null],
];

function Reputation(props: { score: number; events: ProviderEvent[] }): JSX.Element {
  const counts: Record<string, number> = { success: 0, failure: 0, timeout: 0, lost: 0, mismatch: 0, outvoted: 0 };
  for (const e of props.events) {
    const outcome = e.type === "ReputationRecorded" ? String(e.data.outcome) : "";
    if (outcome in counts) counts[outcome]++;
  }
  const good = 1 + counts.success;
  const bad = 1 + OUTCOMES.reduce((sum, [k, , w]) => sum + (w ?? 0) * counts[k], 0);
  return (
    <div class="reputation" data-testid="reputation">
      <p>
        Reputation <strong class="big-number">{percent(props.score)}</strong>: clients with a minimum reputation
        only get your GPUs above it, and ties on price go to the higher one.
      </p>
      <TableWrap>
      <table>
        <thead>
          <tr>
            <th>Outcome</th>
            <th class="num">Count</th>
            <th class="num">Weighs</th>
          </tr>
        </thead>
        <tbody>
          {OUTCOMES.map(([k, words, w]) => (
            <tr>
              <td>{words}</td>
              <td class="num" data-outcome={k}>
                {counts[k]}
              </td>
              <td class="num">
                {w === null
                  ? "your next results are all checked; 1 bad only once 3 paying clients outvoted you in 30 days (once a client)"
                  : w === 0
                    ? "+1 good"
                    : `${w} bad`}
              </td>
            </tr>
          ))}
        </tbody>
      </table>
      </TableWrap>
      <p class="small muted">
        Score = good ÷ (good + bad), each side starting at 1 (a new provider is at 50 %): here {good} ÷ ({good} + {bad}) ={" "}
        {percent(good / (good + bad))} before recent outcomes are weighed more than old ones.
      </p>
    </div>
  );
}

function charts(samples: TelemetrySample[]): { times: number[]; util: Series[]; temp: Series[]; mem: Series[] } {
  const times = samples.map((s) => new Date(s.at).getTime() / 1000);
  const indexes = [...new Set(samples.flatMap((s) => s.gpus.map((g) => g.index)))].sort((a, b) => a - b);
  const series = (pick: (g: TelemetrySample["gpus"][number]) => number | null): Series[] =>
    indexes.map((i) => ({
      label: `GPU ${i}`,
      values: samples.map((s) => {
        const g = s.gpus.find((x) => x.index === i);
        return g ? pick(g) : null;
      }),
    }));
  return {
    times,
    util: series((g) => g.utilizationPct),
    temp: series((g) => g.temperatureC),
    mem: series((g) => g.memoryUsedMb),
  };
}

function PriceForm(props: { id: string; price: string; onDone: () => void }): JSX.Element {
  const [price, setPrice] = useState(props.price);
  const [error, setError] = useState<string | null>(null);
  const [saved, setSaved] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    setSaved(null);
    try {
      const { setPrice: p } = await mutate(SET_PRICE, { id: props.id, price: price.trim() });
      setSaved(`New jobs now pay ${p.pricePerGpuHour} credits per GPU-hour; running jobs keep their price.`);
      props.onDone();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="row price-form" onSubmit={submit}>
      <label>
        Price per GPU-hour (credits)
        <input name="price" inputMode="decimal" size={8} value={price} onInput={(e) => setPrice(e.currentTarget.value)} />
      </label>
      <button class="primary" type="submit" disabled={busy}>
        {busy ? "Saving…" : "Set price"}
      </button>
      <ErrorBox error={error} />
      {saved ? <span class="ok-text">{saved}</span> : null}
    </form>
  );
}

function ProviderCard(props: { id: string }): JSX.Element {
  const now = useNow(1000);
  const { data, error, refetch } = useQuery(PROVIDER, { id: props.id, samples: 60 }, { pollMs: 2000 });
  const [events, setEvents] = useState<ProviderEvent[]>([]);
  const soon = useRef<ReturnType<typeof setTimeout> | null>(null);
  useEffect(() => setEvents([]), [props.id]);
  const onEvent = useCallback(
    (d: { providerEvents: ProviderEvent }) => {
      const ev = d.providerEvents;
      setEvents((all) => (all.some((e) => e.seq === ev.seq) ? all : [...all, ev]));
      if (soon.current) clearTimeout(soon.current);
      soon.current = setTimeout(refetch, 150);
    },
    [refetch],
  );
  const sub = useSubscription(PROVIDER_EVENTS, { providerId: props.id, after: 0 }, onEvent);
  const telemetryKey = JSON.stringify(data?.provider?.telemetry ?? []);
  const plotted = useMemo(() => charts(JSON.parse(telemetryKey) as TelemetrySample[]), [telemetryKey]);

  const p = data?.provider;
  if (data && !p) return <ErrorBox error={`providerId: no provider '${props.id}'`} />;
  if (!p || !data) return error ? <ErrorBox error={error} /> : <Loading what={`provider ${props.id}`} />;
  const earn = data.providerEarnings;
  const busy = p.gpus.filter((g) => g.status === "busy").length;

  return (
    <section class="provider" data-provider={p.providerId}>
      <div class="title-row">
        <h2>
          {p.providerId} <Badge status={p.status} title={p.statusReason} />
        </h2>
        <span class="muted">
          {p.region} · runs {p.runtimes.join(", ")} · last heartbeat{" "}
          <span data-testid="heartbeat" title={when(p.lastHeartbeatAt)}>
            {ago(p.lastHeartbeatAt, now)}
          </span>
        </span>
      </div>
      <ErrorBox error={error} />
      <ErrorBox error={sub.error} title="Live updates stopped:" />
      {p.statusReason ? <Notice kind="warn">{p.statusReason}</Notice> : null}
      <Card>
        <div class="stats">
          <Stat label="GPUs working" value={`${busy} of ${p.gpus.length}`} />
          <Stat
            label="Earned for verified work"
            testid="earned-verified"
            value={`${credits(earn.verifiedMicro)} credits`}
            hint="paid for your runs of jobs whose results were checked and accepted"
          />
          <Stat
            label="Paid in all"
            testid="earned"
            value={`${credits(earn.earnedMicro)} credits`}
            hint="also the network's checks, and the time a job used before it was cancelled or failed"
          />
          <Stat label="Balance" testid="provider-balance" value={`${credits(earn.balanceMicro)} credits`} />
          <Stat label="Reputation" testid="reputation-score" value={percent(p.reputation)} />
          <Stat label="Price" value={`${p.pricePerGpuHour} credits / GPU-hour`} />
        </div>
        <PriceForm id={p.providerId} price={p.pricePerGpuHour} onDone={refetch} />
      </Card>
      <Card title="GPUs">
        <TableWrap>
        <table data-testid="gpus">
          <thead>
            <tr>
              <th>GPU</th>
              <th>Model</th>
              <th class="num">Memory</th>
              <th>Status</th>
              <th>Working on</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {p.gpus.map((g) => (
              <tr key={g.index} data-gpu={g.index}>
                <td>{g.index}</td>
                <td>{g.model}</td>
                <td class="num">{Math.round(g.memoryMb / 1024)} GiB</td>
                <td>
                  <Badge status={g.status} title={g.reason} />
                  {g.reason ? <span class="small muted"> {g.reason}</span> : null}
                </td>
                <td class="mono small">
                  {g.busyJobId ? (
                    <Link href={`/client/jobs/${g.busyJobId}`} title={`job ${g.busyJobId} (its page shows to the client who submitted it)`}>
                      job {g.busyJobId.slice(0, 8)}
                    </Link>
                  ) : (
                    "—"
                  )}
                </td>
                <td>
                  {g.status === "suspended" ? (
                    <ActionButton testid={`resume-${g.index}`} onClick={() => mutate(RESUME_GPU, { id: p.providerId, index: g.index }).then(refetch)}>
                      Resume
                    </ActionButton>
                  ) : (
                    <ActionButton
                      testid={`suspend-${g.index}`}
                      title="No new work goes to this GPU; a job already on it finishes"
                      onClick={() => mutate(SUSPEND_GPU, { id: p.providerId, index: g.index }).then(refetch)}
                    >
                      Suspend
                    </ActionButton>
                  )}
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        </TableWrap>
      </Card>
      <Card title="Telemetry (recent heartbeats)">
        <div class="charts">
          <Chart title="Utilisation" unit="%" max={100} times={plotted.times} series={plotted.util} testid="chart-util" />
          <Chart title="Temperature" unit="°C" times={plotted.times} series={plotted.temp} testid="chart-temp" />
          <Chart title="Memory used" unit="MiB" times={plotted.times} series={plotted.mem} testid="chart-mem" />
        </div>
      </Card>
      <div class="split">
        <Card title="Reputation">
          <Reputation score={p.reputation} events={events} />
        </Card>
        <Card title="Recent events">
          {events.length === 0 ? (
            <Empty>None yet.</Empty>
          ) : (
            <ul class="events">
              {events
                .slice(-12)
                .reverse()
                .map((e) => (
                  <li key={e.seq}>
                    <span class="muted small">{ago(e.at, now)}</span> <strong>{e.type}</strong> <span class="small">{describe(e.data)}</span>
                  </li>
                ))}
            </ul>
          )}
        </Card>
      </div>
      <Card title="Earnings">
        <p class="small muted">
          You are paid for GPU time at your price, less the network's 5 % fee: for verified work, for checks, and for the
          time a job used before its client cancelled it. Withdrawn so far:{" "}
          {credits(earn.withdrawnMicro)} credits.
        </p>
        <LedgerTable entries={earn.entries} />
      </Card>
    </section>
  );
}

export function ProviderPage(props: { only?: string }): JSX.Element {
  const s = useStore(session);
  const c = useStore(caps);
  const dev = s?.mode === "dev" || !c?.auth;
  const all = useQuery(PROVIDERS, {}, { pause: !dev, pollMs: 5000 });
  // With accounts, providers join an account when an agent registers with its API key: re-read it.
  useEffect(() => {
    if (dev) return;
    const timer = setInterval(() => void refreshMe().catch(() => undefined), 3000);
    return () => clearInterval(timer);
  }, [dev]);
  const ids = dev ? (all.data?.providers ?? []).map((p) => p.providerId) : (s?.user.providerIds ?? []);
  const shown = props.only ? ids.filter((id) => id === props.only) : ids;
  return (
    <>
      <h1>My GPUs</h1>
      <ErrorBox error={all.error} />
      {ids.length > 1 && !props.only ? (
        <p class="jump">
          Providers:{" "}
          {ids.map((id) => (
            <Link href={`/provider/${encodeURIComponent(id)}`}>{id}</Link>
          ))}
        </p>
      ) : null}
      {dev && !all.data ? <Loading what="providers" /> : null}
      {(!dev || all.data) && shown.length === 0 ? (
        <Card>
          <Empty>
            No GPUs of yours have joined yet. Make a key that may act as GPU provider on{" "}
            <Link href="/keys">API keys</Link> (the page then shows this with your key filled in), and run this on the
            machine with the GPUs:
          </Empty>
          <ProviderStart />
        </Card>
      ) : null}
      {shown.map((id) => (
        <ProviderCard key={id} id={id} />
      ))}
    </>
  );
}
