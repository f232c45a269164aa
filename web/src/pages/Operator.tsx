// A node operator's page: its queues (GPU classes, priorities, per-client cap, fair
// share) with the jobs waiting in order, the hired GPUs with their health, the providers.
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import { mutate } from "../api";
import { caps, refreshMe } from "../caps";
import { Badge, Card, Empty, ErrorBox, Loading, Stat, TableWrap } from "../components/ui";
import { ago, percent, when } from "../format";
import { useNow, useQuery } from "../hooks";
import { CONFIGURE_QUEUE, OPERATOR, QUEUE, REGISTER_NODE, type Node, type Provider, type Queue } from "../queries";
import { session } from "../session";
import { useStore } from "../store";

function Waiting(props: { name: string; pollMs: number }): JSX.Element {
  const now = useNow(5000);
  const { data, error } = useQuery(QUEUE, { name: props.name }, { pollMs: props.pollMs });
  if (error) return <ErrorBox error={error} />;
  if (!data) return <Loading what="waiting jobs" />;
  if (!data.queue.length) return <Empty>Nobody is waiting.</Empty>;
  return (
    <TableWrap>
    <table data-testid={`waiting-${props.name}`}>
      <thead>
        <tr>
          <th class="num">Position</th>
          <th>Job</th>
          <th class="num">GPUs</th>
          <th>Model</th>
          <th class="num">Priority</th>
          <th>Waiting since</th>
          <th>Expected start</th>
          <th>Waits for</th>
        </tr>
      </thead>
      <tbody>
        {data.queue.map((j) => (
          <tr key={j.jobId} data-job={j.jobId}>
            <td class="num">{j.position}</td>
            <td class="mono small" title={j.jobId}>
              {j.name || j.jobId.slice(0, 8)}
            </td>
            <td class="num">{j.gpus}</td>
            <td>{j.gpuModel ?? "any"}</td>
            <td class="num">{j.priority}</td>
            <td title={when(j.waitingSince)}>{ago(j.waitingSince, now)}</td>
            <td>{j.expectedStart ? when(j.expectedStart) : "not enough usable GPUs"}</td>
            <td class="small reasons" data-testid="waits-for">
              {j.waitingFor.length ? j.waitingFor.join("; ") : "—"}
            </td>
          </tr>
        ))}
      </tbody>
    </table>
    </TableWrap>
  );
}

function QueueForm(props: { node: string; queue?: Queue; onDone: () => void }): JSX.Element {
  const q = props.queue;
  const [name, setName] = useState(q?.name ?? "");
  const [models, setModels] = useState(q?.gpuModels.join(", ") ?? "");
  const [levels, setLevels] = useState(String(q?.priorityLevels ?? 1));
  const [cap, setCap] = useState(String(q?.maxGpusPerClient ?? 0));
  const [fair, setFair] = useState(q?.fairShare ?? true);
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await mutate(CONFIGURE_QUEUE, {
        node: props.node,
        name: name.trim(),
        models: models.split(",").map((m) => m.trim()).filter(Boolean),
        levels: Number(levels),
        cap: Number(cap),
        fair,
      });
      props.onDone();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="queue-form" onSubmit={submit}>
      <div class="row">
        <label>
          Queue name
          <input name="queue-name" value={name} disabled={!!q} required onInput={(e) => setName(e.currentTarget.value)} />
        </label>
        <label>
          GPU models <span class="hint">comma-separated; empty: any</span>
          <input name="models" value={models} onInput={(e) => setModels(e.currentTarget.value)} />
        </label>
        <label>
          Priority levels
          <input name="levels" inputMode="numeric" size={3} value={levels} onInput={(e) => setLevels(e.currentTarget.value)} />
        </label>
        <label>
          GPUs per client <span class="hint">0: no cap</span>
          <input name="cap" inputMode="numeric" size={3} value={cap} onInput={(e) => setCap(e.currentTarget.value)} />
        </label>
        <label class="check">
          <input type="checkbox" checked={fair} onChange={(e) => setFair(e.currentTarget.checked)} /> Fair share between clients
        </label>
        <button class="primary" type="submit" disabled={busy}>
          {busy ? "Saving…" : q ? "Save" : "Add queue"}
        </button>
      </div>
      <ErrorBox error={error} />
    </form>
  );
}

