// The market: every provider's GPUs on offer, their price, reputation and region, the
// cheapest first (what `gpgpu offers` shows, for people who do not use a terminal).
import type { JSX } from "preact";
import { useState } from "preact/hooks";
import { Badge, Card, Empty, ErrorBox, Loading, TableWrap } from "../components/ui";
import { ago, credits, percent, when } from "../format";
import { useNow, useQuery } from "../hooks";
import { PROVIDERS, type Provider } from "../queries";
import { Link } from "../router";
import { session } from "../session";
import { useStore } from "../store";

/** "2 × NVIDIA H100 80 GiB, 1 × NVIDIA L4 24 GiB": the machine's GPUs, alike ones counted. */
function kinds(p: Provider): string {
  const counts = new Map<string, number>();
  for (const g of p.gpus) {
    const k = `${g.model} ${Math.round(g.memoryMb / 1024)} GiB`;
    counts.set(k, (counts.get(k) ?? 0) + 1);
  }
  return [...counts].map(([k, n]) => `${n} × ${k}`).join(", ");
}

export function MarketPage(): JSX.Element {
  const now = useNow(5000);
  const s = useStore(session);
  const { data, error } = useQuery(PROVIDERS, {}, { pollMs: 5000 });
  const [model, setModel] = useState("");
  const [onlyFree, setOnlyFree] = useState(false);
  const all = data?.providers ?? [];
  const models = [...new Set(all.flatMap((p) => p.gpus.map((g) => g.model)))].sort();
  const free = (p: Provider) =>
    p.status !== "offline" && p.status !== "lost" ? p.gpus.filter((g) => g.status === "online" && (!model || g.model === model)).length : 0;
  const shown = all
    .filter((p) => !model || p.gpus.some((g) => g.model === model))
    .filter((p) => !onlyFree || free(p) > 0)
    .sort((a, b) => a.pricePerGpuHourMicro - b.pricePerGpuHourMicro || b.reputation - a.reputation || a.providerId.localeCompare(b.providerId));
  return (
    <>
      <h1>Market</h1>
      <p class="lead">
        The GPUs on offer now, the cheapest first. A job goes to the cheapest free GPUs that fit it, at no more than
        the price you set; ties go to the better reputation.
        {s?.role === "client" ? (
          <>
            {" "}
            <Link href="/client/jobs/new">Submit a job</Link> to see where yours could run.
          </>
        ) : null}
      </p>
      <ErrorBox error={error} />
      <Card>
        <div class="row">
          <label>
            GPU model
            <select name="market-model" value={model} onChange={(e) => setModel(e.currentTarget.value)}>
              <option value="">any</option>
              {models.map((m) => (
                <option value={m}>{m}</option>
              ))}
            </select>
          </label>
          <label class="check">
            <input type="checkbox" name="only-free" checked={onlyFree} onChange={(e) => setOnlyFree(e.currentTarget.checked)} />
            Only with a free GPU now
          </label>
        </div>
        {!data ? (
          <Loading what="the offers" />
        ) : shown.length === 0 ? (
          <Empty>No provider offers {model || "GPUs"} right now{onlyFree ? " with one free" : ""}.</Empty>
        ) : (
          <TableWrap>
            <table data-testid="offers">
              <thead>
                <tr>
                  <th>Provider</th>
                  <th>GPUs</th>
                  <th class="num">Free now</th>
                  <th class="num">Credits / GPU-hour</th>
                  <th class="num">Reputation</th>
                  <th>Region</th>
                  <th>Status</th>
                </tr>
              </thead>
              <tbody>
                {shown.map((p) => (
                  <tr key={p.providerId} data-offer={p.providerId}>
                    <td>{p.providerId}</td>
                    <td>{kinds(p)}</td>
                    <td class="num">
                      {free(p)} of {p.gpus.length}
                    </td>
                    <td class="num" data-testid={`offer-price-${p.providerId}`}>
                      {credits(p.pricePerGpuHourMicro)}
                    </td>
                    <td class="num">{percent(p.reputation)}</td>
                    <td>{p.region}</td>
                    <td>
                      <Badge status={p.status} title={p.statusReason || `last heard from ${when(p.lastHeartbeatAt)}`} />
                      <span class="small muted"> {ago(p.lastHeartbeatAt, now)}</span>
                    </td>
                  </tr>
                ))}
              </tbody>
            </table>
          </TableWrap>
        )}
      </Card>
    </>
  );
}