function NodeView(props: { node: Node; providers: Provider[]; refetch: () => void }): JSX.Element {
  const { node } = props;
  const now = useNow(2000);
  const [editing, setEditing] = useState<string | null>(null);
  const mine = props.providers.filter((p) => node.providerIds.includes(p.providerId));
  const gpus = mine.flatMap((p) => p.gpus.map((g) => ({ p, g })));
  const hired = gpus.filter(({ g }) => g.status === "busy").length;
  const unhealthy = gpus.filter(({ g }) => ["degraded", "offline"].includes(g.status)).length;
  return (
    <section class="node" data-node={node.nodeId}>
      <h2>
        Node {node.nodeId} <span class="muted small">{node.region} · run by {node.operator}</span>
      </h2>
      <Card>
        <div class="stats">
          <Stat label="Providers" value={mine.length} />
          <Stat label="GPUs hired now" testid={`hired-${node.nodeId}`} value={`${hired} of ${gpus.length}`} />
          <Stat label="GPUs unhealthy" value={unhealthy} />
          <Stat label="Jobs waiting" value={node.queues.reduce((n, q) => n + q.waiting, 0)} />
        </div>
      </Card>
      <Card title="Queues">
        <TableWrap>
        <table data-testid={`queues-${node.nodeId}`}>
          <thead>
            <tr>
              <th>Queue</th>
              <th>GPU classes</th>
              <th class="num">Priority levels</th>
              <th class="num">GPUs per client</th>
              <th>Order</th>
              <th class="num">Waiting</th>
              <th />
            </tr>
          </thead>
          <tbody>
            {node.queues.map((q) => (
              <tr key={q.name} data-queue={q.name}>
                <td>{q.name}</td>
                <td>{q.gpuModels.length ? q.gpuModels.join(", ") : "any GPU"}</td>
                <td class="num">{q.priorityLevels}</td>
                <td class="num">{q.maxGpusPerClient || "no cap"}</td>
                <td>{q.fairShare ? "fair share" : "first come"}</td>
                <td class="num" data-testid={`waiting-count-${node.nodeId}/${q.name}`}>
                  {q.waiting}
                </td>
                <td>
                  <button type="button" class="plain" onClick={() => setEditing(editing === q.name ? null : q.name)}>
                    {editing === q.name ? "Close" : "Change"}
                  </button>
                </td>
              </tr>
            ))}
          </tbody>
        </table>
        </TableWrap>
        {editing ? (
          <QueueForm
            key={editing}
            node={node.nodeId}
            queue={node.queues.find((q) => q.name === editing)}
            onDone={() => {
              setEditing(null);
              props.refetch();
            }}
          />
        ) : null}
        <details>
          <summary>Add a queue</summary>
          <QueueForm node={node.nodeId} onDone={props.refetch} />
        </details>
        {node.queues.map((q) => (
          <div key={q.name} class="waiting">
            <h3>
              Waiting in {node.nodeId}/{q.name}
            </h3>
            <Waiting name={`${node.nodeId}/${q.name}`} pollMs={3000} />
          </div>
        ))}
      </Card>
      <Card title="GPUs and their health">
        {gpus.length === 0 ? (
          <Empty>No provider has joined this node yet.</Empty>
        ) : (
          <TableWrap>
          <table data-testid={`node-gpus-${node.nodeId}`}>
            <thead>
              <tr>
                <th>Provider</th>
                <th>GPU</th>
                <th>Model</th>
                <th>Health</th>
                <th>Hired by job</th>
              </tr>
            </thead>
            <tbody>
              {gpus.map(({ p, g }) => (
                <tr key={`${p.providerId}-${g.index}`}>
                  <td>{p.providerId}</td>
                  <td>{g.index}</td>
                  <td>{g.model}</td>
                  <td>
                    <Badge status={g.status} title={g.reason} /> {g.reason ? <span class="small muted">{g.reason}</span> : null}
                  </td>
                  <td class="mono small">{g.busyJobId ? g.busyJobId.slice(0, 8) : "—"}</td>
                </tr>
              ))}
            </tbody>
          </table>
          </TableWrap>
        )}
      </Card>
      <Card title="Providers">
        {mine.length === 0 ? <Empty>None yet: a provider joins a node when its agent starts with <code>--node {node.nodeId}</code>.</Empty> : null}
        <TableWrap>
        <table data-testid={`providers-${node.nodeId}`} hidden={mine.length === 0}>
          <thead>
            <tr>
              <th>Provider</th>
              <th>Region</th>
              <th>Status</th>
              <th class="num">Reputation</th>
              <th class="num">Price / GPU-hour</th>
              <th>Last heartbeat</th>
            </tr>
          </thead>
          <tbody>
            {mine.map((p) => (
              <tr key={p.providerId} data-provider={p.providerId}>
                <td>{p.providerId}</td>
                <td>{p.region}</td>
                <td>
                  <Badge status={p.status} title={p.statusReason} />
                </td>
                <td class="num">{percent(p.reputation)}</td>
                <td class="num">{p.pricePerGpuHour}</td>
                <td>{ago(p.lastHeartbeatAt, now)}</td>
              </tr>
            ))}
          </tbody>
        </table>
        </TableWrap>
      </Card>
    </section>
  );
}

function RegisterNode(props: { operator: string; onDone: () => void }): JSX.Element {
  const [node, setNode] = useState("");
  const [region, setRegion] = useState("");
  const [error, setError] = useState<string | null>(null);
  const [busy, setBusy] = useState(false);
  const submit = async (e: Event) => {
    e.preventDefault();
    setBusy(true);
    setError(null);
    try {
      await mutate(REGISTER_NODE, { node: node.trim(), region: region.trim(), operator: props.operator });
      await refreshMe();
      setNode("");
      props.onDone();
    } catch (err) {
      setError(err instanceof Error ? err.message : String(err));
    } finally {
      setBusy(false);
    }
  };
  return (
    <form class="row" onSubmit={submit} data-testid="register-node">
      <label>
        Node name <span class="hint">lower-case letters, digits, . _ -</span>
        <input name="node-id" required value={node} onInput={(e) => setNode(e.currentTarget.value)} />
      </label>
      <label>
        Region
        <input name="region" required placeholder="eu-west" value={region} onInput={(e) => setRegion(e.currentTarget.value)} />
      </label>
      <button class="primary" type="submit" disabled={busy}>
        {busy ? "Registering…" : "Register node"}
      </button>
      <ErrorBox error={error} />
    </form>
  );
}

export function OperatorPage(): JSX.Element {
  const s = useStore(session);
  const c = useStore(caps);
  const { data, error, refetch } = useQuery(OPERATOR, {}, { pollMs: 3000 });
  const dev = s?.mode === "dev" || !c?.auth;
  // An admin sees every node, the network's own (`local`) among them; an operator theirs.
  const admin = !!s?.user.roles.includes("admin");
  const nodes = (data?.nodes ?? []).filter((n) => dev || admin || s?.user.nodeIds.includes(n.nodeId));
  return (
    <>
      <h1>{admin ? "Nodes" : "My node"}</h1>
      {admin ? (
        <p class="lead" data-testid="admin-sees-all">
          As an admin you see every node of the network, with its queues, the jobs waiting in them and its GPUs.
        </p>
      ) : null}
      <ErrorBox error={error} />
      {!data ? <Loading what="your nodes" /> : null}
      {data && nodes.length === 0 ? (
        <Card>
          <Empty>Your account runs no node yet: register one below.</Empty>
        </Card>
      ) : null}
      {nodes.map((n) => (
        <NodeView key={n.nodeId} node={n} providers={data?.providers ?? []} refetch={refetch} />
      ))}
      <Card title="Register a node">
        <p class="small muted">
          A node gathers providers and runs queues; it starts with a queue “default” that serves any GPU.
        </p>
        <RegisterNode operator={s?.user.email || s?.user.clientId || "operator"} onDone={refetch} />
      </Card>
    </>
  );
}
